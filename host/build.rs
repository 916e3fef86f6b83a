//! Compiles the gRPC API definitions, and builds the built-in policy plugins (`plugins/*`) for wasm32-wasip2 and
//! hands them to the host, which embeds them (`builtin:NAME`). A nested
//! cargo with its own target directory, so no manual step is ever needed.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const PLUGINS: &[&str] = &[
    "least-loaded",
    "round-robin",
    "session-affinity",
    "least-latency",
    "weighted-tools",
    "pool-rules",
    "compat-rules",
];
const TARGET: &str = "wasm32-wasip2";
const PROFILE: &str = "plugin";

fn main() {
    build_plugins();
    compile_protos();
}

/// The host's gRPC API, with the protoc that ships in protoc-bin-vendored.
fn compile_protos() {
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("protoc-bin-vendored has a protoc for this platform");
    // SAFETY: build scripts are single-threaded.
    #[allow(unsafe_code)]
    unsafe {
        env::set_var("PROTOC", protoc)
    };
    println!("cargo:rerun-if-changed=proto/pitboss/v1/pitboss.proto");
    tonic_prost_build::configure()
        // Payloads as `Bytes`: the host hands a caller's payload to the
        // worker and the worker's answer to the caller without copying it.
        .bytes(".pitboss.v1.ExecuteRequest.payload")
        .bytes(".pitboss.v1.ExecuteResponse.payload")
        .bytes(".pitboss.v1.StreamChunk.payload")
        .compile_protos(&["proto/pitboss/v1/pitboss.proto"], &["proto"])
        .expect("compiling the gRPC API definitions");
}

fn build_plugins() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest_dir.parent().unwrap();
    for watched in ["plugins", "guest-sdk", "wit", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", workspace.join(watched).display());
    }

    let target_dir = workspace.join("target").join("plugins");
    let mut cargo = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo
        .current_dir(workspace)
        .args(["build", "--target", TARGET, "--profile", PROFILE, "--target-dir"])
        .arg(&target_dir);
    for plugin in PLUGINS {
        cargo.args(["-p", &format!("pitboss-plugin-{plugin}")]);
    }
    // The outer build's flags and wrappers are for the host target.
    for var in
        ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "RUSTC_WRAPPER", "RUSTC_WORKSPACE_WRAPPER", "CARGO_BUILD_TARGET"]
    {
        cargo.env_remove(var);
    }
    let status = cargo.status().expect("cannot run cargo to build the built-in plugins");
    if !status.success() {
        panic!(
            "building the built-in policy plugins for {TARGET} failed (see above). \
             If the target is missing, run: rustup target add {TARGET}"
        );
    }

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    let built = target_dir.join(TARGET).join(PROFILE);
    for plugin in PLUGINS {
        let file = format!("pitboss_plugin_{}.wasm", plugin.replace('-', "_"));
        copy(&built.join(&file), &out_dir.join(&file));
    }
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap_or_else(|err| panic!("cannot copy {} to {}: {err}", from.display(), to.display()));
}
