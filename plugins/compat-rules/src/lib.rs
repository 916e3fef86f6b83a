//! `builtin:compat-rules`, pitboss's default compatibility rules: which
//! Python libraries are safe in which worker profile, from the
//! thread-safety matrix in [`matrix`], with versions compared as PEP 440
//! says ([`pep440`]).
//!
//! `recommend-profile` says `thread` only for a free-threaded build whose
//! GIL is really off at run time, with no installed library unsafe in
//! threads. The version number alone never decides: a 3.13 built with the
//! GIL runs threads one at a time.

mod matrix;
mod pep440;

use matrix::{Entry, Status};
use pep440::Version;
use pitboss_guest::{CompatRules, Finding, Level, Library, Profile, PythonEnv, Recommendation};

struct BuiltinCompat;

impl CompatRules for BuiltinCompat {
    fn check(env: &PythonEnv, profile: Profile, libraries: &[Library]) -> Vec<Finding> {
        libraries.iter().map(|library| check(env, profile, library)).collect()
    }

    fn recommend_profile(env: &PythonEnv, libraries: &[Library]) -> Recommendation {
        recommend(env, libraries)
    }
}

pitboss_guest::export_compat_rules!(BuiltinCompat);

/// The verdict on one library for a pool of `profile` running `env`.
pub fn check(env: &PythonEnv, profile: Profile, library: &Library) -> Finding {
    let Some(entry) = matrix::lookup(&pitboss_guest::normalize_name(&library.name)) else {
        return Finding::new(library, Level::Unknown, "not in the thread-safety matrix: nothing is known about it")
            .workaround("test it under load in a thread pool before relying on it, or use a process pool");
    };
    let Some(version) = Version::parse(&library.version) else {
        return Finding::new(
            library,
            Level::Unknown,
            format!("version `{}` is not a PEP 440 version; cannot compare it", library.version),
        );
    };
    match profile {
        Profile::Process => Finding::new(library, Level::Ok, "process workers run one call at a time"),
        Profile::Thread => in_threads(env, entry, library, &version),
    }
}

fn in_threads(env: &PythonEnv, entry: &Entry, library: &Library, version: &Version) -> Finding {
    let name = &library.name;
    if entry.status == Status::Unsafe {
        return Finding::new(library, Level::Unsafe, entry.notes).workaround(entry.workaround);
    }
    if let Some(min) = entry.min_version.filter(|min| version < &parsed(min)) {
        return Finding::new(
            library,
            Level::Unsafe,
            format!("{name} {} is older than {min}, the first version safe in threads", library.version),
        )
        .workaround(format!("upgrade: pip install '{name}>={min}'; or use a process pool"));
    }
    if let Some(message) = turns_gil_on(env, entry, library, version) {
        let upgrade = entry.free_threaded_since.map_or("a process pool runs it at full speed".to_owned(), |since| {
            format!("upgrade: pip install '{name}>={since}'")
        });
        return Finding::new(library, Level::Warning, message).workaround(upgrade);
    }
    match entry.status {
        Status::Caution => Finding::new(library, Level::Warning, entry.notes).workaround(entry.workaround),
        _ => Finding::new(library, Level::Ok, entry.notes),
    }
}

/// On a free-threaded interpreter, an extension without free-threading
/// support turns the GIL back on when imported.
fn turns_gil_on(env: &PythonEnv, entry: &Entry, library: &Library, version: &Version) -> Option<String> {
    if !env.free_threaded || entry.pure_python {
        return None;
    }
    match entry.free_threaded_since {
        Some(since) if version >= &parsed(since) => None,
        Some(since) => Some(format!(
            "{} {} predates free-threading support ({since}): importing it turns the GIL back on",
            library.name, library.version
        )),
        None => Some(format!("{} has no free-threading support: importing it turns the GIL back on", library.name)),
    }
}

/// Versions in the matrix are checked by its tests.
fn parsed(text: &str) -> Version {
    Version::parse(text).expect("the matrix holds valid versions")
}

/// `thread` only on a free-threaded build with the GIL off and no library
/// unsafe in threads; `process` otherwise, with every reason.
pub fn recommend(env: &PythonEnv, libraries: &[Library]) -> Recommendation {
    let mut blockers = Vec::new();
    if !env.free_threaded {
        blockers.push(format!(
            "{} {} is not a free-threaded build (Py_GIL_DISABLED is off): threads of one worker take turns on the GIL",
            env.implementation, env.version
        ));
    } else if env.gil_enabled {
        blockers.push(format!(
            "{} {} is a free-threaded build, but the GIL is on at run time (PYTHON_GIL=1, or an extension turned it back on)",
            env.implementation, env.version
        ));
    }
    let findings: Vec<Finding> = libraries.iter().map(|library| check(env, Profile::Thread, library)).collect();
    for (library, finding) in libraries.iter().zip(&findings) {
        if finding.level == Level::Unsafe {
            blockers
                .push(format!("{} {} is unsafe in thread workers: {}", library.name, library.version, finding.message));
        }
    }
    if !blockers.is_empty() {
        return Recommendation { profile: Profile::Process, reasons: blockers };
    }
    let mut reasons = vec![
        format!("{} {} is a free-threaded build with the GIL off", env.implementation, env.version),
        "no installed library is unsafe in thread workers".to_owned(),
    ];
    let unknown = findings.iter().filter(|f| f.level == Level::Unknown).count();
    if unknown > 0 {
        reasons.push(format!("{unknown} installed libraries are not in the matrix; test them under load"));
    }
    Recommendation { profile: Profile::Thread, reasons }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(free_threaded: bool, gil_enabled: bool) -> PythonEnv {
        PythonEnv {
            version: "3.13.0".into(),
            free_threaded,
            gil_enabled,
            implementation: "cpython".into(),
            platform: "linux-x86_64".into(),
        }
    }

    fn lib(name: &str, version: &str) -> Library {
        Library { name: name.into(), version: version.into() }
    }

    fn level(env: &PythonEnv, profile: Profile, name: &str, version: &str) -> Level {
        check(env, profile, &lib(name, version)).level
    }

    #[test]
    fn versions_below_the_safe_one_are_flagged_and_above_are_not() {
        let gil = env(false, true);
        assert_eq!(level(&gil, Profile::Thread, "xgboost", "1.3.3"), Level::Unsafe);
        assert_eq!(level(&gil, Profile::Thread, "xgboost", "1.4.0"), Level::Warning);
        assert_eq!(
            level(&gil, Profile::Thread, "xgboost", "1.10.0"),
            Level::Warning,
            "1.10 > 1.4, not a string compare"
        );
        assert_eq!(level(&gil, Profile::Thread, "numpy", "1.18.5"), Level::Unsafe);
        assert_eq!(level(&gil, Profile::Thread, "numpy", "2.1.0"), Level::Ok);
        assert_eq!(level(&gil, Profile::Thread, "xgboost", "1.4.0rc1"), Level::Unsafe, "a pre-release is older");
    }

    #[test]
    fn free_threaded_support_is_judged_by_version() {
        let ft = env(true, false);
        assert_eq!(level(&ft, Profile::Thread, "numpy", "2.0.2"), Level::Warning);
        assert_eq!(level(&ft, Profile::Thread, "numpy", "2.1.0"), Level::Ok);
        assert_eq!(level(&ft, Profile::Thread, "httpx", "0.27.0"), Level::Ok, "pure Python");
        assert!(check(&ft, Profile::Thread, &lib("grpcio", "1.60.0")).message.contains("turns the GIL back on"));
    }

    #[test]
    fn unknown_is_never_ok() {
        let gil = env(false, true);
        for profile in [Profile::Process, Profile::Thread] {
            assert_eq!(level(&gil, profile, "leftpad", "1.0"), Level::Unknown);
        }
        assert_eq!(level(&gil, Profile::Thread, "numpy", "not-a-version"), Level::Unknown);
    }

    #[test]
    fn process_pools_are_safe_for_known_libraries_and_names_are_normalised() {
        let gil = env(false, true);
        assert_eq!(level(&gil, Profile::Process, "matplotlib", "3.8.0"), Level::Ok);
        assert_eq!(level(&gil, Profile::Thread, "Matplotlib", "3.8.0"), Level::Unsafe);
        assert_eq!(level(&gil, Profile::Thread, "Scikit_Learn", "0.24"), Level::Unsafe);
        let finding = check(&gil, Profile::Thread, &lib("Scikit_Learn", "0.24"));
        assert_eq!(finding.library, "Scikit_Learn", "findings name the library as given");
    }

    #[test]
    fn thread_only_on_a_free_threaded_build_with_the_gil_off_and_nothing_unsafe() {
        let clean = [lib("numpy", "2.2.0"), lib("leftpad", "1.0")];
        let ft = recommend(&env(true, false), &clean);
        assert_eq!(ft.profile, Profile::Thread, "{:?}", ft.reasons);
        assert!(ft.reasons[2].starts_with("1 installed libraries are not in the matrix"));

        let gil = recommend(&env(false, true), &clean);
        assert_eq!(gil.profile, Profile::Process);
        assert!(gil.reasons[0].contains("not a free-threaded build"), "{:?}", gil.reasons);

        let gil_on = recommend(&env(true, true), &clean);
        assert_eq!(gil_on.profile, Profile::Process);
        assert!(gil_on.reasons[0].contains("the GIL is on at run time"));

        let unsafe_lib = recommend(&env(true, false), &[lib("matplotlib", "3.9.2")]);
        assert_eq!(unsafe_lib.profile, Profile::Process);
        assert!(unsafe_lib.reasons[0].starts_with("matplotlib 3.9.2 is unsafe in thread workers"));
    }
}
