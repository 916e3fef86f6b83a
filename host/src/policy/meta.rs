//! What a component says about itself: the `pitboss-plugin` custom section
//! the guest SDK writes (crate name and version), plus its sha256.

use std::fmt;

use sha2::{Digest, Sha256};

const SECTION: &str = "pitboss-plugin";

/// Identity of a loaded policy component, used in every log line and
/// fault report about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginMeta {
    /// `name@version` from the SDK's custom section, if the plugin has one.
    pub declared: Option<String>,
    /// Hex sha256 of the component bytes.
    pub sha256: String,
}

impl PluginMeta {
    pub fn of(wasm: &[u8]) -> Self {
        PluginMeta { declared: declared_identity(wasm), sha256: hex(&Sha256::digest(wasm)) }
    }

    /// Short content id: the first 12 hex digits of the sha256.
    pub fn short_hash(&self) -> &str {
        &self.sha256[..12]
    }
}

impl fmt::Display for PluginMeta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.declared {
            Some(id) => write!(f, "{id} (sha256 {})", self.short_hash()),
            None => write!(f, "sha256 {}", self.short_hash()),
        }
    }
}

/// Finds the SDK's section anywhere in the component, including inside its
/// nested core modules, where the Rust linker leaves it.
fn declared_identity(wasm: &[u8]) -> Option<String> {
    wasmparser::Parser::new(0).parse_all(wasm).find_map(|payload| match payload {
        Ok(wasmparser::Payload::CustomSection(section)) if section.name() == SECTION => {
            std::str::from_utf8(section.data()).ok().map(str::to_owned)
        }
        _ => None,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
