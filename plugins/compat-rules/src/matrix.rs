//! The thread-safety matrix: what is known about each library in thread
//! workers, as data. A site that knows better copies this plugin and edits
//! the table; nothing else has to change.

/// How a library behaves when several threads of one worker call it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Safe, as long as the minimum version is met.
    Safe,
    /// Safe with a caveat (objects that must not be shared, global state
    /// that must not be touched): a warning.
    Caution,
    /// Breaks in thread workers: crashes or wrong results.
    Unsafe,
}

/// One library's row.
pub struct Entry {
    /// Normalised distribution names (PEP 503) this row covers; the first
    /// is the one shown.
    pub names: &'static [&'static str],
    pub status: Status,
    /// Below this version the library is unsafe in threads.
    pub min_version: Option<&'static str>,
    /// The first version that supports free-threaded CPython (does not turn
    /// the GIL back on when imported). Irrelevant for `pure_python`.
    pub free_threaded_since: Option<&'static str>,
    /// Pure Python (or the standard library): never turns the GIL back on.
    pub pure_python: bool,
    pub notes: &'static str,
    pub workaround: &'static str,
}

const fn entry(names: &'static [&'static str], status: Status, notes: &'static str, workaround: &'static str) -> Entry {
    Entry { names, status, min_version: None, free_threaded_since: None, pure_python: false, notes, workaround }
}

impl Entry {
    const fn min(self, version: &'static str) -> Entry {
        Entry { min_version: Some(version), ..self }
    }

    const fn free_threaded(self, version: &'static str) -> Entry {
        Entry { free_threaded_since: Some(version), ..self }
    }

    const fn pure(self) -> Entry {
        Entry { pure_python: true, ..self }
    }
}

use Status::{Caution, Safe, Unsafe};

/// The matrix, alphabetical.
pub static MATRIX: &[Entry] = &[
    entry(
        &["grpcio"],
        Caution,
        "channels and stubs are thread-safe, but grpcio turns the GIL back on in a free-threaded interpreter",
        "call gRPC services from a process pool, or accept that the GIL is on",
    )
    .min("1.32.0"),
    entry(&["httpx"], Safe, "a Client may be shared between threads", "").pure(),
    entry(
        &["jax", "jaxlib"],
        Caution,
        "jit-compiled functions are thread-safe; tracing the same function from several threads at once recompiles it",
        "warm up (trace) functions once before serving",
    )
    .free_threaded("0.5.0"),
    entry(
        &["lightgbm"],
        Caution,
        "Booster.predict is safe from several threads; training is not",
        "train outside the worker, or in a process pool",
    )
    .min("4.0.0"),
    entry(
        &["matplotlib"],
        Unsafe,
        "pyplot keeps global figure state that threads corrupt",
        "use the object-oriented API (matplotlib.figure.Figure with the Agg backend), or a process pool",
    )
    .free_threaded("3.9.0"),
    entry(
        &["numpy"],
        Safe,
        "releases the GIL in most operations; arrays shared between threads must not be written concurrently",
        "",
    )
    .min("1.19.0")
    .free_threaded("2.1.0"),
    entry(
        &["opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless"],
        Safe,
        "releases the GIL in most functions; cv2.setNumThreads(1) keeps its own threads from multiplying",
        "",
    ),
    entry(&["orjson"], Safe, "stateless", "").free_threaded("3.11.0"),
    entry(
        &["pandas"],
        Caution,
        "DataFrames are not safe to modify from several threads; reading is",
        "give each call its own DataFrame (copy before modifying)",
    )
    .min("1.0.0")
    .free_threaded("2.2.3"),
    entry(
        &["pillow"],
        Safe,
        "releases the GIL in decoding and most operations; an Image must not be shared while modified",
        "",
    )
    .free_threaded("11.0.0"),
    entry(
        &["plotly"],
        Caution,
        "figures are plain Python objects; one figure must not be built from several threads",
        "build one figure per call",
    )
    .pure(),
    entry(
        &["polars"],
        Safe,
        "runs queries on its own thread pool; set POLARS_MAX_THREADS to keep thread pools from multiplying",
        "",
    ),
    entry(
        &["protobuf"],
        Safe,
        "messages are safe to read concurrently; one message must not be modified from several threads",
        "",
    )
    .min("4.21.0"),
    entry(
        &["psycopg2", "psycopg2-binary"],
        Caution,
        "connections may be shared between threads, cursors may not",
        "use a connection pool (psycopg2.pool.ThreadedConnectionPool) and one cursor per call",
    )
    .min("2.8.0"),
    entry(&["pyarrow"], Safe, "releases the GIL in compute and IO", "").free_threaded("18.0.0"),
    entry(&["pydantic", "pydantic-core"], Safe, "models and validators are safe to use from several threads", "")
        .free_threaded("2.11.0"),
    entry(
        &["requests"],
        Caution,
        "a Session is not guaranteed thread-safe",
        "use one Session per thread, or httpx.Client",
    )
    .pure(),
    entry(
        &["scikit-learn"],
        Caution,
        "fitted estimators predict safely from several threads; fitting one estimator concurrently is unsafe",
        "fit outside the worker, and set n_jobs=1",
    )
    .min("1.0.0")
    .free_threaded("1.6.0"),
    entry(
        &["scipy"],
        Caution,
        "some Fortran-backed routines (ARPACK, parts of optimize and integrate) are not re-entrant",
        "guard those routines with a lock, or use a process pool",
    )
    .min("1.5.0")
    .free_threaded("1.15.0"),
    entry(
        &["spacy"],
        Caution,
        "a Language object is not guaranteed safe to call from several threads",
        "load one pipeline per thread, or use a process pool",
    )
    .min("3.0.0"),
    entry(
        &["sqlite3"],
        Caution,
        "a connection must not be shared between threads (check_same_thread)",
        "open one connection per call or per thread",
    )
    .pure(),
    entry(
        &["tensorflow", "tensorflow-cpu", "tensorflow-gpu"],
        Caution,
        "models may be called from several threads, but TensorFlow runs its own inter/intra-op thread pools",
        "set tf.config.threading.set_inter_op_parallelism_threads(1) and intra_op to 1, or use a process pool",
    )
    .min("2.0.0"),
    entry(
        &["tokenizers"],
        Caution,
        "a tokenizer shared between threads can fail with `Already borrowed`",
        "give each thread its own tokenizer, and set TOKENIZERS_PARALLELISM=false",
    )
    .min("0.13.0"),
    entry(
        &["torch"],
        Caution,
        "inference is safe from several threads; torch's intra-op threads multiply with the pool's",
        "call torch.set_num_threads(1) in the adapter",
    )
    .min("1.9.0")
    .free_threaded("2.6.0"),
    entry(
        &["transformers"],
        Caution,
        "pipelines keep per-call state and are not safe to share between threads",
        "create one pipeline per thread",
    )
    .min("4.0.0")
    .pure(),
    entry(&["xgboost"], Caution, "prediction is thread-safe from 1.4.0; training is not", "train outside the worker")
        .min("1.4.0"),
];

/// The row for a normalised distribution name.
pub fn lookup(normalized: &str) -> Option<&'static Entry> {
    MATRIX.iter().find(|entry| entry.names.contains(&normalized))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pep440::Version;

    #[test]
    fn every_row_is_well_formed() {
        for entry in MATRIX {
            let name = entry.names[0];
            assert!(entry.names.iter().all(|n| *n == pitboss_guest::normalize_name(n)), "{name}: names are normalised");
            for version in entry.min_version.iter().chain(&entry.free_threaded_since) {
                assert!(Version::parse(version).is_some(), "{name}: {version}");
            }
            assert!(!entry.notes.is_empty(), "{name}: notes");
            assert!(entry.status == Safe || !entry.workaround.is_empty(), "{name}: a caveat needs a workaround");
        }
        let names: Vec<&str> = MATRIX.iter().map(|e| e.names[0]).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted, "alphabetical");
    }

    #[test]
    fn the_libraries_the_issue_names_are_covered() {
        for name in [
            "numpy",
            "scipy",
            "torch",
            "tensorflow",
            "jax",
            "pandas",
            "polars",
            "pyarrow",
            "matplotlib",
            "plotly",
            "sqlite3",
            "psycopg2",
            "requests",
            "httpx",
            "scikit-learn",
            "xgboost",
            "lightgbm",
            "transformers",
            "tokenizers",
            "spacy",
            "pillow",
            "opencv-python",
            "grpcio",
            "protobuf",
            "orjson",
            "pydantic",
        ] {
            assert!(lookup(name).is_some(), "{name}");
        }
    }
}
