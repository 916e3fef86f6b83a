//! Python interpreter detection: what a pool's interpreter is (version,
//! free-threaded build, whether the GIL is on at run time, implementation,
//! platform) and which distributions it has installed, for the compat
//! rules and `pitboss doctor`.
//!
//! The interpreter is run once with a small standard-library script
//! (`detect.py`); the answer is cached as JSON, keyed by the interpreter's
//! path, and reused while the interpreter and every folder on its
//! `sys.path` keep their modification times (installing a package changes
//! its site-packages folder).
//!
//! Owns: running the interpreter for facts, and that cache. Must not touch
//! workers, pools or plugins; the facts feed `policy`.
//!
//! ```no_run
//! # fn demo(pool: &pitboss::config::PoolConfig) -> Result<(), pitboss::python::DetectError> {
//! let env = pitboss::python::detect(&pool.python, Some(std::path::Path::new("/tmp/pitboss-cache")))?;
//! println!("{} {} (free-threaded: {}, GIL: {})", env.implementation, env.version, env.free_threaded, env.gil_enabled);
//! # Ok(()) }
//! ```
//!
//! # Caveats
//! The GIL state is the one the interpreter reports with the host's
//! environment; a pool's own `env` (say `PYTHON_GIL=1`) can change it for
//! its workers. `PYTHON_GIL` is part of the cache key.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::Interpreter;

const SCRIPT: &str = include_str!("detect.py");
/// Longest a detection run may take (a cold interpreter on a busy machine
/// with thousands of distributions takes a few seconds).
const TIMEOUT: Duration = Duration::from_secs(60);

/// What an interpreter said about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PythonEnv {
    /// `3.13.0`, `3.14.0rc1`.
    pub version: String,
    /// Built with `Py_GIL_DISABLED`.
    pub free_threaded: bool,
    /// Whether the GIL is on at run time.
    pub gil_enabled: bool,
    /// `cpython`, `pypy`...
    pub implementation: String,
    /// `linux-x86_64`...
    pub platform: String,
    /// Whether `distributions` is the full inventory: false before Python
    /// 3.8, which has no `importlib.metadata`.
    pub inventory: bool,
    /// Installed distributions, by name.
    pub distributions: Vec<Distribution>,
    /// The folders on `sys.path`: what the cache watches.
    paths: Vec<PathBuf>,
}

/// One installed distribution.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Distribution {
    pub name: String,
    pub version: String,
}

/// Why an interpreter could not be detected. Names the interpreter and how
/// it was chosen.
#[derive(Debug)]
pub struct DetectError {
    pub interpreter: Interpreter,
    pub problem: String,
}

impl fmt::Display for DetectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Python interpreter {} {}", self.interpreter, self.problem)
    }
}

impl std::error::Error for DetectError {}

/// Detects `interpreter`, using the cache in `cache_dir` when it is still
/// valid (and refreshing it otherwise). A cache that cannot be written is
/// not an error.
pub fn detect(interpreter: &Interpreter, cache_dir: Option<&Path>) -> Result<PythonEnv, DetectError> {
    let fail = |problem: String| DetectError { interpreter: interpreter.clone(), problem };
    let program = resolve(&interpreter.path).ok_or_else(|| {
        fail(format!(
            "does not exist{}; install it, or point the pool's `python` (or host.python) at a Python 3.9+ interpreter",
            if interpreter.path.components().count() == 1 { " on PATH" } else { "" }
        ))
    })?;
    let entry = cache_dir.map(|dir| dir.join(format!("{}.json", cache_key(&program))));
    if let Some(env) = entry.as_deref().and_then(|entry| cached(entry, &program)) {
        return Ok(env);
    }
    let env = run(&program).map_err(fail)?;
    if let Some(entry) = &entry {
        let stamp = Cached { stamps: stamps(&program, &env.paths), env: env.clone() };
        if let Err(err) = write_cache(entry, &stamp) {
            tracing::debug!(path = %entry.display(), error = %err, "cannot cache the interpreter's facts");
        }
    }
    Ok(env)
}

/// The interpreter file: `path` itself, or a bare name looked up on PATH.
fn resolve(path: &Path) -> Option<PathBuf> {
    if path.components().count() > 1 {
        return path.is_file().then(|| path.to_owned());
    }
    std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join(path)).find(|candidate| candidate.is_file())
}

fn run(program: &Path) -> Result<PythonEnv, String> {
    let mut child = Command::new(program)
        .args(["-c", SCRIPT])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| format!("cannot be run: {err}; is it an executable Python interpreter?"))?;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let reader = std::thread::spawn(move || {
        let (mut out, mut err) = (String::new(), String::new());
        let _ = stdout.read_to_string(&mut out);
        let _ = stderr.read_to_string(&mut err);
        (out, err)
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("did not answer within {}s; it hangs on start", TIMEOUT.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(err) => return Err(format!("cannot be waited for: {err}")),
        }
    };
    let (out, err) = reader.join().unwrap_or_default();
    let last_line = |text: &str| text.trim().lines().last().unwrap_or("").chars().take(300).collect::<String>();
    if !status.success() {
        return Err(format!("is not a working Python ({status}): {}", last_line(&err)));
    }
    serde_json::from_str(out.trim()).map_err(|_| {
        format!("is not a Python interpreter: it did not answer the detection script (output: {:?})", last_line(&out))
    })
}

/// A cache entry: the facts, and the modification times they depend on.
#[derive(Serialize, Deserialize)]
struct Cached {
    stamps: Vec<(PathBuf, u128)>,
    env: PythonEnv,
}

fn cache_key(program: &Path) -> String {
    let gil = std::env::var("PYTHON_GIL").unwrap_or_default();
    let digest = Sha256::digest(format!("{}\0{gil}", program.display()).as_bytes());
    digest.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// The modification time of the interpreter (through symlinks) and of each
/// folder on its `sys.path`.
fn stamps(program: &Path, paths: &[PathBuf]) -> Vec<(PathBuf, u128)> {
    std::iter::once(program)
        .chain(paths.iter().map(PathBuf::as_path))
        .map(|path| {
            let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
            let nanos = modified.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
            (path.to_owned(), nanos)
        })
        .collect()
}

fn cached(entry: &Path, program: &Path) -> Option<PythonEnv> {
    let cached: Cached = serde_json::from_slice(&std::fs::read(entry).ok()?).ok()?;
    let fresh = stamps(program, &cached.env.paths);
    (fresh == cached.stamps).then_some(cached.env)
}

fn write_cache(entry: &Path, cached: &Cached) -> std::io::Result<()> {
    if let Some(dir) = entry.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = entry.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, serde_json::to_vec(cached)?)?;
    std::fs::rename(&tmp, entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interpreter(path: &str) -> Interpreter {
        Interpreter { path: PathBuf::from(path), chosen_by: "a test".to_owned() }
    }

    #[test]
    fn a_missing_interpreter_is_named_with_how_it_was_chosen() {
        let err = detect(&interpreter("/nonexistent/python3"), None).unwrap_err().to_string();
        assert!(err.starts_with("Python interpreter /nonexistent/python3 (from a test) does not exist;"), "{err}");
        let err = detect(&interpreter("no-such-python-here"), None).unwrap_err().to_string();
        assert!(err.contains("does not exist on PATH"), "{err}");
    }

    #[test]
    fn a_program_that_is_not_python_is_a_clear_error() {
        let err = detect(&interpreter("/bin/echo"), None).unwrap_err().to_string();
        assert!(err.contains("is not a Python interpreter"), "{err}");
        let err = detect(&interpreter("/bin/false"), None).unwrap_err().to_string();
        assert!(err.contains("is not a working Python"), "{err}");
    }

    #[test]
    fn the_cache_is_used_until_a_watched_folder_changes() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let python = interpreter("python3");
        let first = detect(&python, Some(&cache)).unwrap();
        let entry = std::fs::read_dir(&cache).unwrap().next().unwrap().unwrap().path();
        let mut stored: Cached = serde_json::from_slice(&std::fs::read(&entry).unwrap()).unwrap();
        stored.env.version = "0.0.1-from-cache".to_owned();
        std::fs::write(&entry, serde_json::to_vec(&stored).unwrap()).unwrap();
        assert_eq!(detect(&python, Some(&cache)).unwrap().version, "0.0.1-from-cache");

        stored.stamps[0].1 += 1;
        std::fs::write(&entry, serde_json::to_vec(&stored).unwrap()).unwrap();
        assert_eq!(detect(&python, Some(&cache)).unwrap(), first, "a changed stamp runs the interpreter again");
    }
}
