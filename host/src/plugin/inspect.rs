//! Reads what a component says about itself before anything is compiled: that it is a
//! component at all, the contract version the SDK stamped into it, its manifest and its
//! fixtures (custom sections `cashback:api-version`, `cashback:manifest`,
//! `cashback:fixtures`, which the SDK's export macros embed).

use wasmparser::{Parser, Payload};

/// Custom sections cashbackd reads.
#[derive(Debug, Default, Clone)]
pub struct Sections {
    /// `cashback:api-version`, e.g. "0.1.0".
    pub api_version: Option<String>,
    /// `cashback:manifest`, TOML.
    pub manifest: Option<String>,
    /// `cashback:fixtures`, JSON.
    pub fixtures: Option<String>,
}

/// Why bytes are not a plugin component.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// A core wasm module, not a component.
    #[error(
        "this is a core WebAssembly module, not a component: build it for wasm32-wasip2, or with wasm-component-ld (see scripts/build-plugins.sh)"
    )]
    CoreModule,
    /// Not wasm.
    #[error("not a WebAssembly component: {0}")]
    Invalid(String),
    /// A cashback section is not UTF-8 or appears twice.
    #[error("custom section `{0}` is malformed (not UTF-8, or present twice)")]
    BadSection(String),
}

/// Reads the custom sections of a component (those of its nested modules included:
/// the SDK's sections end up in the core module that the component wraps).
pub fn sections(bytes: &[u8]) -> Result<Sections, InspectError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(InspectError::Invalid("missing the \\0asm header".into()));
    }
    if bytes[4..8] == [1, 0, 0, 0] {
        return Err(InspectError::CoreModule);
    }
    let mut out = Sections::default();
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| InspectError::Invalid(e.to_string()))?;
        if let Payload::CustomSection(section) = payload {
            let slot = match section.name() {
                "cashback:api-version" => &mut out.api_version,
                "cashback:manifest" => &mut out.manifest,
                "cashback:fixtures" => &mut out.fixtures,
                _ => continue,
            };
            let text = std::str::from_utf8(section.data())
                .map_err(|_| InspectError::BadSection(section.name().to_string()))?;
            if slot.replace(text.to_string()).is_some() {
                return Err(InspectError::BadSection(section.name().to_string()));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_core_module_is_refused_with_a_hint() {
        let err = sections(b"\0asm\x01\0\0\0").expect_err("core");
        assert!(err.to_string().contains("not a component"));
        assert!(matches!(sections(b"hello world").expect_err("junk"), InspectError::Invalid(_)));
    }
}
