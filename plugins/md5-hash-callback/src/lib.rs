//! `md5-hash-callback`: a partner's MD5-of-parameters `hash` on every callback.
//!
//! Some partners (seed 001's example URL ends in `&hash=...`) check a callback with an
//! MD5 over the values of its parameters and a shared key, a scheme the built-in
//! signatures (HMAC-SHA256, Standard Webhooks) do not speak. This plugin renders the
//! endpoint's URL as the built-in template would (macros filled in, static parameters
//! appended) and adds
//!
//! ```text
//! hash = hex(md5(v1 SEP v2 SEP ... SEP vn SEP secret))
//! ```
//!
//! where `v1..vn` are the percent-decoded values of the parameters named in `fields` (in
//! that order; by default every parameter of the URL, in URL order), `SEP` is `separator`
//! (empty by default) and `secret` is the endpoint's signing secret. A GET endpoint gets
//! the hash as one more query parameter; a POST endpoint gets the same parameters as an
//! `application/x-www-form-urlencoded` body. The hash is marked secret, so the delivery
//! log masks it.

use cashback_sdk::partner::prelude::*;
use md5::{Digest, Md5};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use serde::Deserialize;

/// The plugin's configuration (see `cashback-plugin.toml`).
#[derive(Debug, Default, Deserialize)]
pub struct Config {
    /// Parameters hashed, in order; empty: all, in URL order.
    #[serde(default)]
    pub fields: Vec<String>,
    /// The parameter carrying the hash.
    pub hash_param: Option<String>,
    /// Between the values and before the secret.
    #[serde(default)]
    pub separator: String,
    /// Upper-case hex.
    #[serde(default)]
    pub uppercase: bool,
}

/// RFC 3986 unreserved characters stay; everything else is percent-encoded.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// The plugin.
pub struct Md5HashCallback;

impl PartnerCallback for Md5HashCallback {
    fn render(change: &Change, endpoint: &Endpoint) -> Result<Request, PluginError> {
        let config: Config = config::get()?;
        Self::sign(&config, change, endpoint)
    }
}

impl Md5HashCallback {
    /// The request for an explicit configuration (what `render` does with the host's).
    pub fn sign(config: &Config, _change: &Change, endpoint: &Endpoint) -> Result<Request, PluginError> {
        let secret = endpoint.secret.as_deref().ok_or_else(|| {
            PluginError::Config(format!(
                "endpoint {} has no signing secret to hash with: give it one (`cashbackd endpoint rotate-secret`)",
                endpoint.id
            ))
        })?;
        let hash_param = config.hash_param.as_deref().unwrap_or("hash");
        let (base, query) = endpoint.url.split_once('?').unwrap_or((&endpoint.url, ""));
        let mut pairs: Vec<(String, String)> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                Ok((decode(k)?, decode(v)?))
            })
            .collect::<Result<_, PluginError>>()?;
        // The endpoint's static parameters come after the template's, as the built-in
        // template appends them.
        pairs.extend(endpoint.params.iter().cloned());
        pairs.retain(|(k, _)| k != hash_param);
        let mut hashed: Vec<&str> = Vec::new();
        if config.fields.is_empty() {
            hashed.extend(pairs.iter().map(|(_, v)| v.as_str()));
        } else {
            for field in &config.fields {
                let value = pairs.iter().find(|(k, _)| k == field).ok_or_else(|| {
                    PluginError::Config(format!(
                        "fields: {field:?} is not a parameter of endpoint {}'s URL",
                        endpoint.id
                    ))
                })?;
                hashed.push(&value.1);
            }
        }
        hashed.push(secret);
        let digest = Md5::digest(hashed.join(config.separator.as_str()).as_bytes());
        let mut hash: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        if config.uppercase {
            hash.make_ascii_uppercase();
        }
        pairs.push((hash_param.to_string(), hash));
        let encoded: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("{}={}", utf8_percent_encode(k, COMPONENT), utf8_percent_encode(v, COMPONENT)))
            .collect();
        let form = encoded.join("&");
        let mut request = match endpoint.method {
            Method::Get => Request::get(&format!("{base}?{form}")),
            Method::Post | Method::Put => Request {
                method: endpoint.method,
                url: base.to_string(),
                headers: vec![("content-type".into(), "application/x-www-form-urlencoded".into())],
                body: Some(form),
                redact: Vec::new(),
            },
        };
        request.redact.push(hash_param.to_string());
        Ok(request)
    }
}

fn decode(s: &str) -> Result<String, PluginError> {
    percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| PluginError::InvalidInput(format!("the URL's parameter {s:?} is not UTF-8 once decoded")))
}

cashback_sdk::export_partner_callback!(Md5HashCallback, fixtures = "fixtures.json");

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(url: &str, secret: Option<&str>) -> Endpoint {
        Endpoint {
            id: "pb".into(),
            partner_id: "app".into(),
            url: url.into(),
            url_template: String::new(),
            method: Method::Get,
            params: Vec::new(),
            secret: secret.map(str::to_string),
        }
    }

    fn change() -> Change {
        Change {
            subject: Subject::Conversion,
            event: "conversion.changed".into(),
            delivery_id: "cbk_1".into(),
            attempt: 1,
            changed_at: 0,
            now: 0,
            conversion: None,
            values: Vec::new(),
        }
    }

    fn md5_hex(s: &str) -> String {
        Md5::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn every_value_in_url_order_then_the_secret() {
        let e = endpoint("https://p.example/pb?uid=u%201&tx=T1&val=1.50", Some("key-of-16-chars!"));
        let r = Md5HashCallback::sign(&Config::default(), &change(), &e).expect("signed");
        let expected = md5_hex("u 1T11.50key-of-16-chars!");
        assert_eq!(r.url, format!("https://p.example/pb?uid=u%201&tx=T1&val=1.50&hash={expected}"));
        assert_eq!(r.redact, vec!["hash".to_string()]);
    }

    #[test]
    fn named_fields_with_a_separator() {
        let e = endpoint("https://p.example/pb?uid=u1&tx=T1&val=1.50", Some("key-of-16-chars!"));
        let config = Config { fields: vec!["tx".into(), "uid".into()], separator: "|".into(), ..Config::default() };
        let r = Md5HashCallback::sign(&config, &change(), &e).expect("signed");
        assert!(r.url.ends_with(&format!("&hash={}", md5_hex("T1|u1|key-of-16-chars!"))), "{}", r.url);
    }

    #[test]
    fn no_secret_and_unknown_fields_are_config_errors() {
        let e = endpoint("https://p.example/pb?uid=u1", None);
        assert!(matches!(Md5HashCallback::sign(&Config::default(), &change(), &e), Err(PluginError::Config(_))));
        let e = endpoint("https://p.example/pb?uid=u1", Some("key-of-16-chars!"));
        let config = Config { fields: vec!["nope".into()], ..Config::default() };
        assert!(matches!(Md5HashCallback::sign(&config, &change(), &e), Err(PluginError::Config(_))));
    }
}
