//! Static checks of a policy component before anything of it runs: the
//! contract version it was built against, the imports it asks for, and the
//! memory it needs at instantiation. Each refusal names the bad value and
//! what to do about it.
//!
//! Must not compile or instantiate anything: `component` does that, and
//! only after these checks pass.

use anyhow::{bail, Result};
use wasmparser::{Parser, Payload};

use crate::config::PolicyLimits;

/// The contract this host speaks, as a package name and version.
pub const CONTRACT_PACKAGE: &str = "pitboss:policy";
pub const CONTRACT_VERSION: &str = "0.1.0";

/// Interfaces the sandbox provides, by prefix. WASI's CLI, I/O, clocks,
/// random and (empty) filesystem worlds come with every Rust component;
/// sockets and HTTP are refused: a policy gets no network.
const PROVIDED_IMPORTS: [&str; 5] = ["wasi:cli/", "wasi:io/", "wasi:clocks/", "wasi:random/", "wasi:filesystem/"];

/// The largest component file a host accepts (built-in-sized plugins are
/// 100–300 KiB; a policy 64 times that is a mistake, not a policy).
pub const MAX_COMPONENT_BYTES: usize = 16 << 20;

/// Checks the component's size, the contract version of its exports and
/// imports, and that it imports only what the sandbox provides.
pub fn check_component(wasm: &[u8]) -> Result<()> {
    if wasm.len() > MAX_COMPONENT_BYTES {
        bail!(
            "the component is {} bytes, over the limit of {MAX_COMPONENT_BYTES} bytes; build it with `--profile plugin` (opt-level s, stripped)",
            wasm.len()
        );
    }
    let (imports, exports) = top_level_names(wasm);
    for name in exports.iter().chain(&imports) {
        let Some(version) = contract_version(name) else { continue };
        if version != CONTRACT_VERSION {
            bail!(
                "the component was built against {CONTRACT_PACKAGE}@{version} (it uses `{name}`); this host supports \
                 {CONTRACT_PACKAGE}@{CONTRACT_VERSION}: rebuild it with the pitboss-guest of this host"
            );
        }
    }
    for name in &imports {
        let provided = PROVIDED_IMPORTS.iter().any(|prefix| name.starts_with(prefix))
            || contract_version(name).is_some_and(|_| name.starts_with("pitboss:policy/types@"));
        if provided {
            continue;
        }
        if name.starts_with("wasi:sockets/") || name.starts_with("wasi:http/") {
            bail!("the component imports `{name}`: a policy gets no network; remove the code that opens connections");
        }
        bail!(
            "the component imports `{name}`, which the sandbox does not provide; a policy may import only WASI 0.2 \
             (cli, io, clocks, random, filesystem) and {CONTRACT_PACKAGE}/types@{CONTRACT_VERSION}"
        );
    }
    Ok(())
}

/// Checks what a compiled component needs at instantiation against its
/// limits: a memory that starts larger than the cap could never run.
pub fn check_resources(component: &wasmtime::component::Component, limits: &PolicyLimits) -> Result<()> {
    let Some(needed) = component.resources_required() else { return Ok(()) };
    let initial_bytes = needed.max_initial_memory_size.unwrap_or(0).saturating_mul(64 << 10);
    if initial_bytes > limits.max_memory_bytes as u64 {
        bail!(
            "the component starts with a {initial_bytes}-byte memory, over its max_memory of {} bytes; raise \
             router_limits.max_memory or shrink the plugin's initial memory",
            limits.max_memory_bytes
        );
    }
    Ok(())
}

/// `Some("0.2.0")` for `pitboss:policy/routing@0.2.0`; `None` for names of
/// other packages.
fn contract_version(name: &str) -> Option<&str> {
    let rest = name.strip_prefix(CONTRACT_PACKAGE)?.strip_prefix('/')?;
    Some(rest.split_once('@').map_or("", |(_, version)| version))
}

/// The import and export names of the outer component (not of the modules
/// and components nested in it).
fn top_level_names(wasm: &[u8]) -> (Vec<String>, Vec<String>) {
    let (mut imports, mut exports) = (Vec::new(), Vec::new());
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(wasm) {
        match payload {
            Ok(Payload::Version { .. }) => depth += 1,
            Ok(Payload::End(_)) => depth = depth.saturating_sub(1),
            Ok(Payload::ComponentImportSection(section)) if depth == 1 => {
                imports.extend(section.into_iter().flatten().map(|import| import.name.name.to_owned()));
            }
            Ok(Payload::ComponentExportSection(section)) if depth == 1 => {
                exports.extend(section.into_iter().flatten().map(|export| export.name.name.to_owned()));
            }
            Ok(_) => {}
            // Not a valid binary: compiling it says so with wasmtime's words.
            Err(_) => break,
        }
    }
    (imports, exports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_versions_are_read_from_interface_names() {
        assert_eq!(contract_version("pitboss:policy/routing@0.2.0"), Some("0.2.0"));
        assert_eq!(contract_version("pitboss:policy/types@0.1.0"), Some("0.1.0"));
        assert_eq!(contract_version("pitboss:policy/routing"), Some(""));
        assert_eq!(contract_version("wasi:io/streams@0.2.6"), None);
        assert_eq!(contract_version("pitboss:policyx/routing@0.2.0"), None);
    }

    #[test]
    fn an_oversized_component_is_refused_before_it_is_read() {
        let error = check_component(&vec![0; MAX_COMPONENT_BYTES + 1]).unwrap_err().to_string();
        assert!(error.contains("over the limit"), "{error}");
    }
}
