//! Signing callbacks so partners can tell them from forgeries.
//!
//! - **GET**: `&signature=<hex HMAC-SHA256>` appended to the URL, computed over the query
//!   string exactly as sent before the signature (cashbackd's own inbound HMAC scheme,
//!   `docs/INGEST.md`), with the newest secret.
//! - **POST**: [Standard Webhooks](https://www.standardwebhooks.com/): `webhook-id`,
//!   `webhook-timestamp` (Unix seconds), and `webhook-signature`, a space-separated list
//!   of `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, one per secret, so a
//!   partner verifying with either the old or the new secret accepts the message while a
//!   secret is rotated. Secrets are `whsec_` followed by the base64 of the key bytes.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The prefix of Standard Webhooks secrets.
pub const PREFIX: &str = "whsec_";

/// A signing secret. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    key: Vec<u8>,
    text: String,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({})", self.masked())
    }
}

impl Secret {
    /// Parses `whsec_<base64>` (the key is the decoded bytes) or, for GET endpoints only,
    /// any other text of at least 16 characters (the key is the text's bytes).
    pub fn parse(text: &str, standard_only: bool) -> Result<Secret, String> {
        let text = text.trim();
        if let Some(b64) = text.strip_prefix(PREFIX) {
            let key = STANDARD.decode(b64).map_err(|_| "a whsec_ secret must be whsec_ and base64".to_string())?;
            if key.len() < 16 {
                return Err("a whsec_ secret must hold at least 16 bytes".into());
            }
            return Ok(Secret { key, text: text.to_string() });
        }
        if standard_only {
            return Err("POST endpoints sign with Standard Webhooks: the secret must start with whsec_".into());
        }
        if text.chars().count() < 16 {
            return Err("a secret must be at least 16 characters".into());
        }
        Ok(Secret { key: text.as_bytes().to_vec(), text: text.to_string() })
    }

    /// A new random `whsec_` secret (32 bytes).
    pub fn generate() -> Secret {
        let bytes: [u8; 32] = rand::random();
        let text = format!("{PREFIX}{}", STANDARD.encode(bytes));
        Secret { key: bytes.to_vec(), text }
    }

    /// The secret as stored and given to the partner.
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// For listings: the kind and the last four characters.
    pub fn masked(&self) -> String {
        let tail: String = self.text.chars().rev().take(4).collect::<Vec<_>>().into_iter().rev().collect();
        if self.text.starts_with(PREFIX) { format!("whsec_…{tail}") } else { format!("…{tail}") }
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC accepts keys of any length")
    }
}

/// The hex HMAC-SHA256 of `message`.
pub fn hmac_hex(secret: &Secret, message: &[u8]) -> String {
    let mut mac = secret.mac();
    mac.update(message);
    hex::encode(mac.finalize().into_bytes())
}

/// Appends `&{param}=<hex HMAC of the query string>` to a GET URL. Returns the signed URL.
pub fn sign_get(url: &str, secret: &Secret, param: &str) -> String {
    let (base, fragment) = match url.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (url, None),
    };
    let query = base.split_once('?').map_or("", |(_, q)| q);
    let signature = hmac_hex(secret, query.as_bytes());
    let sep = if !base.contains('?') {
        "?"
    } else if base.ends_with('?') || base.ends_with('&') {
        ""
    } else {
        "&"
    };
    let mut out = format!("{base}{sep}{}={signature}", crate::input::encode_component(param));
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

/// The `webhook-signature` header for `id`, `timestamp` (Unix seconds) and `body`: one
/// `v1,<base64>` per secret, space-separated.
pub fn standard_webhooks(secrets: &[Secret], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|s| {
            let mut mac = s.mac();
            mac.update(id.as_bytes());
            mac.update(b".");
            mac.update(timestamp.to_string().as_bytes());
            mac.update(b".");
            mac.update(body);
            format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A URL or header value with its signatures replaced by `***`, for the delivery log.
pub fn mask_signature_param(url: &str, param: &str) -> String {
    let encoded = crate::input::encode_component(param);
    let Some((base, query)) = url.split_once('?') else { return url.to_string() };
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    // One pass into one string: this runs for every GET callback sent.
    let mut out = String::with_capacity(url.len());
    out.push_str(base);
    out.push('?');
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((k, _)) if k == encoded => {
                out.push_str(k);
                out.push_str("=***");
            }
            _ => out.push_str(pair),
        }
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_parsed_masked_and_never_debug_printed() {
        let s = Secret::generate();
        assert!(s.expose().starts_with("whsec_"));
        assert!(!format!("{s:?}").contains(&s.expose()[6..20]));
        assert!(Secret::parse("short", false).is_err());
        assert!(Secret::parse("a-long-enough-plain-secret", true).is_err(), "POST needs whsec_");
        assert!(Secret::parse("whsec_!!notbase64", false).is_err());
        assert_eq!(Secret::parse("a-long-enough-plain-secret", false).expect("plain").masked(), "…cret");
    }

    #[test]
    fn get_signatures_cover_the_query_as_sent() {
        let s = Secret::parse("a-long-enough-plain-secret", false).expect("secret");
        let signed = sign_get("https://p.example/cb?a=1&b=x%20y", &s, "signature");
        assert_eq!(signed, format!("https://p.example/cb?a=1&b=x%20y&signature={}", hmac_hex(&s, b"a=1&b=x%20y")));
        assert_eq!(mask_signature_param(&signed, "signature"), "https://p.example/cb?a=1&b=x%20y&signature=***");
        // Every pair of that name, wherever it is; the fragment kept; a name as encoded.
        assert_eq!(
            mask_signature_param("https://p.example/cb?signature=a&x=1&signature=b#top", "signature"),
            "https://p.example/cb?signature=***&x=1&signature=***#top"
        );
        assert_eq!(
            mask_signature_param("https://p.example/cb?a&sig%20x=1", "sig x"),
            "https://p.example/cb?a&sig%20x=***"
        );
        assert_eq!(mask_signature_param("https://p.example/cb", "signature"), "https://p.example/cb");
    }

    #[test]
    fn the_standard_webhooks_example_signature_is_reproduced() {
        // The example of the Standard Webhooks specification.
        let s = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", true).expect("secret");
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            standard_webhooks(&[s], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }
}
