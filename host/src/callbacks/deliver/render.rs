//! The render-and-sign phase: a [`Claimed`] delivery becomes a [`Prepared`] request:
//! the endpoint's URL template filled (each value encoded once), the static parameters,
//! the HMAC query signature (GET) or the JSON body with Standard Webhooks headers (POST),
//! and the same request with its signatures masked, for the log.

use super::claim::{Claimed, Subject};
use super::{Deliverer, message_id};
use crate::callbacks::sign::{self, Secret};
use crate::callbacks::template::{Template, Values, append_params};
use crate::callbacks::{Endpoint, Method};
use crate::outbox::ChangeKind;
use serde::Serialize;
use std::time::Duration;

/// The OpenAPI schema of headers as `[name, value]` pairs. utoipa's own schema of a tuple
/// closes it with `items: false`, which generated clients (openapi-python-client) cannot
/// read; two strings say the same.
pub(crate) fn header_pairs() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    let text = || ObjectBuilder::new().schema_type(Type::String);
    let pair = ArrayBuilder::new()
        .prefix_items([text(), text()])
        .items(text())
        .min_items(Some(2))
        .max_items(Some(2))
        .description(Some("[name, value]"));
    ArrayBuilder::new().items(pair).build().into()
}

/// A request as sent (signatures included: for the tester) or as logged (masked).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RequestView {
    /// GET or POST.
    pub method: String,
    /// The URL.
    pub url: String,
    /// Headers we set.
    #[schema(schema_with = header_pairs)]
    pub headers: Vec<(String, String)>,
    /// The body (POST).
    pub body: Option<String>,
}

/// A request ready to send: the render phase's value.
pub(super) struct Prepared {
    /// Exactly as sent, signatures included.
    pub(super) request: RequestView,
    /// As logged: signatures masked.
    pub(super) logged: RequestView,
    pub(super) timeout: Duration,
}

impl Deliverer {
    /// The values of a delivery, by placeholder.
    pub(super) fn values(job: &Claimed) -> Values {
        let mut v = Values::new();
        let mut put = |k: &'static str, val: Option<String>| {
            if let Some(val) = val {
                v.insert(k, val);
            }
        };
        put("delivery_id", Some(message_id(job.delivery_id)));
        put("timestamp", Some((job.change_at / 1000).to_string()));
        let s = match &job.subject {
            Subject::Conversion(s) => s,
            Subject::Payout(p) => {
                // A payout's own values, and the common ones; a conversion's (order,
                // click, merchant) are empty.
                put("type", Some("payout.changed".into()));
                put("status", Some(p.status.as_str().into()));
                put("user_id", Some(p.user_id.clone()));
                put("currency", Some(p.currency.clone()));
                put("reason", p.reason.clone());
                put("payout_id", Some(p.payout_id.clone()));
                put("payout_status", Some(p.status.as_str().into()));
                put("payout_amount", Some(crate::callbacks::decimal(p.amount, &p.currency)));
                put("payout_amount_minor", Some(p.amount.to_string()));
                put("payout_reference", p.reference.clone());
                return v;
            }
        };
        // A click's CREATED has no conversion yet: no order, amounts, cashback or status
        // of ours. Those render empty (an absent value), never as a made-up 0.00 that a
        // partner could book.
        let conversion = s.kind == ChangeKind::Conversion;
        put("type", Some(if conversion { "conversion.changed" } else { "click.created" }.into()));
        let of_conversion = |val: String| Some(val).filter(|_| conversion);
        put("state", Some(s.state.as_str().into()));
        put("status", of_conversion(s.status.as_str().into()));
        put("click_id", s.click_id.clone());
        put("ref_id", job.ref_id.clone());
        put("user_id", s.user_id.clone());
        put("payout", of_conversion(crate::callbacks::decimal(s.cashback, &s.currency)));
        put("payout_minor", of_conversion(s.cashback.to_string()));
        put("amount", of_conversion(crate::callbacks::decimal(s.amount, &s.currency)));
        put("commission", of_conversion(crate::callbacks::decimal(s.commission, &s.currency)));
        put("currency", of_conversion(s.currency.clone()));
        put("transaction_id", of_conversion(s.transaction_id.clone()));
        put("order_id", s.order_id.clone());
        put("event", Some(s.event_type.clone()));
        put("reason", s.reason.clone());
        put("line_id", Some(s.line_ids.join(",")).filter(|l| !l.is_empty()));
        put("reward_delay_days", s.reward_delay_days.map(|d| d.to_string()));
        put("merchant_ref", job.merchant_ref.clone());
        put("merchant_name", job.merchant_name.clone());
        put("conversion_id", of_conversion(crate::conversions::conversion_id(&s.network_id, &s.transaction_id)));
        put("network", Some(s.network_id.clone()).filter(|n| !n.is_empty()));
        for (i, name) in ["sub1", "sub2", "sub3", "sub4", "sub5"].into_iter().enumerate() {
            put(name, job.subs[i].clone());
        }
        v
    }

    /// The request of an attempt: the endpoint's plugin's when it has one
    /// (`plugin.rs`; its error fails the attempt), else the built-in template's.
    pub(super) async fn prepare_any(
        &self,
        endpoint: &Endpoint,
        template: &Template,
        job: &Claimed,
    ) -> Result<Prepared, String> {
        let Some(active) = &endpoint.plugin else { return Ok(self.prepare(endpoint, template, job)) };
        let values = Self::values(job);
        let change = super::plugin::ChangeInput {
            snapshot: match &job.subject {
                Subject::Conversion(s) => Some(&**s),
                Subject::Payout(_) => None,
            },
            delivery_id: job.delivery_id,
            attempt: job.attempt,
            changed_at: job.change_at,
            now: self.inner.clock.now(),
        };
        let url = template.render(&values);
        let (request, logged) =
            super::plugin::render(self.inner.plugins.get(), &self.inner.db, endpoint, active, url, &values, change)
                .await?;
        Ok(Prepared { request, logged, timeout: Duration::from_millis(endpoint.spec.timeout_ms.max(1) as u64) })
    }

    pub(super) fn prepare(&self, endpoint: &Endpoint, template: &Template, job: &Claimed) -> Prepared {
        let spec = &endpoint.spec;
        let values = Self::values(job);
        let url = template.render(&values);
        let timeout = Duration::from_millis(spec.timeout_ms.max(1) as u64);
        match spec.method {
            Method::Get => {
                let url = append_params(&url, &spec.params);
                let (url, logged_url) = match spec.secrets.first() {
                    Some(secret) => {
                        let signed = sign::sign_get(&url, secret, &spec.signature_param);
                        let masked = sign::mask_signature_param(&signed, &spec.signature_param);
                        (signed, masked)
                    }
                    None => (url.clone(), url),
                };
                let request = RequestView { method: "GET".into(), url, headers: Vec::new(), body: None };
                let logged = RequestView { url: logged_url, ..request.clone() };
                Prepared { request, logged, timeout }
            }
            Method::Post => {
                let body = post_body(job, &values, &spec.params).to_string();
                let id = message_id(job.delivery_id);
                let ts = self.inner.clock.now() / 1000;
                let (headers, logged_headers) = webhook_headers(&spec.secrets, &id, ts, &body);
                let request = RequestView { method: "POST".into(), url: url.clone(), headers, body: Some(body) };
                let logged = RequestView { headers: logged_headers, ..request.clone() };
                Prepared { request, logged, timeout }
            }
        }
    }
}

pub(super) fn post_body(
    job: &Claimed,
    v: &Values,
    params: &std::collections::BTreeMap<String, String>,
) -> serde_json::Value {
    let get = |k: &str| v.get(k).cloned();
    let s = match &job.subject {
        Subject::Conversion(s) => s,
        Subject::Payout(p) => {
            return serde_json::json!({
                "type": "payout.changed",
                "id": message_id(job.delivery_id),
                "data": {
                    "payout_id": p.payout_id,
                    "user_id": p.user_id,
                    "status": p.status,
                    "amount": get("payout_amount"),
                    "amount_minor": p.amount,
                    "currency": p.currency,
                    "reference": p.reference,
                    "reason": p.reason,
                    "requested_at": p.requested_at,
                    "changed_at": job.change_at,
                },
                "params": params,
            });
        }
    };
    // A click's CREATED: the same shape, its conversion's fields null (see `values`).
    let (kind, of_conversion) = match s.kind {
        ChangeKind::Conversion => ("conversion.changed", true),
        ChangeKind::Click => ("click.created", false),
    };
    let minor = |n: i64| Some(n).filter(|_| of_conversion);
    serde_json::json!({
        "type": kind,
        "id": message_id(job.delivery_id),
        "data": {
            "conversion_id": get("conversion_id"),
            "state": s.state,
            "status": get("status"),
            "payout": get("payout"),
            "payout_minor": minor(s.cashback),
            "amount_minor": minor(s.amount),
            "currency": get("currency"),
            "click_id": s.click_id,
            "ref_id": job.ref_id,
            "user_id": s.user_id,
            "subs": { "sub1": job.subs[0], "sub2": job.subs[1], "sub3": job.subs[2], "sub4": job.subs[3], "sub5": job.subs[4] },
            "transaction_id": get("transaction_id"),
            "order_id": s.order_id,
            "event": s.event_type,
            "merchant": { "ref": job.merchant_ref, "name": job.merchant_name },
            "reason": s.reason,
            "line_id": get("line_id"),
            "reward_delay_days": s.reward_delay_days,
            "network": get("network"),
            "changed_at": job.change_at,
        },
        "params": params,
    })
}

type Headers = Vec<(String, String)>;

/// Standard Webhooks headers, and the same with the signatures masked for the log.
fn webhook_headers(secrets: &[Secret], id: &str, ts: i64, body: &str) -> (Headers, Headers) {
    let mut headers =
        vec![("content-type".to_string(), "application/json".to_string()), ("webhook-id".to_string(), id.to_string())];
    headers.push(("webhook-timestamp".to_string(), ts.to_string()));
    let mut logged = headers.clone();
    if !secrets.is_empty() {
        headers.push(("webhook-signature".to_string(), sign::standard_webhooks(secrets, id, ts, body.as_bytes())));
        logged.push(("webhook-signature".to_string(), vec!["v1,***"; secrets.len()].join(" ")));
    }
    (headers, logged)
}
