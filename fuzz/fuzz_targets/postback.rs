//! The host's side of an inbound postback (`ingest`, as `http::ingress` uses it): its
//! credentials checked (`authenticate`: token, HMAC signature, address allow-list), then
//! removed from the query (`strip_secret_params`) before the adapter, the event's raw
//! fields and the rejects log see it.
//!
//! Properties:
//! - never a panic, whatever the query, body, headers and secret;
//! - after stripping, no parameter is named `token` or `signature` as either decoder
//!   reads it (the host's, `url::form_urlencoded`, and the adapters', the SDK's
//!   `form_decode`), and everything else is kept byte for byte, in order;
//! - a token is accepted exactly when the one the sender gave (header first, then the
//!   first `token` parameter) equals the secret;
//! - a request signed the documented way (HMAC-SHA256 of the body for a POST, of the query
//!   without the credentials for a GET; hex in the header or `signature` parameter) is
//!   accepted, and the same request with one hex digit changed is refused;
//! - an address allow-list accepts exactly the listed addresses.
//!
//! An input starting with `#` is lines of text: the secret, the query string, then the
//! body (the seed corpus: postbacks from the adapters' fixtures and docs/INGEST.md).
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use cashback_sdk::adapter::form_decode;
use cashbackd::ingest::{Inbound, InboundAuth, authenticate, strip_secret_params};
use cashbackd_fuzz::tricky_string;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;
use std::net::IpAddr;

const SECRET_NAMES: [&str; 2] = ["token", "signature"];

#[derive(Debug)]
struct Input {
    /// Parameters, encoded once into the query.
    pairs: Vec<(String, String)>,
    /// Pieces appended as they are (odd encodings of the credential names, `&&`...).
    raw_pieces: Vec<String>,
    secret: String,
    given: String,
    in_header: bool,
    post: bool,
    body: Vec<u8>,
    flip: usize,
    remote: Option<IpAddr>,
    allowed: Vec<IpAddr>,
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let mut pairs = Vec::new();
        for _ in 0..u.int_in_range(0..=6)? {
            let name =
                if u.ratio(1, 4)? { u.choose(&["token", "signature", "tid"])?.to_string() } else { tricky_string(u)? };
            pairs.push((name, tricky_string(u)?));
        }
        let mut raw_pieces = Vec::new();
        for _ in 0..u.int_in_range(0..=3)? {
            raw_pieces.push(if u.arbitrary()? {
                u.choose(&[
                    "tok%65n=x",
                    "%74oken=x",
                    "signatur%65=ab",
                    "token",
                    "Token=x",
                    "token%3D=x",
                    "+token=x",
                    "",
                    "t%6Fken",
                ])?
                .to_string()
            } else {
                tricky_string(u)?
            });
        }
        let secret = if u.ratio(1, 8)? { String::new() } else { tricky_string(u)? };
        let given = if u.arbitrary()? { secret.clone() } else { tricky_string(u)? };
        let ip = |u: &mut Unstructured<'a>| -> arbitrary::Result<IpAddr> {
            Ok(if u.arbitrary()? {
                IpAddr::from([10, 0, 0, u.int_in_range(1..=3)?])
            } else {
                IpAddr::from(<[u8; 16]>::arbitrary(u)?)
            })
        };
        let allowed = (0..u.int_in_range(0..=3)?).map(|_| ip(u)).collect::<arbitrary::Result<_>>()?;
        Ok(Input {
            pairs,
            raw_pieces,
            secret,
            given,
            in_header: u.arbitrary()?,
            post: u.arbitrary()?,
            body: Vec::<u8>::arbitrary(u)?,
            flip: usize::arbitrary(u)?,
            remote: if u.ratio(7, 8)? { Some(ip(u)?) } else { None },
            allowed,
        })
    }
}

fn encode(pairs: &[(String, String)]) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

/// The query: the encoded pairs, then the raw pieces.
fn query(input: &Input) -> String {
    let mut pieces = vec![encode(&input.pairs)];
    pieces.extend(input.raw_pieces.iter().cloned());
    pieces.join("&")
}

fn is_secret_piece(piece: &str) -> bool {
    url::form_urlencoded::parse(piece.as_bytes()).any(|(k, _)| SECRET_NAMES.contains(&k.as_ref()))
        || form_decode(piece).iter().any(|(k, _)| SECRET_NAMES.contains(&k.as_str()))
}

fn check(
    auth: &InboundAuth,
    method: &str,
    query: &str,
    body: &[u8],
    headers: &[(&str, String)],
    remote: Option<IpAddr>,
) -> Result<(), String> {
    let header = |name: &str| headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone());
    let inbound = Inbound { method, query, header: &header, body, remote };
    let result = authenticate(auth, &inbound);
    if let Err(why) = &result {
        assert!(!why.is_empty());
    }
    result
}

fn sign(secret: &str, bytes: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(bytes);
    hex::encode(mac.finalize().into_bytes())
}

fuzz_target!(|data: &[u8]| {
    if let Some(text) = data.strip_prefix(b"#") {
        let mut lines = text.splitn(3, |b| *b == b'\n');
        let secret = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
        let query = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
        let body = lines.next().unwrap_or_default();
        raw(&secret, &query, body);
    } else if let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) {
        structured(input);
    }
});

/// Stripping: no credential left for either decoder; the rest byte for byte.
fn check_strip(base: &str) {
    let stripped = strip_secret_params(base);
    for (k, _) in url::form_urlencoded::parse(stripped.as_bytes()) {
        assert!(!SECRET_NAMES.contains(&k.as_ref()), "{k:?} left in {stripped:?} (from {base:?})");
    }
    for (k, _) in form_decode(&stripped) {
        assert!(!SECRET_NAMES.contains(&k.as_str()), "{k:?} reaches the adapter in {stripped:?} (from {base:?})");
    }
    let kept: Vec<&str> = base.split('&').filter(|p| !is_secret_piece(p)).collect();
    assert_eq!(stripped, kept.join("&"), "everything but the credentials is kept, in order");
}

/// Any query and body, as they came: stripped properly, never a panic, a token accepted
/// exactly when the first one given is the secret.
fn raw(secret: &str, query: &str, body: &[u8]) {
    check_strip(query);
    for method in ["GET", "POST"] {
        let token = InboundAuth::Token(secret.to_string());
        let first =
            url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "token").map(|(_, v)| v.into_owned());
        let ok = check(&token, method, query, body, &[], None).is_ok();
        assert_eq!(ok, first.as_deref() == Some(secret), "token check of {query:?}");
        let _ = check(&InboundAuth::Hmac(secret.to_string()), method, query, body, &[], None);
    }
}

fn structured(input: Input) {
    let method = if input.post { "POST" } else { "GET" };
    let base = query(&input);
    check_strip(&base);

    // Token.
    let token = InboundAuth::Token(input.secret.clone());
    let mut q = base.clone();
    let mut headers = Vec::new();
    if input.in_header {
        headers.push(("x-cashbackd-token", input.given.clone()));
    } else {
        q = format!("{q}&{}", encode(&[("token".into(), input.given.clone())]));
    }
    let first_token = headers
        .first()
        .map(|(_, v)| v.clone())
        .or_else(|| url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "token").map(|(_, v)| v.into_owned()));
    let accepted = check(&token, method, &q, &input.body, &headers, input.remote).is_ok();
    assert_eq!(accepted, first_token.as_deref() == Some(input.secret.as_str()), "token check of {q:?}");

    // HMAC: signed as documented, accepted; one digit changed, refused.
    let hmac = InboundAuth::Hmac(input.secret.clone());
    let unsigned: Vec<(String, String)> =
        input.pairs.iter().filter(|(k, _)| !SECRET_NAMES.contains(&k.as_str())).cloned().collect();
    let unsigned = encode(&unsigned);
    let signature = sign(&input.secret, if input.post { &input.body } else { unsigned.as_bytes() });
    let mut tampered = signature.clone().into_bytes();
    let at = input.flip % tampered.len();
    tampered[at] = if tampered[at] == b'0' { b'1' } else { b'0' };
    let tampered = String::from_utf8(tampered).expect("hex");
    for (sig, ok) in [(signature, true), (tampered, false)] {
        let (q, headers) = if input.in_header {
            (unsigned.clone(), vec![("x-cashbackd-signature", sig)])
        } else if unsigned.is_empty() {
            (format!("signature={sig}"), Vec::new())
        } else {
            (format!("{unsigned}&signature={sig}"), Vec::new())
        };
        let result = check(&hmac, method, &q, &input.body, &headers, input.remote);
        assert_eq!(result.is_ok(), ok, "{method} {q:?} headers {headers:?}: {result:?}");
    }
    // Any other query or header: refused or accepted, never a panic.
    let _ = check(&hmac, method, &base, &input.body, &[("x-cashbackd-signature", input.given.clone())], input.remote);
    let _ = check(&hmac, method, &base, &input.body, &[], input.remote);

    // Address allow-list.
    let ips = InboundAuth::IpAllowList(input.allowed.clone());
    let ok = check(&ips, method, &base, &input.body, &[], input.remote).is_ok();
    assert_eq!(ok, input.remote.is_some_and(|ip| input.allowed.contains(&ip)));
    assert!(check(&InboundAuth::None, method, &base, &input.body, &[], input.remote).is_ok());
}
