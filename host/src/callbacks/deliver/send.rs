//! The send phase: a [`Prepared`] request goes out (outbound safety checked, redirects
//! not followed, the answer read up to a cap) and comes back as [`Sent`]: the status or
//! the error, the latency, what the partner asked with `Retry-After`.

use super::Deliverer;
use super::claim::Claimed;
use super::render::{Prepared, RequestView};
use crate::callbacks::net;
use serde::Serialize;
use std::time::{Duration, Instant};

/// A response, as far as it was read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ResponseView {
    /// Status code.
    pub status: u16,
    /// Headers.
    #[schema(schema_with = super::render::header_pairs)]
    pub headers: Vec<(String, String)>,
    /// The start of the body (lossy UTF-8).
    pub body_excerpt: String,
    /// Whether the body was longer than what was read.
    pub truncated: bool,
}

/// One answered (or failed) request: the send phase's value.
pub(super) struct Sent {
    pub(super) delivery_id: i64,
    pub(super) endpoint_id: String,
    pub(super) attempt: i64,
    pub(super) started_at: i64,
    pub(super) latency_ms: i64,
    pub(super) logged: RequestView,
    pub(super) status: Option<u16>,
    pub(super) error: Option<String>,
    pub(super) excerpt: Option<String>,
    pub(super) retry_after_ms: Option<i64>,
    /// When the answer (or the failure) was in: from here until its record commits, a
    /// crash sends the callback again (`cashbackd_callback_unrecorded_seconds`).
    pub(super) answered: Instant,
}

impl Deliverer {
    pub(super) async fn send(&self, job: Claimed, prepared: Result<Prepared, String>) -> Sent {
        let started_at = self.inner.clock.now();
        let t0 = Instant::now();
        let mut sent = Sent {
            delivery_id: job.delivery_id,
            endpoint_id: job.endpoint_id,
            attempt: job.attempt,
            started_at,
            latency_ms: 0,
            logged: RequestView { method: String::new(), url: String::new(), headers: Vec::new(), body: None },
            status: None,
            error: None,
            excerpt: None,
            retry_after_ms: None,
            answered: t0,
        };
        let Prepared { request, logged, timeout } = match prepared {
            Ok(p) => p,
            Err(e) => {
                sent.error = Some(e);
                sent.answered = Instant::now();
                return sent;
            }
        };
        sent.logged = logged;
        // The worker keeps the status, the excerpt and Retry-After; not the headers.
        match self.exchange(&request, timeout, false).await {
            Ok((response, retry_after)) => {
                sent.status = Some(response.status);
                sent.excerpt = Some(response.body_excerpt);
                sent.retry_after_ms = retry_after;
            }
            Err(e) => sent.error = Some(e),
        }
        sent.answered = Instant::now();
        sent.latency_ms = sent.answered.duration_since(t0).as_millis() as i64;
        sent
    }

    /// Sends one request; returns the response (body capped; its headers if
    /// `with_headers`, for the tester) and its Retry-After in ms.
    pub(super) async fn exchange(
        &self,
        r: &RequestView,
        timeout: Duration,
        with_headers: bool,
    ) -> Result<(ResponseView, Option<i64>), String> {
        // The URL as checked is the one sent: parsed once, not again by reqwest.
        let url = net::check_url(&r.url, self.inner.config.allow_private)?;
        let method = match r.method.as_str() {
            "POST" => reqwest::Method::POST,
            "PUT" => reqwest::Method::PUT,
            _ => reqwest::Method::GET,
        };
        let mut builder = self.inner.client.request(method, url).timeout(timeout);
        for (k, v) in &r.headers {
            builder = builder.header(k, v);
        }
        if let Some(body) = &r.body {
            builder = builder.body(body.clone());
        }
        let response = builder.send().await.map_err(|e| describe(&e))?;
        let status = response.status().as_u16();
        let headers: Vec<(String, String)> = match with_headers {
            true => response
                .headers()
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect(),
            false => Vec::new(),
        };
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, self.inner.clock.now()));
        let read =
            tokio::time::timeout(timeout, net::read_capped(response, self.inner.config.max_response_bytes)).await;
        let (body, truncated) = read.unwrap_or((Vec::new(), true));
        let cut = &body[..body.len().min(self.inner.config.excerpt_bytes)];
        // PostgreSQL text cannot hold NUL: a partner's binary answer must not break the log.
        let excerpt = String::from_utf8_lossy(cut).replace('\0', "\u{fffd}");
        Ok((ResponseView { status, headers, body_excerpt: excerpt, truncated }, retry_after))
    }
}

/// A Retry-After value (seconds, or an HTTP date) as milliseconds from `now`.
pub fn parse_retry_after(value: &str, now: i64) -> Option<i64> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<i64>() {
        return Some(seconds.max(0).saturating_mul(1000));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    Some((at.timestamp_millis() - now).max(0))
}

/// A reqwest error as one line, without the URL (it may carry a signature).
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_request() {
        "request failed"
    } else {
        "failed"
    };
    let mut cause = String::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    if cause.is_empty() { kind.to_string() } else { format!("{kind}: {cause}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_as_seconds_or_a_date() {
        assert_eq!(parse_retry_after("120", 0), Some(120_000));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1_445_412_480_000 - 60_000), Some(60_000));
        assert_eq!(parse_retry_after("soon", 0), None);
    }
}
