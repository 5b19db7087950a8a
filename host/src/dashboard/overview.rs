//! The overview: seed 002's four metrics (orders processed today, total cashback issued,
//! pending queue size, failed processing count) and the payouts requested and paid today
//! (counts, amounts per currency), refreshed every few seconds by
//! `refresh.js` from `overview.json`, and the latest conversions.

use super::queries::{self, Overview};
use super::{ActionSession, Nav, Session, badge, conversion_link, layout, money, time, unavailable};
use crate::http::AppState;
use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde_json::{Value, json};
use std::collections::BTreeMap;

fn per_currency(m: &BTreeMap<String, i64>) -> String {
    if m.is_empty() {
        return "0.00".into();
    }
    m.iter().map(|(c, v)| money(*v, c)).collect::<Vec<_>>().join(" · ")
}

/// The figures as shown: the page renders them and the script replaces them, so both
/// format them here, once.
fn display(o: &Overview, now: i64) -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        ("processed_today", o.processed_today.to_string()),
        ("cashback_issued", per_currency(&o.cashback_issued)),
        ("review_queue", o.review_queue.to_string()),
        ("failed", o.failed.to_string()),
        ("reported_today", format!("{} reported today", o.reported_today)),
        ("cashback_split", {
            let mut split = format!(
                "{} pending · {} available",
                per_currency(&o.cashback_pending),
                per_currency(&o.cashback_available)
            );
            // Once payouts began, where the rest went: pending + available + in payout +
            // paid out - owed back is the total.
            for (part, what) in [
                (&o.cashback_in_payout, "in payout"),
                (&o.cashback_paid_out, "paid out"),
                (&o.cashback_owed, "owed back"),
            ] {
                if part.values().any(|v| *v != 0) {
                    split.push_str(&format!(" · {} {what}", per_currency(part)));
                }
            }
            split
        }),
        ("review_split", format!("{} pending review · {} held", o.pending_review, o.held)),
        ("parked", format!("{} waiting for their customer", o.parked)),
        ("payouts_requested", o.payouts_requested_today.to_string()),
        ("payouts_requested_amount", per_currency(&o.payouts_requested_amount)),
        ("payouts_paid", o.payouts_paid_today.to_string()),
        ("payouts_paid_amount", per_currency(&o.payouts_paid_amount)),
        ("at", time(now)),
    ])
}

/// `GET /dashboard`.
pub(super) async fn page(State(st): State<AppState>, session: Session) -> Response {
    let now = st.service.now();
    let db = st.service.db();
    let (o, recent) = match (queries::overview(db, now).await, queries::recent(db, 10).await) {
        (Ok(o), Ok(r)) => (o, r),
        (Err(e), _) | (_, Err(e)) => return unavailable("cannot read the metrics", &e),
    };
    let d = display(&o, now);
    let metric = |key: &'static str, label: &str, sub: &'static str, href: &str, alert: bool| -> Markup {
        html! {
            a.metric.card href=(href) class=[(alert).then_some("alert")] {
                div.label { (label) }
                div.value data-metric=(key) { (d[key]) }
                div.sub data-metric=(sub) { (d[sub]) }
            }
        }
    };
    let body = html! {
        p.lede {
            "Since 00:00 UTC · updated " span #refreshed data-metric="at" { (d["at"]) }
            " · refreshes every few seconds"
        }
        div.metrics {
            (metric("processed_today", "Orders processed today", "reported_today", "/dashboard/conversions?status=processed", false))
            (metric("cashback_issued", "Total cashback issued", "cashback_split", "/dashboard/conversions?status=processed", false))
            (metric("review_queue", "Pending queue size", "review_split", "/dashboard/review", o.review_queue > 0))
            (metric("failed", "Failed processing", "parked", "/dashboard/conversions?status=failed", o.failed > 0))
            (metric("payouts_requested", "Payouts requested today", "payouts_requested_amount", "/dashboard/payouts", false))
            (metric("payouts_paid", "Payouts paid today", "payouts_paid_amount", "/dashboard/payouts", false))
        }
        section.card {
            h2 { "Latest conversions" }
            @if recent.is_empty() {
                p.empty { "No conversion yet: they appear here as networks report them." }
            } @else {
                table {
                    thead { tr { th { "Conversion" } th { "Network" } th { "Transaction" } th { "User" } th { "State" } th { "Status" } th.num { "Order" } th.num { "Cashback" } th { "Reported" } } }
                    tbody {
                        @for c in &recent {
                            tr {
                                td { (conversion_link(&c.id)) }
                                td { (c.network_id) }
                                td { (c.transaction_id) }
                                td { (c.user_id.as_deref().unwrap_or("—")) }
                                td { (c.state.as_str()) }
                                td { (badge(c.status)) }
                                td.num { (money(c.amount, &c.currency)) }
                                td.num { (money(c.cashback, &c.currency)) }
                                td.nowrap { (time(c.reported_at)) }
                            }
                        }
                    }
                }
            }
        }
        script src="/dashboard/static/refresh.js" defer {}
    };
    layout(&session, Nav::Overview, "Overview", body).into_response()
}

/// `GET /dashboard/overview.json`: the metrics, raw and as displayed. An expired session
/// gets a 401 (the script then goes to the login page).
pub(super) async fn json(State(st): State<AppState>, ActionSession(_): ActionSession) -> Response {
    let now = st.service.now();
    match queries::overview(st.service.db(), now).await {
        Ok(o) => {
            let body: Value = json!({ "metrics": o, "display": display(&o, now) });
            Json(body).into_response()
        }
        Err(e) => unavailable("cannot read the metrics", &e),
    }
}
