//! Network adapter plugins (world `network-adapter`).
//!
//! An adapter turns one affiliate network's S2S postbacks, API reports and offline files
//! into [`ConversionEvent`]s. Implement the methods the network supports; the others
//! answer that the adapter does not support that path.

use crate::types::{ConversionEvent, PluginError};

pub use bindings::exports::cashback::plugin::adapter::{
    FileResult, ImportRequest, Page, PostbackRequest, RejectedItem, RejectedRow,
};

/// What an adapter plugin implements. Every method has a default that refuses the path,
/// so an adapter implements only what its network offers.
pub trait Adapter {
    /// Parses an inbound S2S postback into events.
    fn parse_postback(request: &PostbackRequest) -> Result<Vec<ConversionEvent>, PluginError> {
        let _ = request;
        Err(PluginError::InvalidInput("this adapter does not accept postbacks".into()))
    }

    /// Fetches one page of the network's report through [`http::fetch`].
    fn import_page(request: &ImportRequest) -> Result<Page, PluginError> {
        let _ = request;
        Err(PluginError::InvalidInput("this adapter does not import from an API".into()))
    }

    /// Parses an offline report file.
    fn parse_file(name: &str, contents: &[u8]) -> Result<FileResult, PluginError> {
        let _ = (name, contents);
        Err(PluginError::InvalidInput("this adapter does not parse files".into()))
    }
}

impl PostbackRequest {
    /// The query string's parameters, URL-decoded once, in order. Bytes that are not
    /// UTF-8 become U+FFFD; cashbackd refuses such a query string before the adapter is
    /// called, but [`try_query_pairs`](Self::try_query_pairs) says so itself.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        form_decode(&self.query)
    }

    /// The query string's parameters, URL-decoded once, in order; a name or value that is
    /// not UTF-8 once decoded is [`PluginError::InvalidInput`] naming it (two different
    /// ids must never become the same text).
    pub fn try_query_pairs(&self) -> Result<Vec<(String, String)>, PluginError> {
        try_form_decode(&self.query)
    }

    /// The body's parameters, when it is `application/x-www-form-urlencoded`. Lossy like
    /// [`query_pairs`](Self::query_pairs); prefer [`try_form_pairs`](Self::try_form_pairs).
    pub fn form_pairs(&self) -> Vec<(String, String)> {
        form_decode(&String::from_utf8_lossy(&self.body))
    }

    /// The body's parameters, when it is `application/x-www-form-urlencoded`; a body, name
    /// or value that is not UTF-8 is [`PluginError::InvalidInput`].
    pub fn try_form_pairs(&self) -> Result<Vec<(String, String)>, PluginError> {
        let text = core::str::from_utf8(&self.body)
            .map_err(|e| PluginError::InvalidInput(format!("the postback body is not UTF-8: {e}")))?;
        try_form_decode(text)
    }

    /// A header's value (names compare case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Decodes `application/x-www-form-urlencoded` text (`+` is a space, `%XX` a byte).
/// Invalid escapes are kept as they are rather than dropped.
pub fn form_decode(input: &str) -> Vec<(String, String)> {
    input
        .split('&')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Decodes `application/x-www-form-urlencoded` text like [`form_decode`], refusing
/// instead of replacing: a name or value whose bytes are not UTF-8 once decoded is
/// [`PluginError::InvalidInput`] naming the parameter, quoted as it was sent.
pub fn try_form_decode(input: &str) -> Result<Vec<(String, String)>, PluginError> {
    let mut pairs = Vec::new();
    for part in input.split('&').filter(|part| !part.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let name = String::from_utf8(percent_decode_bytes(k)).map_err(|_| {
            PluginError::InvalidInput(format!("a parameter name is not UTF-8 once percent-decoded ({k:?})"))
        })?;
        let value = String::from_utf8(percent_decode_bytes(v)).map_err(|_| {
            PluginError::InvalidInput(format!(
                "parameter {name:?}: the value is not UTF-8 once percent-decoded ({v:?})"
            ))
        })?;
        pairs.push((name, value));
    }
    Ok(pairs)
}

fn percent_decode(s: &str) -> String {
    String::from_utf8_lossy(&percent_decode_bytes(s)).into_owned()
}

fn percent_decode_bytes(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Outgoing HTTP through the host. Only hosts declared in the manifest are reachable;
/// credentials named in the manifest are added by the host, never seen by the plugin.
pub mod http {
    pub use super::bindings::cashback::plugin::http::{HttpError, Method, Request, Response};

    /// Sends `request` through the host and waits for the response.
    pub fn fetch(request: &Request) -> Result<Response, HttpError> {
        #[cfg(target_arch = "wasm32")]
        {
            super::bindings::cashback::plugin::http::fetch(request)
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            crate::testing::http_fetch(request)
        }
    }

    /// A GET request to `url`, optionally with a manifest-declared credential.
    pub fn get(url: &str, credential: Option<&str>) -> Request {
        Request {
            method: Method::Get,
            url: url.to_string(),
            headers: Vec::new(),
            body: None,
            credential: credential.map(str::to_string),
        }
    }

    impl From<HttpError> for crate::types::PluginError {
        fn from(e: HttpError) -> Self {
            crate::types::PluginError::Upstream(format!("http request failed: {e:?}"))
        }
    }
}

#[allow(missing_docs)]
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit/since_v0.1.0",
        world: "cashback:plugin/network-adapter@0.1.0",
        with: {
            "cashback:plugin/types@0.1.0": crate::bindings::cashback::plugin::types,
            "cashback:plugin/log@0.1.0": crate::bindings::cashback::plugin::log,
            "cashback:plugin/config@0.1.0": crate::bindings::cashback::plugin::config,
        },
        additional_derives: [PartialEq, serde::Serialize, serde::Deserialize],
        runtime_path: "cashback_sdk::__private::wit_bindgen::rt",
        pub_export_macro: true,
        export_macro_name: "__export_network_adapter",
    });
}

/// Exports a type implementing [`Adapter`] as the plugin's `adapter` interface, and
/// stamps the API version and the manifest into the component. Invoke it once, at the
/// root of the plugin crate. Expands to nothing on targets other than wasm32.
#[macro_export]
macro_rules! export_adapter {
    ($adapter:ty $(, fixtures = $fixtures:literal)?) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::adapter::bindings::exports::cashback::plugin::adapter as __wit;
            struct __CashbackAdapterExport;

            impl __wit::Guest for __CashbackAdapterExport {
                fn parse_postback(
                    request: __wit::PostbackRequest,
                ) -> ::core::result::Result<::std::vec::Vec<$crate::types::ConversionEvent>, $crate::types::PluginError> {
                    $crate::__private::install_panic_hook();
                    <$adapter as $crate::adapter::Adapter>::parse_postback(&request)
                }

                fn import_page(
                    request: __wit::ImportRequest,
                ) -> ::core::result::Result<__wit::Page, $crate::types::PluginError> {
                    $crate::__private::install_panic_hook();
                    <$adapter as $crate::adapter::Adapter>::import_page(&request)
                }

                fn parse_file(
                    name: ::std::string::String,
                    contents: ::std::vec::Vec<u8>,
                ) -> ::core::result::Result<__wit::FileResult, $crate::types::PluginError> {
                    $crate::__private::install_panic_hook();
                    <$adapter as $crate::adapter::Adapter>::parse_file(&name, &contents)
                }
            }

            $crate::adapter::bindings::__export_network_adapter!(
                __CashbackAdapterExport with_types_in $crate::adapter::bindings
            );
            $crate::__stamp_plugin!($(fixtures = $fixtures)?);
        };
        // Natively the export is a no-op; naming the impl keeps it type-checked and used.
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            let _ = <$adapter as $crate::adapter::Adapter>::parse_postback;
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding_decodes_once_and_keeps_bad_escapes() {
        let pairs = form_decode("a=1&b=x%20y+z&c=%2541&d=%zz&e&f=%E2%82%AC");
        assert_eq!(
            pairs,
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y z".into()),
                ("c".into(), "%41".into()),
                ("d".into(), "%zz".into()),
                ("e".into(), "".into()),
                ("f".into(), "€".into()),
            ]
        );
    }

    #[test]
    fn strict_form_decoding_refuses_what_is_not_utf8_instead_of_replacing_it() {
        let same = try_form_decode("a=1&b=x%20y+z&c=%2541&d=%zz&e&f=%E2%82%AC").expect("UTF-8");
        assert_eq!(same, form_decode("a=1&b=x%20y+z&c=%2541&d=%zz&e&f=%E2%82%AC"));
        match try_form_decode("tid=A%FF%FE") {
            Err(PluginError::InvalidInput(m)) => {
                assert_eq!(m, r#"parameter "tid": the value is not UTF-8 once percent-decoded ("A%FF%FE")"#)
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(try_form_decode("%FF=1").is_err());
    }
}
