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
    /// Every value of a delivery, by placeholder: for a POST body, a plugin, the tester.
    pub(super) fn values(job: &Claimed) -> Values {
        Self::values_for(job, None)
    }

    /// The values of a delivery, by placeholder; with a template, only those it names
    /// (a GET's URL): the others (a conversion id's hash, amounts as decimals) are not
    /// computed for every delivery to be thrown away.
    pub(super) fn values_for(job: &Claimed, only: Option<&Template>) -> Values {
        let mut v = Filler { values: Values::new(), only };
        v.put("delivery_id", || Some(message_id(job.delivery_id)));
        v.put("timestamp", || Some((job.change_at / 1000).to_string()));
        let s = match &job.subject {
            Subject::Conversion(s) => s,
            Subject::Payout(p) => {
                // A payout's own values, and the common ones; a conversion's (order,
                // click, merchant) are empty.
                v.put("type", || Some("payout.changed".into()));
                v.put("status", || Some(p.status.as_str().into()));
                v.put("user_id", || Some(p.user_id.clone()));
                v.put("currency", || Some(p.currency.clone()));
                v.put("reason", || p.reason.clone());
                v.put("payout_id", || Some(p.payout_id.clone()));
                v.put("payout_status", || Some(p.status.as_str().into()));
                v.put("payout_amount", || Some(crate::callbacks::decimal(p.amount, &p.currency)));
                v.put("payout_amount_minor", || Some(p.amount.to_string()));
                v.put("payout_reference", || p.reference.clone());
                return v.values;
            }
        };
        // A click's CREATED has no conversion yet: no order, amounts, cashback or status
        // of ours. Those render empty (an absent value), never as a made-up 0.00 that a
        // partner could book.
        let conversion = s.kind == ChangeKind::Conversion;
        v.put("type", || Some(if conversion { "conversion.changed" } else { "click.created" }.into()));
        v.put("state", || Some(s.state.as_str().into()));
        v.put("click_id", || s.click_id.clone());
        v.put("ref_id", || job.ref_id.clone());
        v.put("user_id", || s.user_id.clone());
        v.put("order_id", || s.order_id.clone());
        v.put("event", || Some(s.event_type.clone()));
        v.put("reason", || s.reason.clone());
        v.put("line_id", || Some(s.line_ids.join(",")).filter(|l| !l.is_empty()));
        v.put("reward_delay_days", || s.reward_delay_days.map(|d| d.to_string()));
        v.put("merchant_ref", || job.merchant_ref.clone());
        v.put("merchant_name", || job.merchant_name.clone());
        v.put("network", || Some(s.network_id.clone()).filter(|n| !n.is_empty()));
        for (i, name) in ["sub1", "sub2", "sub3", "sub4", "sub5"].into_iter().enumerate() {
            v.put(name, || job.subs[i].clone());
        }
        if conversion {
            v.put("status", || Some(s.status.as_str().into()));
            v.put("payout", || Some(crate::callbacks::decimal(s.cashback, &s.currency)));
            v.put("payout_minor", || Some(s.cashback.to_string()));
            v.put("amount", || Some(crate::callbacks::decimal(s.amount, &s.currency)));
            v.put("commission", || Some(crate::callbacks::decimal(s.commission, &s.currency)));
            v.put("currency", || Some(s.currency.clone()));
            v.put("transaction_id", || Some(s.transaction_id.clone()));
            v.put("conversion_id", || Some(crate::conversions::conversion_id(&s.network_id, &s.transaction_id)));
        }
        v.values
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
        // A GET needs only what its template names; a POST's body takes every value.
        let only = matches!(spec.method, Method::Get).then_some(template);
        let values = Self::values_for(job, only);
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
                let get = |url| RequestView { method: "GET".into(), url, headers: Vec::new(), body: None };
                let (request, logged) = (get(url), get(logged_url));
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

/// Values being filled: each computed only if wanted (`only`: a template's names).
struct Filler<'a> {
    values: Values,
    only: Option<&'a Template>,
}

impl Filler<'_> {
    fn put(&mut self, name: &'static str, value: impl FnOnce() -> Option<String>) {
        if self.only.is_none_or(|t| t.names(name))
            && let Some(v) = value()
        {
            self.values.insert(name, v);
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
