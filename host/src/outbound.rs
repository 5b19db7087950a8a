//! Outbound safety, shared by everything the server fetches on someone else's behalf:
//! partner callbacks (a URL typed by an operator or an admin-token holder) and plugins'
//! `http.fetch` (a host a plugin's manifest or config names). Without a check either
//! would be a way into the database, the cloud metadata service or anything else on the
//! private network. So, unless the operator allows it explicitly (each user of this
//! module has its own setting, named in every refusal):
//!
//! - a URL whose host is an IP literal must be a public address ([`check_url`]); this has
//!   to be checked before sending, because a literal never reaches a DNS resolver;
//! - a host name is resolved by [`GuardedResolver`], reqwest's DNS hook, which drops every
//!   non-public address and fails when none is left: the check applies to the addresses
//!   actually connected to, so a name that resolves to 127.0.0.1 (or is re-pointed there
//!   after it was checked) is refused too;
//! - redirects are never followed ([`client_builder`]): a `Location` could name a literal
//!   private address, which no resolver would see; the caller gets the 3xx instead;
//! - proxies from the environment are ignored: through a proxy the proxy resolves the
//!   name, and the resolver's check would be bypassed.

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

/// What a client may reach, and the setting that would allow private addresses (named in
/// refusals, so the operator knows where to look).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reach {
    /// Private, loopback and link-local addresses are allowed too.
    pub allow_private: bool,
    /// The setting that allows them, as an operator would set it.
    pub setting: &'static str,
}

impl Reach {
    /// Partner callbacks: `callbacks.allow_private` (`--callbacks-allow-private`).
    pub fn callbacks(allow_private: bool) -> Reach {
        Reach { allow_private, setting: "--callbacks-allow-private (callbacks.allow_private)" }
    }

    /// Plugins' `http.fetch`: `plugin.http_allow_private`.
    pub fn plugins(allow_private: bool) -> Reach {
        Reach { allow_private, setting: "plugin.http_allow_private" }
    }
}

/// Whether `ip` is a public unicast address (not loopback, private, link-local, CGNAT,
/// unique-local, multicast, unspecified, documentation or broadcast).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return public_v4(v4);
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x64 && s[1] == 0xff9b) // NAT64 can reach IPv4 private space
                || s[..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible ::a.b.c.d (deprecated)
        }
    }
}

fn public_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // CGNAT 100.64.0.0/10
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking 198.18.0.0/15
        || o[0] >= 240)
}

/// Why an address was refused, naming the setting that would allow it.
fn refusal(what: &str, reach: Reach) -> String {
    format!(
        "{what} is a private, loopback or link-local address: refused (the operator can allow it with {})",
        reach.setting
    )
}

/// Checks an IP-literal host (`url::Host`) before anything is sent; a domain passes here
/// and is checked by [`GuardedResolver`] when it is resolved.
pub fn check_host(host: &url::Host<&str>, reach: Reach) -> Result<(), String> {
    let ip = match host {
        url::Host::Ipv4(v4) => IpAddr::V4(*v4),
        url::Host::Ipv6(v6) => IpAddr::V6(*v6),
        url::Host::Domain(_) => return Ok(()),
    };
    if reach.allow_private || is_public(ip) { Ok(()) } else { Err(refusal(&ip.to_string(), reach)) }
}

/// Checks a URL before anything is sent: http or https, a host, and, for an IP-literal
/// host, a public address unless private ones are allowed. (The URL parser reads every
/// IPv4 spelling, `2130706433` and `0x7f.1` included, as the address it means.)
pub fn check_url(url: &str, reach: Reach) -> Result<url::Url, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("not a valid URL ({e})"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("scheme {:?}: only http and https", parsed.scheme()));
    }
    let Some(host) = parsed.host() else { return Err("the URL has no host".into()) };
    check_host(&host, reach)?;
    Ok(parsed)
}

/// reqwest's DNS hook: resolves with the system resolver, then keeps only the addresses
/// the client may reach.
#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver {
    /// What may be reached.
    pub reach: Reach,
}

/// A resolution refused by [`GuardedResolver`]; found in a request error's sources by
/// [`refused`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let reach = self.reach;
        Box::pin(async move {
            let host = name.as_str().to_string();
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let kept: Vec<SocketAddr> =
                all.iter().copied().filter(|a| reach.allow_private || is_public(a.ip())).collect();
            if kept.is_empty() {
                let why = if all.is_empty() {
                    format!("{host} does not resolve")
                } else {
                    let shown: Vec<String> = all.iter().map(|a| a.ip().to_string()).collect();
                    format!(
                        "{host} resolves only to private, loopback or link-local addresses ({}): refused \
                         (the operator can allow it with {})",
                        shown.join(", "),
                        reach.setting
                    )
                };
                return Err(Box::new(Refused(why)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(kept.into_iter()) as Addrs)
        })
    }
}

/// The refusal of [`GuardedResolver`] among an error's sources, if that is why a request
/// failed (reqwest's own message says only "error sending request").
pub fn refused(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(r) = e.downcast_ref::<Refused>() {
            return Some(r.0.clone());
        }
        source = e.source();
    }
    None
}

/// A reqwest client builder with the guards above: no redirects, no proxies from the
/// environment, the guarded resolver. The caller adds timeouts and a user agent.
pub fn client_builder(reach: Reach) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(Arc::new(GuardedResolver { reach }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO: Reach = Reach { allow_private: false, setting: "x.allow_private" };
    const YES: Reach = Reach { allow_private: true, setting: "x.allow_private" };

    #[test]
    fn private_loopback_and_link_local_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "::",
            "::127.0.0.1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
        ] {
            assert!(!is_public(ip.parse().expect("ip")), "{ip}");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700::1111"] {
            assert!(is_public(ip.parse().expect("ip")), "{ip}");
        }
    }

    #[test]
    fn ip_literal_urls_are_checked_before_any_request_in_every_spelling() {
        let refused = check_url("http://169.254.169.254/latest", NO).expect_err("refused");
        assert!(refused.contains("private") && refused.contains("x.allow_private"), "{refused}");
        for url in [
            "http://[::1]:8080/",
            "http://127.1/",
            "http://2130706433/",
            "http://0x7f.0.0.1/",
            "http://0177.0.0.1/",
            "http://[::ffff:7f00:1]/",
            "http://10.0.0.1:5432/",
        ] {
            assert!(check_url(url, NO).is_err(), "{url} must be refused");
        }
        assert!(check_url("http://127.0.0.1:8080/", YES).is_ok());
        assert!(check_url("ftp://example.com/", YES).expect_err("scheme").contains("scheme"));
        assert!(check_url("https://partner.example/cb", NO).is_ok());
        assert!(check_url("https://8.8.8.8/cb", NO).is_ok());
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused_unless_allowed() {
        let name: Name = "localhost".parse().expect("name");
        let refused = GuardedResolver { reach: NO }.resolve(name).await.err().expect("refused");
        let why = refused.to_string();
        assert!(why.contains("localhost resolves only to") && why.contains("x.allow_private"), "{why}");
        let name: Name = "localhost".parse().expect("name");
        let addrs: Vec<SocketAddr> = GuardedResolver { reach: YES }.resolve(name).await.expect("allowed").collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()) && !addrs.is_empty(), "{addrs:?}");
    }
}
