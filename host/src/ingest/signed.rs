//! Signed user ids on tracked links. A tracked link is public: without a signature anyone
//! can put any user id on it (`/c/shoe-sale?user=someone-else`). When the operator sets
//! `ingress.click_secret`, every click must carry `sig`, the site's HMAC-SHA256 of the
//! link id and the user id (and `exp`, when the link expires), so only the site, which
//! holds the secret, can say which user a click is for (docs/INGEST.md, "Who may put
//! which user id on a link").

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The text a site signs: the link id, the user id and the expiry (unix seconds, or
/// empty), one per line.
pub fn message(link: &str, user: &str, exp: Option<&str>) -> String {
    format!("{link}\n{user}\n{}", exp.unwrap_or(""))
}

/// `sig` for a link, a user and an optional expiry: lowercase hex of HMAC-SHA256.
pub fn sign(secret: &str, link: &str, user: &str, exp: Option<&str>) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(message(link, user, exp).as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Why a click's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `sig` parameter.
    #[error("sig: required (ingress.click_secret is set: the site signs the user id of every link)")]
    Missing,
    /// `sig` does not match.
    #[error("sig: does not match the link and user id")]
    Mismatch,
    /// `exp` is not a number of seconds.
    #[error("exp: not a unix time in seconds")]
    BadExpiry,
    /// The link expired.
    #[error("exp: the signed link expired")]
    Expired,
}

/// Checks `sig` (and `exp` against `now_ms`) in constant time.
pub fn verify(
    secret: &str,
    link: &str,
    user: &str,
    sig: Option<&str>,
    exp: Option<&str>,
    now_ms: i64,
) -> Result<(), SignatureError> {
    let sig = sig.ok_or(SignatureError::Missing)?;
    let given = hex::decode(sig).map_err(|_| SignatureError::Mismatch)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| SignatureError::Mismatch)?;
    mac.update(message(link, user, exp).as_bytes());
    mac.verify_slice(&given).map_err(|_| SignatureError::Mismatch)?;
    if let Some(exp) = exp {
        let exp: i64 = exp.parse().map_err(|_| SignatureError::BadExpiry)?;
        if exp.saturating_mul(1000) < now_ms {
            return Err(SignatureError::Expired);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_binds_the_link_the_user_and_the_expiry() {
        let sig = sign("s3cret", "shoe-sale", "u1", None);
        assert_eq!(verify("s3cret", "shoe-sale", "u1", Some(&sig), None, 0), Ok(()));
        assert_eq!(verify("s3cret", "shoe-sale", "u2", Some(&sig), None, 0), Err(SignatureError::Mismatch));
        assert_eq!(verify("s3cret", "other", "u1", Some(&sig), None, 0), Err(SignatureError::Mismatch));
        assert_eq!(verify("other", "shoe-sale", "u1", Some(&sig), None, 0), Err(SignatureError::Mismatch));
        assert_eq!(verify("s3cret", "shoe-sale", "u1", None, None, 0), Err(SignatureError::Missing));
        assert_eq!(verify("s3cret", "shoe-sale", "u1", Some("zz"), None, 0), Err(SignatureError::Mismatch));
        // The expiry is signed: changing it breaks the signature; passing it refuses.
        let sig = sign("s3cret", "shoe-sale", "u1", Some("1000"));
        assert_eq!(verify("s3cret", "shoe-sale", "u1", Some(&sig), Some("1000"), 999_000), Ok(()));
        assert_eq!(verify("s3cret", "shoe-sale", "u1", Some(&sig), Some("2000"), 0), Err(SignatureError::Mismatch));
        assert_eq!(
            verify("s3cret", "shoe-sale", "u1", Some(&sig), Some("1000"), 1_000_001),
            Err(SignatureError::Expired)
        );
        // A known vector (python3: hmac.new(b"s3cret", b"shoe-sale\nu1\n", "sha256").hexdigest()).
        assert_eq!(
            sign("s3cret", "shoe-sale", "u1", None),
            "68bea8fc676d0db9f33d571cf9abc883ac12303003ff321a573b71015d4c710f"
        );
    }
}
