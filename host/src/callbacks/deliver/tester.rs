//! The callback tester: one sample delivery rendered, sent and logged like a real one,
//! and reported exactly as sent.

use super::Deliverer;
use super::claim::{Claimed, Subject};
use super::render::{Prepared, RequestView};
use super::send::ResponseView;
use crate::callbacks::{CallbackError, Endpoint};
use crate::outbox::{ChangeKind, PayoutSnapshot, Snapshot};
use serde::Serialize;
use std::time::{Duration, Instant};

/// What the callback tester did: the exact request and what came back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct TestReport {
    /// The endpoint.
    pub endpoint_id: String,
    /// The request, exactly as sent.
    pub request: RequestView,
    /// The response, if one came.
    pub response: Option<ResponseView>,
    /// Why there is no response (refused address, timeout, connection error).
    pub error: Option<String>,
    /// Milliseconds until the answer or the error.
    pub latency_ms: i64,
    /// Whether the endpoint would count it as delivered (a 200).
    pub delivered: bool,
}

impl Deliverer {
    /// The callback tester: sends a sample callback to an endpoint (enabled or not) and
    /// returns the exact request and what came back. Logged as a `test` attempt.
    pub async fn test(&self, endpoint_id: &str) -> Result<TestReport, CallbackError> {
        let endpoint = crate::callbacks::endpoint(&self.inner.db, endpoint_id).await?;
        let template = endpoint.spec.validate()?;
        let now = self.inner.clock.now();
        let job = sample_job(&endpoint, now);
        let t0 = Instant::now();
        let (prepared, result) = match self.prepare_any(&endpoint, &template, &job).await {
            Ok(prepared) => {
                let result = self.exchange(&prepared.request, prepared.timeout, true).await;
                (prepared, result)
            }
            // The plugin's refusal is the tester's answer, as it would be an attempt's.
            Err(e) => {
                let none = RequestView { method: String::new(), url: String::new(), headers: Vec::new(), body: None };
                let timeout = Duration::from_millis(endpoint.spec.timeout_ms.max(1) as u64);
                (Prepared { request: none.clone(), logged: none, timeout }, Err(e))
            }
        };
        let latency_ms = t0.elapsed().as_millis() as i64;
        let (response, error) = match result {
            Ok((r, _)) => (Some(r), None),
            Err(e) => (None, Some(e)),
        };
        sqlx::query(
            "INSERT INTO callback_attempts (delivery_id, endpoint_id, attempt, started_at, latency_ms, method, url, \
             request_headers, request_body, status, error, response_excerpt, outcome) \
             VALUES (NULL, $1, 1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'test')",
        )
        .bind(endpoint_id)
        .bind(now)
        .bind(latency_ms)
        .bind(&prepared.logged.method)
        .bind(&prepared.logged.url)
        .bind(serde_json::to_string(&prepared.logged.headers).unwrap_or_default())
        .bind(&prepared.logged.body)
        .bind(response.as_ref().map(|r| i64::from(r.status)))
        .bind(&error)
        .bind(response.as_ref().map(|r| r.body_excerpt.clone()))
        .execute(&self.inner.db.pool)
        .await?;
        Ok(TestReport {
            endpoint_id: endpoint_id.to_string(),
            delivered: response.as_ref().is_some_and(|r| r.status == 200),
            request: prepared.request,
            response,
            error,
            latency_ms,
        })
    }
}

/// The tester's sample: a PENDING conversion, or, for an endpoint that does not take
/// PENDING, the first state it takes (a click's CREATED for CREATED), or a paid payout for
/// an endpoint that takes payouts only, so that the partner sees the kind of callback it
/// will get.
fn sample_job(endpoint: &Endpoint, now: i64) -> Claimed {
    use crate::conversions::{State, Status};
    if !endpoint.spec.events.conversions {
        return Claimed {
            delivery_id: 0,
            endpoint_id: endpoint.spec.id.clone(),
            attempt: 1,
            change_at: now,
            subject: Subject::Payout(PayoutSnapshot {
                payout_id: "po_test".into(),
                user_id: "test-user".into(),
                currency: "EUR".into(),
                amount: 2_500,
                status: crate::payouts::PayoutStatus::Paid,
                reference: Some("test-reference".into()),
                reason: None,
                requested_at: now,
            }),
            ref_id: None,
            subs: [None, None, None, None, None],
            merchant_name: None,
            merchant_ref: None,
        };
    }
    let state = match &endpoint.spec.states {
        Some(states) if !states.contains(&State::Pending) => states.first().copied().unwrap_or(State::Pending),
        _ => State::Pending,
    };
    let mut job = Claimed {
        delivery_id: 0,
        endpoint_id: endpoint.spec.id.clone(),
        attempt: 1,
        change_at: now,
        subject: Subject::Conversion(Box::new(Snapshot {
            kind: ChangeKind::Conversion,
            state,
            status: Status::Processed,
            network_id: "test-network".into(),
            transaction_id: "test-transaction".into(),
            click_id: Some("test-click".into()),
            user_id: Some("test-user".into()),
            merchant_id: Some("test-merchant".into()),
            merchant_ref: Some("test-merchant-ref".into()),
            order_id: Some("test-order".into()),
            event_type: "sale".into(),
            reason: None,
            currency: "EUR".into(),
            amount: 10_000,
            commission: 800,
            cashback: 500,
            reward_delay_days: Some(30),
            line_ids: vec!["line-1".into()],
        })),
        ref_id: Some("test-ref".into()),
        subs: [Some("test-sub1".into()), None, None, None, None],
        merchant_name: Some("Test Merchant".into()),
        merchant_ref: Some("test-merchant-ref".into()),
    };
    if state == State::Created {
        let click = crate::outbox::Click {
            click_id: "test-click",
            user_id: "test-user",
            merchant_id: Some("test-merchant"),
            network_id: Some("test-network"),
            ref_id: Some("test-ref"),
        };
        job.subject = Subject::Conversion(Box::new(crate::outbox::Change::of_click(&click, None, now).snapshot));
    }
    job
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callbacks::deliver::render::post_body;

    fn endpoint(states: Option<Vec<crate::conversions::State>>) -> Endpoint {
        let spec = crate::callbacks::EndpointSpec {
            states,
            ..crate::callbacks::EndpointSpec::new("e", "p", "https://p.example/")
        };
        Endpoint {
            spec,
            enabled: true,
            consecutive_failures: 0,
            disabled_at: None,
            disabled_reason: None,
            plugin: None,
        }
    }

    #[test]
    fn a_clicks_created_fills_the_clicks_values_and_leaves_every_order_value_empty() {
        use crate::conversions::State;
        let job = sample_job(&endpoint(Some(vec![State::Created, State::Completed])), 1_767_225_600_000);
        let v = Deliverer::values(&job);
        let got = |k: &str| v.get(k).map(String::as_str);
        assert_eq!(got("state"), Some("CREATED"));
        assert_eq!(
            (got("click_id"), got("ref_id"), got("sub1")),
            (Some("test-click"), Some("test-ref"), Some("test-sub1"))
        );
        assert_eq!(
            (got("user_id"), got("merchant_name"), got("network")),
            (Some("test-user"), Some("Test Merchant"), Some("test-network"))
        );
        assert_eq!((got("event"), got("timestamp")), (Some("click"), Some("1767225600")));
        for order in [
            "conversion_id",
            "transaction_id",
            "order_id",
            "payout",
            "payout_minor",
            "amount",
            "commission",
            "currency",
            "status",
            "line_id",
            "reward_delay_days",
            "reason",
        ] {
            assert_eq!(got(order), None, "{order} of a click");
        }
        let body = post_body(&job, &v, &std::collections::BTreeMap::new());
        assert_eq!(body["type"], "click.created");
        for order in ["conversion_id", "payout", "payout_minor", "amount_minor", "currency", "transaction_id", "status"]
        {
            assert!(body["data"][order].is_null(), "{order}: {body}");
        }

        // An endpoint that takes PENDING (or every state) is tested with a PENDING order.
        for states in [None, Some(vec![State::Created, State::Pending])] {
            let job = sample_job(&endpoint(states), 0);
            let v = Deliverer::values(&job);
            assert_eq!((v["state"].as_str(), v["payout"].as_str(), v["event"].as_str()), ("PENDING", "5.00", "sale"));
            assert_eq!(post_body(&job, &v, &std::collections::BTreeMap::new())["type"], "conversion.changed");
        }
    }

    #[test]
    fn a_get_template_is_given_exactly_the_values_it_names() {
        use crate::callbacks::template::Template;
        for job in [sample_job(&endpoint(None), 1_767_225_600_000), {
            use crate::conversions::State;
            sample_job(&endpoint(Some(vec![State::Created])), 0)
        }] {
            let all = Deliverer::values(&job);
            let names = ["state", "click_id", "payout", "conversion_id", "sub1", "timestamp"];
            let t = Template::parse(
                "https://p.example/cb?s=[%CASHBACK:STATE%]&c={click_id}&p={payout}&cv={conversion_id}&s1={raw:sub1}&t={timestamp}",
            )
            .expect("template");
            let some = Deliverer::values_for(&job, Some(&t));
            let named: crate::callbacks::template::Values =
                all.iter().filter(|(k, _)| names.contains(k)).map(|(k, v)| (*k, v.clone())).collect();
            assert_eq!(some, named);
            assert_eq!(t.render(&some), t.render(&all));
        }
    }
}
