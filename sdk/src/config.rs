//! The plugin's configuration for the merchant or network it runs for.
//!
//! The host checks the configuration against the schema in the plugin's manifest before
//! a call, and never passes fields marked secret: those are credentials the host adds to
//! outgoing requests itself.

use crate::types::PluginError;
use serde::de::DeserializeOwned;

/// The configuration as JSON text.
pub fn raw() -> String {
    #[cfg(target_arch = "wasm32")]
    {
        crate::bindings::cashback::plugin::config::get()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        crate::testing::current_config()
    }
}

/// The configuration parsed into `T`; a parse failure is a [`PluginError::Config`] that
/// names the offending field, also inside nested tables and lists
/// (`invalid configuration: tiers[1].bps: invalid type: string "5", expected u32 ...`).
pub fn get<T: DeserializeOwned>() -> Result<T, PluginError> {
    parse(&raw())
}

/// Parses configuration JSON into `T` (what [`get`] does with the host's JSON).
///
/// The host checks the manifest's top-level fields before a call, but not the insides of
/// `json` fields, nor how a plugin's own types read them: serde_json alone reports a type
/// error by line and column of JSON the author never sees, so the path of the field is
/// tracked and put first.
pub fn parse<T: DeserializeOwned>(json: &str) -> Result<T, PluginError> {
    let invalid = |e: &dyn std::fmt::Display| PluginError::Config(format!("invalid configuration: {e}"));
    let mut deserializer = serde_json::Deserializer::from_str(json);
    // Its Display is "path: error", or only the error when it is about the whole document.
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| invalid(&e))?;
    deserializer.end().map_err(|e| invalid(&e))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Config {
        rate_bps: u32,
        #[serde(default)]
        tiers: Vec<Tier>,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Tier {
        above: i64,
        bps: u32,
    }

    fn error(json: &str) -> String {
        match parse::<Config>(json) {
            Err(PluginError::Config(message)) => message,
            other => panic!("expected a config error for {json}, got {other:?}"),
        }
    }

    #[test]
    fn a_type_error_names_the_field() {
        let message = error(r#"{"rate_bps": "300"}"#);
        assert!(message.starts_with("invalid configuration: rate_bps: invalid type: string \"300\""), "{message}");
    }

    #[test]
    fn a_type_error_inside_a_list_names_the_path() {
        let message = error(r#"{"rate_bps": 300, "tiers": [{"above": 0, "bps": 1}, {"above": 100, "bps": -5}]}"#);
        assert!(message.starts_with("invalid configuration: tiers[1].bps: invalid value: integer `-5`"), "{message}");
    }

    #[test]
    fn a_missing_field_is_named_and_trailing_text_refused() {
        assert_eq!(error("{}"), "invalid configuration: missing field `rate_bps` at line 1 column 2");
        assert!(error(r#"{"rate_bps": 1} x"#).contains("trailing characters"));
        assert_eq!(parse::<Config>(r#"{"rate_bps": 250}"#).map(|c| c.rate_bps), Ok(250));
    }
}
