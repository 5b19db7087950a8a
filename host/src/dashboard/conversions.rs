//! Conversions: the search, and one conversion's timeline (seed 000: every stage with its
//! time), its history (what happened and what was ignored, and why) and its ledger
//! postings with the plugins that computed them.

use super::queries::{self, Column, SearchFilter};
use super::{Nav, Session, badge, conversion_link, duration, layout, money, short_digest, time, time_opt, unavailable};
use crate::conversions::Status;
use crate::http::AppState;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};

/// Rows a search shows at most.
const LIMIT: i64 = 200;

const STATUSES: [Status; 7] = [
    Status::Processed,
    Status::PendingReview,
    Status::Held,
    Status::Rejected,
    Status::Reversed,
    Status::Failed,
    Status::Parked,
];

/// `GET /dashboard/conversions?id=&transaction=&user=&status=&network=&merchant=`.
pub(super) async fn search(State(st): State<AppState>, session: Session, Query(f): Query<SearchFilter>) -> Response {
    let db = st.service.db();
    let (mut rows, networks, merchants) = match (
        queries::search(db, &f, LIMIT + 1).await,
        queries::distinct(db, Column::Network).await,
        queries::distinct(db, Column::Merchant).await,
    ) {
        (Ok(r), Ok(n), Ok(m)) => (r, n, m),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return unavailable("cannot search conversions", &e),
    };
    let select = |name: &str, label: &str, current: &str, options: &[String]| -> Markup {
        html! {
            label { (label)
                select name=(name) {
                    option value="" { "any" }
                    @for o in options { option value=(o) selected[o == current] { (o) } }
                }
            }
        }
    };
    // One row more than shown says whether there is a next page; its link carries the
    // filters and the last row's key.
    let next = if rows.len() as i64 > LIMIT {
        rows.truncate(LIMIT as usize);
        rows.last().map(|c| {
            let mut q = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in [
                ("id", &f.id),
                ("transaction", &f.transaction),
                ("user", &f.user),
                ("status", &f.status),
                ("network", &f.network),
                ("merchant", &f.merchant),
            ] {
                if !v.is_empty() {
                    q.append_pair(k, v);
                }
            }
            q.append_pair("cursor", &format!("{}:{}", c.reported_at, c.id));
            format!("/dashboard/conversions?{}", q.finish())
        })
    } else {
        None
    };
    let statuses: Vec<String> = STATUSES.iter().map(|s| s.as_str().to_string()).collect();
    let body = html! {
        section.card {
            form.filters method="get" action="/dashboard/conversions" {
                label { "Conversion id" input type="text" name="id" value=(f.id) placeholder="cv_…"; }
                label { "Transaction id" input type="text" name="transaction" value=(f.transaction); }
                label { "User" input type="text" name="user" value=(f.user); }
                (select("status", "Status", &f.status, &statuses))
                (select("network", "Network", &f.network, &networks))
                (select("merchant", "Merchant", &f.merchant, &merchants))
                button.primary type="submit" { "Search" }
                a href="/dashboard/conversions" { "Clear" }
            }
        }
        section.card {
            @if rows.is_empty() {
                p.empty { "No conversion matches." }
            } @else {
                p.muted { (rows.len()) " conversions, most recently reported first" @if !f.cursor.is_empty() { " (a later page)" } "." }
                div.table-wrap {
                    table #conversions {
                        thead { tr {
                            th { "Conversion" } th { "Network" } th { "Transaction" } th { "Merchant" } th { "User" }
                            th { "State" } th { "Status" } th.num { "Order" } th.num { "Cashback" } th { "Via" } th { "Reported" }
                        } }
                        tbody {
                            @for c in &rows {
                                tr {
                                    td { (conversion_link(&c.id)) }
                                    td { (c.network_id) }
                                    td { (c.transaction_id) }
                                    td { (c.merchant_id.as_deref().unwrap_or("—")) }
                                    td { (c.user_id.as_deref().unwrap_or("—")) }
                                    td { (c.state.as_str()) }
                                    td { (badge(c.status)) }
                                    td.num { (money(c.amount, &c.currency)) }
                                    td.num { (money(c.cashback, &c.currency)) }
                                    td { (c.reported_via) }
                                    td.nowrap { (time(c.reported_at)) }
                                }
                            }
                        }
                    }
                }
                @if let Some(href) = &next { p { a.next rel="next" href=(href) { "Older →" } } }
            }
        }
    };
    layout(&session, Nav::Conversions, "Conversions", body).into_response()
}

/// What the page was redirected with after an action.
#[derive(serde::Deserialize, Default)]
#[serde(default)]
pub(super) struct Reprocessed {
    reprocessed: String,
    now: String,
}

/// `GET /dashboard/conversions/{id}`.
pub(super) async fn timeline(
    State(st): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    Query(done): Query<Reprocessed>,
) -> Response {
    let s = &st.service;
    let row = match s.conversion(&id).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            let body = html! { section.card { p { "No conversion " code { (id) } "." } p { a href="/dashboard/conversions" { "Search conversions" } } } };
            return (StatusCode::NOT_FOUND, layout(&session, Nav::Conversions, "Conversion not found", body))
                .into_response();
        }
        Err(e) => return unavailable("cannot read the conversion", &e),
    };
    let (history, postings, notified) =
        match (s.history(&id).await, queries::postings(s.db(), &id).await, queries::notified_at(s.db(), &id).await) {
            (Ok(h), Ok(p), Ok(n)) => (h, p, n),
            (Err(e), _, _) => return unavailable("cannot read the history", &e),
            (_, Err(e), _) | (_, _, Err(e)) => return unavailable("cannot read the postings", &e),
        };
    let c = &row;
    // Seed 000's stages, in the order they happen; a stage not reached yet is shown empty.
    let stages: Vec<(&str, Option<i64>, String)> = vec![
        ("Clicked", c.clicked_at, c.click_id.as_deref().map(|k| format!("click {k}")).unwrap_or_default()),
        ("Purchased", Some(c.event_time), "the time the network gives for the order".into()),
        ("Reported", Some(c.reported_at), format!("first report, by {}", c.reported_via.replace('_', " "))),
        ("Rules ran", c.rule_at, "last evaluation of the merchant's rules".into()),
        ("Ledger", c.ledger_at, "last posting".into()),
        ("Completed", c.completed_at, "the network confirmed the commission".into()),
        (
            "Matured",
            c.matured_at,
            c.matures_at
                .filter(|_| c.matured_at.is_none())
                .map(|m| format!("due {}", time(m)))
                .unwrap_or_else(|| "cashback available".into()),
        ),
        ("User notified", notified, "first e-mail digest".into()),
    ];
    // The time since the stage reached before, when it is later.
    let mut previous: Option<i64> = None;
    let stages: Vec<(&str, Option<i64>, String, Option<i64>)> = stages
        .into_iter()
        .map(|(stage, at, what)| {
            let gap = at.zip(previous).map(|(a, p)| a - p).filter(|g| *g >= 0);
            previous = at.or(previous);
            (stage, at, what, gap)
        })
        .collect();
    let plugins = c
        .decision
        .as_deref()
        .and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .and_then(|d| d.get("plugins").cloned());
    let body = html! {
        @if !done.reprocessed.is_empty() { (super::notice("ok", &format!("Processed again: now {}.", done.now))) }
        div.grid2 {
            section.card {
                h2 { "Conversion" }
                dl.facts {
                    dt { "Id" } dd { code { (c.id) } }
                    dt { "Status" } dd {
                        (badge(c.status)) @if let Some(r) = &c.status_reason { " " span.muted { (r) } }
                        @if matches!(c.status, Status::Parked | Status::Failed) && session.scope() >= crate::auth::Scope::Write {
                            " " (super::reprocess::button(&session, &c.id, "conversion"))
                        }
                    }
                    dt { "State" } dd { (c.state.as_str()) }
                    dt { "Network" } dd { (c.network_id) " · transaction " code { (c.transaction_id) } }
                    dt { "Merchant" } dd { (c.merchant_id.as_deref().unwrap_or("—")) }
                    dt { "User" } dd { (c.user_id.as_deref().unwrap_or("—")) }
                    dt { "Order" } dd { (c.order_id.as_deref().unwrap_or("—")) " · " (c.event_type) }
                    dt { "Amount" } dd { (money(c.amount, &c.currency)) " (commission " (money(c.commission, &c.currency)) ")" }
                    dt { "Cashback" } dd { strong { (money(c.cashback, &c.currency)) }
                        " · booked: pending " (money(c.posted.pending, &c.currency)) ", available " (money(c.posted.available, &c.currency)) }
                    dt { "Reward delay" } dd { (c.reward_delay_days.map_or("—".into(), |d| format!("{d} days"))) }
                    @if let Some(p) = &plugins {
                        dt { "Rules" } dd {
                            (p["names"].as_str().unwrap_or("")) " " (p["versions"].as_str().unwrap_or("")) " "
                            @if let Some(d) = p["digests"].as_str() { span.digest { (short_digest(d)) } }
                        }
                    }
                }
            }
            section.card {
                h2 { "Timeline" }
                ol.timeline #timeline {
                    @for (stage, at, what, gap) in &stages {
                        li class=[at.is_none().then_some("missing")] {
                            span.stage { (stage) } " "
                            span.when { (time_opt(*at)) }
                            @if let Some(g) = gap { span.gap { "+" (duration(*g)) } }
                            div.muted { (what) }
                        }
                    }
                }
            }
        }
        section.card {
            h2 { "History" }
            @if history.is_empty() { p.empty { "No history." } } @else {
                table #history {
                    thead { tr { th { "When" } th { "Step" } th { "State" } th { "What happened" } } }
                    tbody {
                        @for h in &history {
                            tr {
                                td.nowrap { (time(h.at)) }
                                td { code { (h.kind) } }
                                td.nowrap { (h.from_state.as_deref().map(|f| format!("{f} → ")).unwrap_or_default()) (h.to_state.as_deref().unwrap_or("")) }
                                td { (h.detail) }
                            }
                        }
                    }
                }
            }
        }
        section.card {
            h2 { "Ledger postings" }
            @if postings.is_empty() { p.empty { "Nothing posted." } } @else {
                table #postings {
                    thead { tr { th { "When" } th { "Cause" } th { "Entries" } th { "Computed by" } th { "Operator / reason" } } }
                    tbody {
                        @for p in &postings {
                            tr {
                                td.nowrap { (time(p.at)) }
                                td { code { (p.cause) } }
                                td {
                                    @for (owner, kind, currency, amount) in &p.entries {
                                        div.nowrap { (owner) " " span.muted { (kind) } " " strong { (money(*amount, currency)) } }
                                    }
                                }
                                td {
                                    @match (&p.plugin_name, &p.plugin_version, &p.plugin_digest) {
                                        (Some(n), Some(v), Some(d)) => { (n) " " (v) br; span.digest { (short_digest(d)) } }
                                        _ => { span.muted { "—" } }
                                    }
                                }
                                td { (p.operator.as_deref().unwrap_or("")) @if p.operator.is_some() { ": " } span.muted { (p.reason.as_deref().unwrap_or("")) } }
                            }
                        }
                    }
                }
            }
        }
        p { a href={ "/dashboard/deliveries?conversion=" (c.id) } { "Callbacks about this conversion" } }
    };
    layout(&session, Nav::Conversions, &format!("Conversion {}", c.transaction_id), body).into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn conversion_links_are_escaped() {
        let m = super::conversion_link("cv_<x>").into_string();
        assert!(m.contains("cv_&lt;x&gt;"), "{m}");
    }
}
