//! `http.fetch` for network adapters: the host sends the request, so it decides.
//!
//! A request reaches only hosts the manifest declares, and only public addresses unless
//! the operator allows private ones (`plugin.http_allow_private`): the same guards as
//! partner callbacks ([`crate::outbound`]), because a declared host name can resolve to
//! 10.x or 169.254.169.254 as easily as a callback URL can. Redirects are not followed.
//! A credential named by the plugin is looked up in *its own* manifest and its secret
//! taken from *this call's* configuration, then added by the host (the plugin never holds
//! it); each call has a request budget, a timeout per request, and a cap on response
//! bodies. A refusal comes back to the plugin as `http-error.denied` naming what was
//! refused, and is remembered so the call's error can say so too.

use super::limits::{LimitHit, Limits};
use super::manifest::{Credential, Secrets};
use crate::outbound::{self, Reach};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// An adapter's request, as every contract version's `http.fetch` hands it over (each
/// version's bindings convert their own records to these, `wit/`): the HTTP capability
/// does not depend on the bindings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// GET, POST or PUT.
    pub method: Method,
    /// An absolute URL.
    pub url: String,
    /// Request headers.
    pub headers: Vec<(String, String)>,
    /// The body, if any.
    pub body: Option<Vec<u8>>,
    /// The name of a credential from the manifest for the host to inject.
    pub credential: Option<String>,
}

/// The request's method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// POST.
    Post,
    /// PUT.
    Put,
}

/// What came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Response headers.
    pub headers: Vec<(String, String)>,
    /// The body, capped.
    pub body: Vec<u8>,
}

/// Why a request was not made or not answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// Refused by the host: the host is not declared, a private address, the request cap.
    Denied(String),
    /// The request is malformed.
    InvalidRequest(String),
    /// No answer within the time limit.
    Timeout,
    /// The answer is over the cap (bytes).
    TooLarge(u64),
    /// The connection failed.
    Transport(String),
}

/// What one adapter call may reach over HTTP.
pub struct HttpGrant {
    pub(crate) hosts: Arc<Vec<String>>,
    pub(crate) credentials: Arc<BTreeMap<String, Credential>>,
    pub(crate) secrets: Secrets,
    pub(crate) client: HttpClient,
    pub(crate) requests: u32,
    /// Refusals during the call, for the call's error.
    pub(crate) denied: Vec<String>,
}

/// The host's outbound HTTP client, shared by all calls. Plugin calls are synchronous
/// (they run on blocking threads), so requests run on a small runtime of their own and
/// the calling thread waits for the answer.
#[derive(Clone)]
pub struct HttpClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    client: reqwest::Client,
    reach: Reach,
    runtime: Option<tokio::runtime::Runtime>,
    /// A fixture's recorded exchanges: answered in order instead of going out.
    replay: Option<std::sync::Mutex<std::collections::VecDeque<Exchange>>>,
}

/// A request a fixture expects an adapter to make, with the network's answer to it.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// `GET`, `POST` or `PUT`.
    pub method: String,
    /// The URL as the plugin asks for it (before the host adds a credential).
    pub url: String,
    /// The answer.
    pub response: Response,
}

impl Drop for ClientInner {
    fn drop(&mut self) {
        // Dropping a runtime inside another runtime's worker panics; this one may be
        // dropped from anywhere, so it is shut down without waiting.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl HttpClient {
    /// A client with its own runtime, reaching private addresses only if
    /// `allow_private`.
    pub fn new(allow_private: bool) -> std::io::Result<HttpClient> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("plugin-http")
            .enable_all()
            .build()?;
        let reach = Reach::plugins(allow_private);
        // No redirects (they could lead to a host the manifest does not declare, or to a
        // literal private address), no proxies, names resolved through the guard.
        let client = outbound::client_builder(reach)
            .user_agent(concat!("cashbackd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(std::io::Error::other)?;
        Ok(HttpClient { inner: Arc::new(ClientInner { client, reach, runtime: Some(runtime), replay: None }) })
    }

    /// A client that sends nothing: it answers the requests of one fixture from
    /// `exchanges`, in order, so that an adapter that imports over HTTP proves itself
    /// like any other plugin (`plugin::fixtures`). The host's checks still run first: a
    /// request to a host the manifest does not declare, or naming a credential it does
    /// not declare, is refused as in production.
    pub fn replay(exchanges: Vec<Exchange>) -> HttpClient {
        HttpClient {
            inner: Arc::new(ClientInner {
                client: reqwest::Client::new(),
                reach: Reach::plugins(false),
                runtime: None,
                replay: Some(std::sync::Mutex::new(exchanges.into())),
            }),
        }
    }

    /// The recorded answer to `request`, when this client replays a fixture.
    fn replayed(&self, request: &Request) -> Option<Result<Response, HttpError>> {
        let queue = self.inner.replay.as_ref()?;
        let mut queue = queue.lock().unwrap_or_else(|p| p.into_inner());
        let method = match request.method {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
        };
        Some(match queue.pop_front() {
            None => Err(HttpError::Transport(format!("fixture: no answer recorded for {method} {}", request.url))),
            Some(e) if !e.method.eq_ignore_ascii_case(method) || e.url != request.url => Err(HttpError::Transport(
                format!("fixture: expected {} {}, the adapter asked for {method} {}", e.method, e.url, request.url),
            )),
            Some(e) => Ok(e.response),
        })
    }

    fn send(&self, request: reqwest::Request, timeout: Duration, cap: u64) -> Result<Response, HttpError> {
        let Some(runtime) = &self.inner.runtime else {
            return Err(HttpError::Transport("HTTP client is shut down".into()));
        };
        let client = self.inner.client.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        runtime.spawn(async move {
            let result = tokio::time::timeout(timeout, read_response(client, request, cap)).await;
            let _ = tx.send(result.unwrap_or(Err(HttpError::Timeout)));
        });
        rx.recv().unwrap_or(Err(HttpError::Transport("request task ended".into())))
    }
}

async fn read_response(client: reqwest::Client, request: reqwest::Request, cap: u64) -> Result<Response, HttpError> {
    let mut resp = client.execute(request).await.map_err(|e| {
        if let Some(why) = outbound::refused(&e) {
            HttpError::Denied(why)
        } else if e.is_timeout() {
            HttpError::Timeout
        } else {
            HttpError::Transport(without_url(&e))
        }
    })?;
    if resp.content_length().is_some_and(|len| len > cap) {
        return Err(HttpError::TooLarge(cap));
    }
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| HttpError::Transport(without_url(&e)))? {
        if body.len() as u64 + chunk.len() as u64 > cap {
            return Err(HttpError::TooLarge(cap));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Response { status, headers, body })
}

/// reqwest's messages include the URL, which may carry a credential in its query.
fn without_url(e: &reqwest::Error) -> String {
    let mut e = e.to_string();
    if let Some(i) = e.find(" for url (") {
        e.truncate(i);
    }
    e
}

/// Whether `host[:port]` is covered by a manifest entry.
pub(crate) fn host_allowed(declared: &[String], host: &str, port: Option<u16>) -> bool {
    let host = host.to_ascii_lowercase();
    declared.iter().any(|entry| {
        let entry = entry.to_ascii_lowercase();
        let (pattern, want_port) = match entry.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() => (h.to_string(), p.parse::<u16>().ok()),
            _ => (entry.clone(), None),
        };
        let port_ok = want_port.is_none() || want_port == port;
        let host_ok = match pattern.strip_prefix("*.") {
            Some(suffix) => host.ends_with(&format!(".{suffix}")),
            None => host == pattern,
        };
        host_ok && port_ok
    })
}

impl HttpGrant {
    fn deny(&mut self, what: String) -> HttpError {
        self.denied.push(what.clone());
        HttpError::Denied(what)
    }

    fn build(&mut self, req: &Request, timeout: Duration, reach: Reach) -> Result<reqwest::Request, HttpError> {
        let mut url = url::Url::parse(&req.url).map_err(|e| HttpError::InvalidRequest(format!("bad URL: {e}")))?;
        if url.scheme() != "https" && url.scheme() != "http" {
            return Err(self.deny(format!("scheme {:?} (only http and https)", url.scheme())));
        }
        let host = url.host_str().unwrap_or_default().to_string();
        if !host_allowed(&self.hosts, &host, url.port_or_known_default()) {
            let declared = if self.hosts.is_empty() { "none".to_string() } else { self.hosts.join(", ") };
            return Err(self.deny(format!("http host {host:?} is not declared in the manifest (declared: {declared})")));
        }
        // A literal address never reaches the resolver's check: it is checked here.
        if let Some(literal) = url.host()
            && let Err(why) = outbound::check_host(&literal, reach)
        {
            return Err(self.deny(format!("http host {why}")));
        }
        let mut extra_header = None;
        if let Some(name) = &req.credential {
            let Some(cred) = self.credentials.get(name) else {
                return Err(self.deny(format!("credential {name:?} is not declared in the manifest")));
            };
            let Some(secret) = self.secrets.0.get(&cred.config) else {
                return Err(self.deny(format!("credential {name:?}: config field `{}` is not set", cred.config)));
            };
            if let Some(param) = &cred.query {
                url.query_pairs_mut().append_pair(param, secret);
            } else if let Some(header) = &cred.header {
                let value = cred.format.as_deref().unwrap_or("{secret}").replace("{secret}", secret);
                extra_header = Some((header.clone(), value));
            }
        }
        let method = match req.method {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
        };
        let mut out = reqwest::Request::new(method, url);
        *out.timeout_mut() = Some(timeout);
        for (k, v) in req.headers.iter().map(|(k, v)| (k.clone(), v.clone())).chain(extra_header) {
            let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| HttpError::InvalidRequest(format!("bad header name {k:?}")))?;
            let value = reqwest::header::HeaderValue::from_str(&v)
                .map_err(|_| HttpError::InvalidRequest(format!("bad value for header {k:?}")))?;
            out.headers_mut().append(name, value);
        }
        if let Some(body) = &req.body {
            *out.body_mut() = Some(body.clone().into());
        }
        Ok(out)
    }
}

impl HttpGrant {
    /// One `http.fetch` of the call this grant belongs to, within `limits`: the answer
    /// (or why there is none) for the plugin, or the limit the call hit, which ends it.
    pub(crate) fn fetch(&mut self, request: Request, limits: &Limits) -> Result<Result<Response, HttpError>, LimitHit> {
        self.requests += 1;
        if self.requests > limits.max_http_requests {
            return Err(LimitHit::HttpRequests { cap: limits.max_http_requests });
        }
        let timeout = Duration::from_millis(limits.http_timeout_ms);
        let reach = self.client.inner.reach;
        let built = match self.build(&request, timeout, reach) {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        if let Some(answer) = self.client.replayed(&request) {
            let cap = limits.max_http_response_bytes;
            return Ok(
                answer.and_then(|r| if r.body.len() as u64 > cap { Err(HttpError::TooLarge(cap)) } else { Ok(r) })
            );
        }
        tracing::debug!(method = %built.method(), host = built.url().host_str().unwrap_or(""), "plugin http request");
        let answer = self.client.send(built, timeout, limits.max_http_response_bytes);
        if let Err(HttpError::Denied(why)) = &answer {
            // The resolver refused the name: the call's error says so, as for a host the
            // manifest does not declare.
            self.denied.push(format!("http host {why}"));
        }
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::host_allowed;

    #[test]
    fn only_declared_hosts_are_allowed() {
        let declared = vec!["api.net.example".to_string(), "*.cdn.example".to_string(), "127.0.0.1:8080".to_string()];
        assert!(host_allowed(&declared, "api.net.example", Some(443)));
        assert!(host_allowed(&declared, "API.NET.EXAMPLE", Some(443)));
        assert!(host_allowed(&declared, "eu.cdn.example", Some(443)));
        assert!(!host_allowed(&declared, "cdn.example", Some(443)));
        assert!(!host_allowed(&declared, "api.net.example.evil.example", Some(443)));
        assert!(!host_allowed(&declared, "evilapi.net.example", Some(443)));
        assert!(host_allowed(&declared, "127.0.0.1", Some(8080)));
        assert!(!host_allowed(&declared, "127.0.0.1", Some(8081)));
        assert!(!host_allowed(&[], "api.net.example", Some(443)));
    }
}
