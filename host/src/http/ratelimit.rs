//! Rate limits of the public ingress (`[ingress]` in the configuration): tracked clicks
//! per client address, postbacks per client address and per network. A request over a
//! limit is answered before anything else is done for it (no database read, no body
//! read, no rejects-log row: a flood must not become writes) with 429, a JSON reason
//! naming the limit and its rate, and `Retry-After`; it is counted in
//! `cashbackd_ingress_throttled_total`.
//!
//! The limiters are governor's GCRA buckets, one per key, in memory: limits are per
//! process (N replicas let N times as much through). Keys whose bucket has refilled are
//! dropped every [`CLEANUP_EVERY`], so memory follows the senders active within a
//! bucket's refill time, not every sender ever seen; an IPv6 client counts by its /64
//! (one host owns a whole /64 and could otherwise take a fresh key per request), and a
//! network is keyed by a hash of its name (a sender chooses the path: its length must
//! not decide the memory a key takes).
//!
//! The client address is the connection's peer, unless the peer is a trusted proxy
//! (`ingress.trusted_proxies`): then it is the last address of `X-Forwarded-For` that is
//! not itself a trusted proxy. The header is never read from anyone else: a client could
//! otherwise pick a fresh address per request.

use crate::config::IngressSettings;
use axum::RequestExt as _;
use axum::extract::{ConnectInfo, MatchedPath, RawPathParams, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often buckets that have refilled are forgotten.
pub const CLEANUP_EVERY: Duration = Duration::from_secs(10);

/// Networks remembered by name for the metrics' labels; past this, a network is
/// labelled `unknown` (labels must stay bounded).
const MAX_KNOWN_NETWORKS: usize = 10_000;

/// A rate: so many per second, so many at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Per second.
    pub per_second: u32,
    /// At once.
    pub burst: u32,
}

impl Rate {
    /// The quota, or none if this limit is off (a rate of 0).
    fn quota(self) -> Option<Quota> {
        Some(Quota::per_second(NonZeroU32::new(self.per_second)?).allow_burst(NonZeroU32::new(self.burst.max(1))?))
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "at most {} per second (bursts of {})", self.per_second, self.burst)
    }
}

struct Keyed<K: std::hash::Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
    rate: Rate,
}

impl<K: std::hash::Hash + Eq + Clone> Keyed<K> {
    fn new(rate: Rate) -> Option<Keyed<K>> {
        Some(Keyed { limiter: DefaultKeyedRateLimiter::keyed(rate.quota()?), rate })
    }

    /// `Err(wait)` if `key` is over its rate.
    fn check(&self, key: &K) -> Result<(), Duration> {
        self.limiter.check_key(key).map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// One network's own limit (`[ingress.networks.ID]`): a bucket of its own, or none.
struct Own {
    limiter: Option<DefaultDirectRateLimiter>,
    rate: Rate,
}

/// Which kind of ingress a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Click,
    Postback,
}

/// A request refused by a limit.
#[derive(Debug)]
pub struct Throttled {
    /// `address` or `network`.
    pub limit: &'static str,
    /// The reason, with the limit's rate.
    pub message: String,
    /// When the sender may try again.
    pub retry_after: Duration,
}

impl IntoResponse for Throttled {
    fn into_response(self) -> Response {
        let seconds = self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0);
        let body = serde_json::json!({ "error": { "code": "rate_limited", "message": self.message } });
        let mut response = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        response
    }
}

/// The ingress limits of one process.
pub struct IngressLimiter {
    clicks_by_address: Option<Keyed<IpAddr>>,
    postbacks_by_address: Option<Keyed<IpAddr>>,
    postbacks_by_network: Option<Keyed<u64>>,
    networks: HashMap<String, Own>,
    trusted: Vec<ipnet::IpNet>,
    hasher: RandomState,
    known: Mutex<HashSet<String>>,
    started: Instant,
    cleaned_at_ms: AtomicU64,
}

impl std::fmt::Debug for IngressLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngressLimiter")
            .field("clicks_by_address", &self.clicks_by_address.as_ref().map(|k| k.rate))
            .field("postbacks_by_address", &self.postbacks_by_address.as_ref().map(|k| k.rate))
            .field("postbacks_by_network", &self.postbacks_by_network.as_ref().map(|k| k.rate))
            .field("trusted", &self.trusted)
            .finish()
    }
}

impl IngressLimiter {
    /// The limiter the settings describe; none if `ingress.rate_limit` is off. (The
    /// settings are checked when loaded; an entry of `trusted_proxies` that does not parse
    /// is not trusted.)
    pub fn from_settings(s: &IngressSettings) -> Option<Arc<IngressLimiter>> {
        if !s.rate_limit {
            return None;
        }
        let rate = |per_second, burst| Rate { per_second, burst };
        let networks = s
            .networks
            .iter()
            .map(|(id, n)| {
                let rate = rate(n.postback_rate, n.postback_burst);
                (id.clone(), Own { limiter: rate.quota().map(DefaultDirectRateLimiter::direct), rate })
            })
            .collect::<HashMap<_, _>>();
        Some(Arc::new(IngressLimiter {
            clicks_by_address: Keyed::new(rate(s.click_rate_per_address, s.click_burst_per_address)),
            postbacks_by_address: Keyed::new(rate(s.postback_rate_per_address, s.postback_burst_per_address)),
            postbacks_by_network: Keyed::new(rate(s.postback_rate_per_network, s.postback_burst_per_network)),
            known: Mutex::new(networks.keys().cloned().collect()),
            networks,
            trusted: s.trusted_proxies.iter().filter_map(|p| crate::config::parse_net(p)).collect(),
            hasher: RandomState::new(),
            started: Instant::now(),
            cleaned_at_ms: AtomicU64::new(0),
        }))
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The client's address: the peer, or, if the peer is a trusted proxy, the last
    /// address in `X-Forwarded-For` that is not a trusted proxy (the one the nearest
    /// untrusted hop connected from; entries to its left are the client's to write).
    pub fn client_address(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.trusted(peer) {
            return peer;
        }
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            // Unreadable: what is left of it cannot be believed either.
            let Some(ip) = parse_hop(hop) else { break };
            client = canonical(ip);
            if !self.trusted(client) {
                break;
            }
        }
        client
    }

    /// Whether a request may go on.
    fn check(&self, route: Route, client: Option<IpAddr>, network: &str) -> Result<(), Throttled> {
        self.housekeeping();
        let (by_address, what) = match route {
            Route::Click => (&self.clicks_by_address, "clicks"),
            Route::Postback => (&self.postbacks_by_address, "postbacks"),
        };
        // The address first: a sender over its own limit does not use up its network's.
        if let (Some(keyed), Some(client)) = (by_address, client)
            && let Err(wait) = keyed.check(&address_key(client))
        {
            return Err(Throttled {
                limit: "address",
                message: format!(
                    "too many {what} from this client address: {} per client address \
                     (ingress.{}_rate_per_address); retry after {} s",
                    keyed.rate,
                    &what[..what.len() - 1],
                    whole_seconds(wait)
                ),
                retry_after: wait,
            });
        }
        if route == Route::Click {
            return Ok(());
        }
        let (verdict, rate, key) = match self.networks.get(network) {
            Some(own) => {
                let verdict = match &own.limiter {
                    Some(l) => l.check().map_err(|n| n.wait_time_from(DefaultClock::default().now())),
                    None => Ok(()),
                };
                (verdict, own.rate, format!("ingress.networks.{network}.postback_rate"))
            }
            None => match &self.postbacks_by_network {
                Some(keyed) => (
                    keyed.check(&self.hasher.hash_one(network)),
                    keyed.rate,
                    "ingress.postback_rate_per_network".to_string(),
                ),
                None => return Ok(()),
            },
        };
        verdict.map_err(|wait| Throttled {
            limit: "network",
            message: format!(
                "too many postbacks for network {network:?}: {rate} per network ({key}); retry after {} s",
                whole_seconds(wait)
            ),
            retry_after: wait,
        })
    }

    /// Remembers that `network` exists, so that its refusals are counted under its name.
    pub fn note_network(&self, network: &str) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() < MAX_KNOWN_NETWORKS && !known.contains(network) {
            known.insert(network.to_string());
        }
    }

    /// `network` as a metrics label: its name once it is known to exist, else `unknown`.
    fn label(&self, network: &str) -> String {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.contains(network) { network.to_string() } else { "unknown".to_string() }
    }

    /// Forgets the buckets that have refilled, at most once per [`CLEANUP_EVERY`].
    fn housekeeping(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.cleaned_at_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < CLEANUP_EVERY.as_millis() as u64
            || self.cleaned_at_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err()
        {
            return;
        }
        self.forget_refilled();
    }

    /// Forgets every bucket that has refilled (what [`CLEANUP_EVERY`] does).
    pub fn forget_refilled(&self) {
        for keyed in [&self.clicks_by_address, &self.postbacks_by_address].into_iter().flatten() {
            keyed.limiter.retain_recent();
            keyed.limiter.shrink_to_fit();
        }
        if let Some(keyed) = &self.postbacks_by_network {
            keyed.limiter.retain_recent();
            keyed.limiter.shrink_to_fit();
        }
    }

    /// Keys held: clients (clicks and postbacks) and networks. For tests and debugging.
    pub fn keys(&self) -> usize {
        let clients = [&self.clicks_by_address, &self.postbacks_by_address]
            .into_iter()
            .flatten()
            .map(|k| k.limiter.len())
            .sum::<usize>();
        clients + self.postbacks_by_network.as_ref().map_or(0, |k| k.limiter.len())
    }
}

fn whole_seconds(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The bucket an address counts in: itself (IPv4), or its /64 (IPv6).
fn address_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

/// One `X-Forwarded-For` entry: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]:80`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| hop.strip_prefix('[')?.strip_suffix(']')?.parse().ok())
}

/// The middleware on `/c/{link}` and `/postback/{network}`.
pub(super) async fn guard(State(limiter): State<Arc<IngressLimiter>>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = match request.extensions().get::<MatchedPath>().map(MatchedPath::as_str) {
        Some(p) if p.starts_with("/postback/") => Route::Postback,
        Some(p) if p.starts_with("/c/") => Route::Click,
        _ => return next.run(request).await,
    };
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    // Without a peer (a server not started with connect info) there is no address to
    // limit by; the network limit still applies.
    let client = peer.map(|p| limiter.client_address(p, request.headers()));
    let network = match route {
        Route::Postback => request
            .extract_parts::<RawPathParams>()
            .await
            .ok()
            .and_then(|params| params.iter().find(|(k, _)| *k == "network").map(|(_, v)| v.to_string()))
            .unwrap_or_default(),
        Route::Click => String::new(),
    };
    if let Err(refused) = limiter.check(route, client, &network) {
        match route {
            Route::Click => {
                crate::metrics::click("throttled");
                crate::metrics::ingress_throttled("click", refused.limit, "none");
            }
            Route::Postback => {
                let label = limiter.label(&network);
                crate::metrics::postback(&label, "throttled", started.elapsed());
                crate::metrics::ingress_throttled("postback", refused.limit, &label);
            }
        }
        return refused.into_response();
    }
    request.extensions_mut().insert(limiter);
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(trusted: &[&str]) -> Arc<IngressLimiter> {
        let mut s = crate::config::Settings::default().ingress;
        s.trusted_proxies = trusted.iter().map(|t| t.to_string()).collect();
        s.click_rate_per_address = 1;
        s.click_burst_per_address = 2;
        s.networks.insert("big".into(), crate::config::NetworkRateSettings { postback_rate: 0, postback_burst: 0 });
        IngressLimiter::from_settings(&s).expect("on")
    }

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn forwarded_for_is_believed_only_from_a_trusted_proxy() {
        let l = limiter(&["10.0.0.0/8"]);
        // From an untrusted peer the header is ignored.
        assert_eq!(l.client_address(ip("203.0.113.9"), &headers(&["198.51.100.1"])), ip("203.0.113.9"));
        // From a trusted one: the last entry that is not a trusted proxy.
        let chain = headers(&["6.6.6.6, 198.51.100.1", "10.1.1.1"]);
        assert_eq!(l.client_address(ip("10.0.0.2"), &chain), ip("198.51.100.1"));
        assert_eq!(l.client_address(ip("10.0.0.2"), &headers(&["[2001:db8::1]:443"])), ip("2001:db8::1"));
        assert_eq!(l.client_address(ip("10.0.0.2"), &headers(&["198.51.100.1:8080"])), ip("198.51.100.1"));
        // Garbage stops the walk at the last hop that could be read.
        assert_eq!(l.client_address(ip("10.0.0.2"), &headers(&["1.1.1.1, bogus, 10.9.9.9"])), ip("10.9.9.9"));
        // No header: the proxy itself.
        assert_eq!(l.client_address(ip("10.0.0.2"), &HeaderMap::new()), ip("10.0.0.2"));
        // IPv4-mapped peers count as IPv4.
        assert_eq!(l.client_address(ip("::ffff:10.0.0.2"), &headers(&["198.51.100.7"])), ip("198.51.100.7"));
        // Nothing trusted: never read.
        let none = limiter(&[]);
        assert_eq!(none.client_address(ip("127.0.0.1"), &headers(&["198.51.100.1"])), ip("127.0.0.1"));
    }

    #[test]
    fn an_ipv6_client_counts_by_its_64() {
        assert_eq!(address_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(address_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        let l = limiter(&[]);
        for i in 0..2 {
            assert!(l.check(Route::Click, Some(ip(&format!("2001:db8:0:1::{i}"))), "").is_ok());
        }
        let refused = l.check(Route::Click, Some(ip("2001:db8:0:1::ffff")), "").expect_err("same /64");
        assert_eq!(refused.limit, "address");
        assert!(refused.message.contains("at most 1 per second (bursts of 2)"), "{}", refused.message);
        assert!(refused.message.contains("ingress.click_rate_per_address"), "{}", refused.message);
        assert!(l.check(Route::Click, Some(ip("2001:db8:0:2::1")), "").is_ok(), "another /64 has its own bucket");
    }

    #[test]
    fn refilled_buckets_are_forgotten() {
        let mut s = crate::config::Settings::default().ingress;
        s.click_rate_per_address = 1000;
        s.click_burst_per_address = 1;
        let l = IngressLimiter::from_settings(&s).expect("on");
        for i in 0..50u8 {
            let _ = l.check(Route::Click, Some(IpAddr::from([192, 0, 2, i])), "");
        }
        assert_eq!(l.keys(), 50);
        // A bucket of 1 at 1000/s refills in 1 ms.
        std::thread::sleep(Duration::from_millis(20));
        l.forget_refilled();
        assert_eq!(l.keys(), 0, "memory follows the active senders only");
    }

    #[test]
    fn a_network_of_its_own_may_be_unlimited() {
        let l = limiter(&[]);
        for _ in 0..5_000 {
            assert!(l.check(Route::Postback, None, "big").is_ok());
        }
        let mut s = crate::config::Settings::default().ingress;
        s.postback_rate_per_network = 1;
        s.postback_burst_per_network = 1;
        let l = IngressLimiter::from_settings(&s).expect("on");
        assert!(l.check(Route::Postback, None, "net").is_ok());
        let refused = l.check(Route::Postback, None, "net").expect_err("over");
        assert_eq!(refused.limit, "network");
        assert!(
            refused.message.contains("network \"net\"") && refused.message.contains("retry after 1 s"),
            "{}",
            refused.message
        );
        assert!(l.check(Route::Postback, None, "other").is_ok(), "each network has its own bucket");
        s.rate_limit = false;
        assert!(IngressLimiter::from_settings(&s).is_none());
    }
}
