//! Interpreter detection and the compat rules against real interpreters:
//! every CPython pyenv has on this machine, the project's virtualenv, and
//! the free-threaded 3.13t; plus compat findings, the recommended profile
//! and `compat_enforce = "deny"`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use pitboss::config::{Config, Interpreter, Profile};
use pitboss::host::preflight;
use pitboss::policy::{CompatRules, Level, PolicyEngine};
use pitboss::python::{detect, Distribution, PythonEnv};

fn engine() -> PolicyEngine {
    PolicyEngine::new(Some(support::root().join("target/test-policy-cache"))).expect("policy engine starts")
}

fn compat() -> CompatRules {
    CompatRules::load(&engine(), "builtin:compat-rules").expect("the built-in compat rules load")
}

fn interpreter(path: &Path) -> Interpreter {
    Interpreter { path: path.to_owned(), chosen_by: "the test".to_owned() }
}

fn detected(path: &Path) -> PythonEnv {
    detect(&interpreter(path), None).unwrap_or_else(|err| panic!("{err}"))
}

/// Every interpreter pyenv lists, as (version, python): `pyenv root`, else
/// ~/.pyenv. None found is a failure: this machine is meant to have them.
fn pyenv_pythons() -> Vec<(String, PathBuf)> {
    let root = Command::new("pyenv")
        .arg("root")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".pyenv")))
        .expect("neither `pyenv root` nor $HOME names a pyenv root");
    let mut found: Vec<(String, PathBuf)> = std::fs::read_dir(root.join("versions"))
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| (entry.file_name().to_string_lossy().into_owned(), entry.path().join("bin/python")))
                .filter(|(_, python)| python.exists())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    assert!(
        !found.is_empty(),
        "no pyenv interpreters under {}/versions: install them with `pyenv install 3.8 3.9 3.10 3.11 3.12 3.13`",
        root.display()
    );
    found
}

/// The free-threaded 3.13t: `PITBOSS_FT_PYTHON` (scripts/test exports the
/// interpreter itself), else the `.venv-ft` made from it.
fn free_threaded_python() -> PathBuf {
    match std::env::var_os("PITBOSS_FT_PYTHON").filter(|p| !p.is_empty()).map(PathBuf::from) {
        Some(path) => {
            assert!(path.exists(), "PITBOSS_FT_PYTHON={} does not exist", path.display());
            path
        }
        None => support::free_threaded_python(),
    }
}

#[test]
fn every_pyenv_cpython_is_detected_with_its_version_and_the_gil_on() {
    let rules = compat();
    for (version, python) in pyenv_pythons() {
        let env = detected(&python);
        assert_eq!(env.version, version, "{}", python.display());
        assert_eq!(env.implementation, "cpython", "{version}");
        assert!(!env.free_threaded && env.gil_enabled, "{version}: a GIL build with the GIL on");
        let (major, minor): (u32, u32) = {
            let mut parts = version.split('.').map(|part| part.parse().unwrap());
            (parts.next().unwrap(), parts.next().unwrap())
        };
        assert_eq!(env.inventory, (major, minor) >= (3, 8), "{version}: importlib.metadata");
        let advice = rules.recommend(&env, &env.distributions).unwrap();
        assert_eq!(advice.profile, Profile::Process, "{version}: {:?}", advice.reasons);
        assert!(advice.reasons[0].contains("is not a free-threaded build"), "{version}: {:?}", advice.reasons);
    }
}

#[test]
fn the_virtualenv_interpreter_is_detected_with_its_packages() {
    let env = detected(&support::python());
    assert!(!env.free_threaded && env.gil_enabled);
    let names: Vec<&str> = env.distributions.iter().map(|d| d.name.as_str()).collect();
    assert!(names.contains(&"pitboss-worker") || names.contains(&"pitboss_worker"), "{names:?}");
    assert!(names.contains(&"pytest"), "{names:?}");
}

#[test]
fn the_free_threaded_build_has_the_gil_off_and_is_advised_threads() {
    let env = detected(&free_threaded_python());
    assert!(env.version.starts_with("3.13"), "{}", env.version);
    assert!(env.free_threaded, "Py_GIL_DISABLED");
    assert!(!env.gil_enabled, "the GIL is off at run time");
    let rules = compat();
    let findings = rules.check(&env, Profile::Thread, &env.distributions).unwrap();
    assert!(findings.iter().all(|f| f.level != Level::Unsafe), "{findings:?}");
    let advice = rules.recommend(&env, &env.distributions).unwrap();
    assert_eq!(advice.profile, Profile::Thread, "{:?}", advice.reasons);

    let with_unsafe = [Distribution { name: "matplotlib".into(), version: "3.9.2".into() }];
    let advice = rules.recommend(&env, &with_unsafe).unwrap();
    assert_eq!(advice.profile, Profile::Process);
    assert!(advice.reasons[0].starts_with("matplotlib 3.9.2 is unsafe in thread workers"), "{:?}", advice.reasons);
}

#[test]
fn a_path_that_is_not_python_is_a_clear_error() {
    let err = detect(&interpreter(Path::new("/bin/echo")), None).unwrap_err().to_string();
    assert_eq!(
        err.split(" (output").next().unwrap(),
        "Python interpreter /bin/echo (from the test) is not a Python interpreter: it did not answer the detection script"
    );
    let not_executable = support::root().join("README.md");
    let err = detect(&interpreter(&not_executable), None).unwrap_err().to_string();
    assert!(err.contains("cannot be run") && err.contains("README.md (from the test)"), "{err}");
}

fn library(name: &str, version: &str) -> Distribution {
    Distribution { name: name.into(), version: version.into() }
}

#[test]
fn compat_findings_follow_version_bounds_and_unknown_is_not_ok() {
    let env = detected(&support::python());
    let libraries = [
        library("xgboost", "1.3.3"),
        library("xgboost", "1.4.0"),
        library("numpy", "1.18.0"),
        library("numpy", "1.26.4"),
        library("no-such-library", "1.0"),
    ];
    let levels: Vec<Level> =
        compat().check(&env, Profile::Thread, &libraries).unwrap().iter().map(|f| f.level).collect();
    assert_eq!(levels, [Level::Unsafe, Level::Warning, Level::Unsafe, Level::Ok, Level::Unknown]);
    let in_processes: Vec<Level> =
        compat().check(&env, Profile::Process, &libraries).unwrap().iter().map(|f| f.level).collect();
    assert_eq!(in_processes, [Level::Ok, Level::Ok, Level::Ok, Level::Ok, Level::Unknown]);
}

/// A virtualenv without pip whose site-packages claims matplotlib 3.8.0
/// (a dist-info folder is all importlib.metadata needs).
fn venv_with_matplotlib(dir: &Path) -> PathBuf {
    let venv = dir.join("venv");
    let status = Command::new("python3").args(["-m", "venv", "--without-pip"]).arg(&venv).status().unwrap();
    assert!(status.success(), "python3 -m venv failed");
    let lib = std::fs::read_dir(venv.join("lib")).unwrap().next().unwrap().unwrap().path();
    let dist_info = lib.join("site-packages/matplotlib-3.8.0.dist-info");
    std::fs::create_dir_all(&dist_info).unwrap();
    std::fs::write(dist_info.join("METADATA"), "Metadata-Version: 2.1\nName: matplotlib\nVersion: 3.8.0\n").unwrap();
    venv.join("bin/python")
}

fn thread_pool_config(dir: &Path, python: &Path, enforce: &str) -> Config {
    let path = dir.join("pitboss.toml");
    let text = format!(
        "[host]\ncompat_enforce = {enforce:?}\nrun_dir = {:?}\n\n[[pool]]\nname = \"t\"\nadapter = \"m\"\nsize = 1\n\
         profile = \"thread\"\nthreads_per_worker = 2\npython = {python:?}\n",
        dir.join("run")
    );
    std::fs::write(&path, text).unwrap();
    Config::load(&path).unwrap()
}

#[tokio::test]
async fn deny_keeps_a_thread_pool_with_an_unsafe_library_from_starting() {
    let dir = tempfile::tempdir().unwrap();
    let python = venv_with_matplotlib(dir.path());
    let engine = engine();

    preflight(&engine, &thread_pool_config(dir.path(), &python, "warn")).expect("warn only logs");

    let denied = thread_pool_config(dir.path(), &python, "deny");
    let err = format!("{:#}", preflight(&engine, &denied).unwrap_err());
    assert!(err.contains("pool `t`: matplotlib 3.8.0: pyplot keeps global figure state"), "{err}");
    let err = match pitboss::Host::start(denied).await {
        Ok(_) => panic!("the thread pool must not start"),
        Err(err) => format!("{err:#}"),
    };
    assert!(
        err.starts_with("host.compat_enforce = \"deny\": thread pools use libraries that are unsafe in threads"),
        "{err}"
    );
}
