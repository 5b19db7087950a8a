//! Ingress configuration and checks: networks (their adapter and how their postbacks
//! authenticate), tracked links, click URL rendering, and the log of refused postbacks.
//! What the ingress takes of its input (identifier limits, URL-encoded text) is
//! `crate::input`, shared with the plugin boundary and the callbacks' URLs.

use crate::db::Db;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use sqlx::Row;
use std::fmt;
use std::net::IpAddr;
use subtle::ConstantTimeEq;

pub mod signed;

/// How a network's postbacks prove they come from it.
#[derive(Clone, PartialEq, Eq)]
pub enum InboundAuth {
    /// Anyone (only for networks on a private path; not recommended).
    None,
    /// A shared token in the `token` query parameter or the `X-Cashbackd-Token` header.
    Token(String),
    /// The sender's address must be in this list.
    IpAllowList(Vec<IpAddr>),
    /// `X-Cashbackd-Signature` (or the `signature` query parameter) is the hex HMAC-SHA256,
    /// under this secret, of the body (POST) or of the query string without `signature`
    /// (GET).
    Hmac(String),
}

impl fmt::Debug for InboundAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InboundAuth::None => write!(f, "None"),
            InboundAuth::Token(_) => write!(f, "Token(redacted)"),
            InboundAuth::IpAllowList(ips) => write!(f, "IpAllowList({ips:?})"),
            InboundAuth::Hmac(_) => write!(f, "Hmac(redacted)"),
        }
    }
}

/// An affiliate network.
#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    /// cashbackd's id (the `{network}` of `/postback/{network}`).
    pub id: String,
    /// Display name.
    pub name: String,
    /// Digest of its adapter plugin.
    pub adapter_digest: Option<String>,
    /// The adapter's configuration (checked against its schema on use).
    pub adapter_config: serde_json::Value,
    /// How its postbacks authenticate.
    pub auth: InboundAuth,
}

/// A tracked link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The `{link}` of `/c/{link}`.
    pub id: String,
    /// The merchant.
    pub merchant_id: String,
    /// The network that tracks it.
    pub network_id: String,
    /// Where to send the user; `{click_id}`, `{ref_id}`, `{sub1}`..`{sub5}` are filled in,
    /// each value URL-encoded exactly once.
    pub url_template: String,
}

/// Creates or replaces a network.
pub async fn upsert_network(db: &Db, n: &Network, now: i64) -> Result<(), sqlx::Error> {
    let (kind, secret, ips) = match &n.auth {
        InboundAuth::None => ("none", None, None),
        InboundAuth::Token(t) => ("token", Some(t.clone()), None),
        InboundAuth::IpAllowList(ips) => {
            ("ip", None, Some(ips.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")))
        }
        InboundAuth::Hmac(k) => ("hmac", Some(k.clone()), None),
    };
    sqlx::query(
        "INSERT INTO networks (id, name, adapter_digest, adapter_config, auth_kind, auth_secret, auth_ips, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO UPDATE SET name = $2, adapter_digest = $3, \
         adapter_config = $4, auth_kind = $5, auth_secret = $6, auth_ips = $7",
    )
    .bind(&n.id)
    .bind(&n.name)
    .bind(&n.adapter_digest)
    .bind(n.adapter_config.to_string())
    .bind(kind)
    .bind(secret)
    .bind(ips)
    .bind(now)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// A network by id.
pub async fn network(db: &Db, id: &str) -> Result<Option<Network>, sqlx::Error> {
    let Some(r) = sqlx::query(
        "SELECT id, name, adapter_digest, adapter_config, auth_kind, auth_secret, auth_ips FROM networks WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&db.pool)
    .await?
    else {
        return Ok(None);
    };
    let kind: String = r.try_get(4)?;
    let secret: Option<String> = r.try_get(5)?;
    let ips: Option<String> = r.try_get(6)?;
    let auth = match kind.as_str() {
        "token" => InboundAuth::Token(secret.unwrap_or_default()),
        "hmac" => InboundAuth::Hmac(secret.unwrap_or_default()),
        "ip" => InboundAuth::IpAllowList(
            ips.unwrap_or_default().split(',').filter_map(|ip| ip.trim().parse().ok()).collect(),
        ),
        _ => InboundAuth::None,
    };
    let config: String = r.try_get(3)?;
    Ok(Some(Network {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        adapter_digest: r.try_get(2)?,
        adapter_config: serde_json::from_str(&config).unwrap_or_default(),
        auth,
    }))
}

/// Creates or replaces a tracked link.
pub async fn upsert_link(db: &Db, l: &Link, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO links (id, merchant_id, network_id, url_template, created_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (id) DO UPDATE SET merchant_id = $2, network_id = $3, url_template = $4",
    )
    .bind(&l.id)
    .bind(&l.merchant_id)
    .bind(&l.network_id)
    .bind(&l.url_template)
    .bind(now)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// A tracked link by id.
pub async fn link(db: &Db, id: &str) -> Result<Option<Link>, sqlx::Error> {
    let row = sqlx::query("SELECT id, merchant_id, network_id, url_template FROM links WHERE id = $1")
        .bind(id)
        .fetch_optional(&db.pool)
        .await?;
    row.map(|r| {
        Ok(Link {
            id: r.try_get(0)?,
            merchant_id: r.try_get(1)?,
            network_id: r.try_get(2)?,
            url_template: r.try_get(3)?,
        })
    })
    .transpose()
}

/// Fills a link's URL template. The template itself is the operator's and is left as
/// it is; each value is encoded exactly once; an absent value becomes empty.
///
/// One pass over the template: a value is never read again as template text. (Replacing
/// one placeholder after the other did that: with `{sub{ref_id}}` in a template, the
/// user's `ref_id=1` made a `{sub1}` that was then replaced too.)
pub fn render_click_url(template: &str, click_id: &str, ref_id: Option<&str>, subs: &[Option<String>]) -> String {
    let sub = |i: usize| Some(subs.get(i).and_then(Option::as_deref).unwrap_or(""));
    let value = |name: &str| -> Option<&str> {
        match name {
            "click_id" => Some(click_id),
            "ref_id" => Some(ref_id.unwrap_or("")),
            "sub1" => sub(0),
            "sub2" => sub(1),
            "sub3" => sub(2),
            "sub4" => sub(3),
            "sub5" => sub(4),
            _ => None,
        }
    };
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}').and_then(|close| Some((close, value(&after[..close])?))) {
            Some((close, v)) => {
                out.push_str(&crate::input::encode_component(v));
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// What an inbound postback carries, for the checks.
#[derive(Clone)]
pub struct Inbound<'a> {
    /// GET or POST.
    pub method: &'a str,
    /// The raw query string.
    pub query: &'a str,
    /// Header lookup (lower-case names).
    pub header: &'a (dyn Fn(&str) -> Option<String> + Sync),
    /// The body.
    pub body: &'a [u8],
    /// The sender's address.
    pub remote: Option<IpAddr>,
}

/// Query parameters that carry credentials: checked, then removed before the adapter,
/// the raw fields or the rejects log see the request.
const SECRET_PARAMS: [&str; 2] = ["token", "signature"];

/// The query string without its credential parameters, otherwise byte for byte.
///
/// A parameter's name is compared decoded, as [`authenticate`] and the adapters read it:
/// `tok%65n=...` is a token. (Compared as written, it passed the check as a token and then
/// reached the adapter, the event's raw fields and the rejects log.)
pub fn strip_secret_params(query: &str) -> String {
    query
        .split('&')
        .filter(|pair| {
            !url::form_urlencoded::parse(pair.as_bytes()).any(|(name, _)| SECRET_PARAMS.contains(&name.as_ref()))
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn query_param(query: &str, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// Checks a postback's credentials; the error says what was wrong (never the secret).
pub fn authenticate(auth: &InboundAuth, req: &Inbound<'_>) -> Result<(), String> {
    match auth {
        InboundAuth::None => Ok(()),
        InboundAuth::Token(expected) => {
            let given = (req.header)("x-cashbackd-token").or_else(|| query_param(req.query, "token"));
            match given {
                None => Err("missing token: pass ?token= or the X-Cashbackd-Token header".into()),
                Some(t) if bool::from(t.as_bytes().ct_eq(expected.as_bytes())) => Ok(()),
                Some(_) => Err("wrong token".into()),
            }
        }
        InboundAuth::IpAllowList(ips) => match req.remote {
            Some(ip) if ips.contains(&ip) => Ok(()),
            Some(ip) => Err(format!("address {ip} is not in the network's allow-list")),
            None => Err("the sender's address is unknown".into()),
        },
        InboundAuth::Hmac(secret) => {
            let given = (req.header)("x-cashbackd-signature").or_else(|| query_param(req.query, "signature"));
            let Some(given) = given else {
                return Err("missing signature: pass X-Cashbackd-Signature or ?signature=".into());
            };
            let Ok(given) = hex::decode(given.trim()) else {
                return Err("signature is not hex".into());
            };
            let signed: Vec<u8> = if req.method.eq_ignore_ascii_case("POST") {
                req.body.to_vec()
            } else {
                strip_secret_params(req.query).into_bytes()
            };
            let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| "bad HMAC key".to_string())?;
            mac.update(&signed);
            mac.verify_slice(&given).map_err(|_| "signature does not match".to_string())
        }
    }
}

/// A refused postback, as kept for inspection.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Reject {
    /// The network.
    pub network_id: String,
    /// When.
    pub received_at: i64,
    /// GET or POST.
    pub method: String,
    /// The query, credentials removed.
    pub query: String,
    /// The body (first 4 KiB, lossy UTF-8).
    pub body: String,
    /// The sender.
    pub remote_addr: Option<String>,
    /// The status answered.
    pub status: i64,
    /// Why.
    pub reason: String,
}

/// Keeps a refused postback.
pub async fn record_reject(db: &Db, r: &Reject) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO postback_rejects (network_id, received_at, method, query, body, remote_addr, status, reason) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&r.network_id)
    .bind(r.received_at)
    .bind(&r.method)
    .bind(&r.query)
    .bind(&r.body)
    .bind(&r.remote_addr)
    .bind(r.status)
    .bind(&r.reason)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// The latest refused postbacks of a network.
pub async fn rejects(db: &Db, network: &str, limit: i64) -> Result<Vec<Reject>, sqlx::Error> {
    Ok(rejects_before(db, network, None, limit).await?.into_iter().map(|(_, r)| r).collect())
}

/// A network's refused postbacks older than the one with id `before` (none: the latest),
/// newest first, each with its id.
pub async fn rejects_before(
    db: &Db,
    network: &str,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<(i64, Reject)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT network_id, received_at, method, query, body, remote_addr, status, reason, id FROM postback_rejects \
         WHERE network_id = $1 AND id < $3 ORDER BY id DESC LIMIT $2",
    )
    .bind(network)
    .bind(limit)
    .bind(before.unwrap_or(i64::MAX))
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get(8)?,
                Reject {
                    network_id: r.try_get(0)?,
                    received_at: r.try_get(1)?,
                    method: r.try_get(2)?,
                    query: r.try_get(3)?,
                    body: r.try_get(4)?,
                    remote_addr: r.try_get(5)?,
                    status: r.try_get(6)?,
                    reason: r.try_get(7)?,
                },
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn click_urls_encode_each_value_exactly_once() {
        let subs = vec![Some("a b&c=d?e".to_string()), Some("%41 already".to_string()), Some("ünï €".to_string())];
        let url = render_click_url(
            "https://shop.example/p?cid={click_id}&s1={sub1}&s2={sub2}&s3={sub3}&s4={sub4}&r={ref_id}",
            "c1",
            Some("p/1"),
            &subs,
        );
        assert_eq!(
            url,
            "https://shop.example/p?cid=c1&s1=a%20b%26c%3Dd%3Fe&s2=%2541%20already&s3=%C3%BCn%C3%AF%20%E2%82%AC&s4=&r=p%2F1"
        );
        let parsed = url::Url::parse(&url).expect("valid URL");
        let pairs: Vec<(String, String)> = parsed.query_pairs().map(|(k, v)| (k.into(), v.into())).collect();
        assert_eq!(pairs[1], ("s1".into(), "a b&c=d?e".into()), "round trip");
        assert_eq!(pairs[2], ("s2".into(), "%41 already".into()), "never decoded twice");
        assert_eq!(pairs[3], ("s3".into(), "ünï €".into()));
    }

    #[test]
    fn a_value_is_never_read_again_as_template_text() {
        // Found by the fuzz target click_url: the user's ref_id completed `{sub1}`, which
        // was then replaced by sub1.
        let subs = vec![Some("x".to_string())];
        let url = render_click_url("https://shop.example/p?s={sub{ref_id}}&c={click_id}", "c{sub1}", Some("1"), &subs);
        assert_eq!(url, "https://shop.example/p?s={sub1}&c=c%7Bsub1%7D");
        assert_eq!(render_click_url("{{click_id}}{sub6}{sub01}{}{", "c", None, &[]), "{c}{sub6}{sub01}{}{");
        assert_eq!(render_click_url("{sub5}{sub1}", "c", None, &[None, None, None, None, Some("5".into())]), "5");
    }

    fn inbound<'a>(
        method: &'a str,
        query: &'a str,
        body: &'a [u8],
        header: &'a (dyn Fn(&str) -> Option<String> + Sync),
    ) -> Inbound<'a> {
        Inbound { method, query, header, body, remote: "10.0.0.1".parse().ok() }
    }

    #[test]
    fn tokens_signatures_and_addresses_are_checked() {
        let none = |_: &str| None;
        let token = InboundAuth::Token("s3cret".into());
        assert!(authenticate(&token, &inbound("GET", "tx=1&token=s3cret", b"", &none)).is_ok());
        assert_eq!(authenticate(&token, &inbound("GET", "tx=1&token=nope", b"", &none)), Err("wrong token".into()));
        assert!(
            authenticate(&token, &inbound("GET", "tx=1", b"", &none)).expect_err("missing").contains("missing token")
        );
        let header = |n: &str| (n == "x-cashbackd-token").then(|| "s3cret".to_string());
        assert!(authenticate(&token, &inbound("GET", "tx=1", b"", &header)).is_ok());

        let key = InboundAuth::Hmac("k3y".into());
        let mut mac = Hmac::<Sha256>::new_from_slice(b"k3y").expect("key");
        mac.update(b"tx=1&amount=10");
        let sig = hex::encode(mac.finalize().into_bytes());
        let q = format!("tx=1&amount=10&signature={sig}");
        assert!(authenticate(&key, &inbound("GET", &q, b"", &none)).is_ok());
        let tampered = format!("tx=1&amount=99&signature={sig}");
        assert_eq!(authenticate(&key, &inbound("GET", &tampered, b"", &none)), Err("signature does not match".into()));

        let ips = InboundAuth::IpAllowList(vec!["10.0.0.1".parse().expect("ip")]);
        assert!(authenticate(&ips, &inbound("GET", "", b"", &none)).is_ok());
        let other = Inbound { remote: "10.0.0.2".parse().ok(), ..inbound("GET", "", b"", &none) };
        assert!(authenticate(&ips, &other).expect_err("denied").contains("10.0.0.2"));
    }

    #[test]
    fn credentials_are_removed_from_what_is_passed_on() {
        assert_eq!(strip_secret_params("tx=1&token=s3cret&amount=2&signature=ab"), "tx=1&amount=2");
        assert_eq!(strip_secret_params("a=%20b"), "a=%20b");
        // Found by the fuzz target postback: a name the check decodes was compared as
        // written, so an encoded token passed the check and then reached the adapter.
        let none = |_: &str| None;
        let token = InboundAuth::Token("s3cret".into());
        assert!(authenticate(&token, &inbound("GET", "tok%65n=s3cret&tx=1", b"", &none)).is_ok());
        assert_eq!(strip_secret_params("tok%65n=s3cret&tx=1&%73ignature=ab&token&x=token"), "tx=1&x=token");
        assert!(!format!("{:?}", InboundAuth::Token("s3cret".into())).contains("s3cret"));
    }
}
