//! Backtests (issue 16, point 6): the form on the plugins page queues a job and leads
//! here; a job's page shows its progress (processed of total) and reloads itself until it
//! ends, then shows the comparison. `/dashboard/backtests` lists them, newest first, a
//! page at a time.

use super::{Nav, Session, conversion_link, layout, money, notice, short_digest, time, time_opt, unavailable};
use crate::backtests::{self, Backtest};
use crate::conversions::service::ServiceError;
use crate::http::AppState;
use crate::registry::Comparison;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;

/// Rows of the list's pages.
const PAGE: i64 = 50;

fn failed(e: ServiceError) -> Response {
    unavailable("cannot read the backtests", &e)
}

/// A job's state as a badge.
fn badge(b: &Backtest) -> Markup {
    html! { span class={ "badge badge-backtest-" (b.state) } { (b.state) } }
}

fn progress(b: &Backtest) -> Markup {
    html! {
        @match b.total {
            Some(total) => { (b.processed) " of " (total) }
            None => { "not started" }
        }
    }
}

/// The newest backtests, for the plugins page.
pub(super) fn table(rows: &[Backtest], id: &str) -> Markup {
    html! {
        table id=(id) {
            thead { tr { th { "Job" } th { "Merchant" } th { "Version" } th { "State" } th.num { "Conversions" } th { "Queued" } th { "By" } } }
            tbody {
                @for b in rows {
                    tr {
                        td { a href={ "/dashboard/backtests/" (b.id) } { "#" (b.id) } }
                        td { (b.merchant) }
                        td { (b.plugin) }
                        td { (badge(b)) }
                        td.num { (progress(b)) }
                        td { (time(b.created_at)) }
                        td { (b.created_by) }
                    }
                }
            }
        }
    }
}

/// The newest `n` backtests (the plugins page shows a few).
pub(super) async fn newest(st: &AppState, n: i64) -> Result<Vec<Backtest>, Response> {
    backtests::list(&st.service, None, None, n).await.map_err(failed)
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct ListQuery {
    /// The last job id of the previous page.
    before: String,
}

/// `GET /dashboard/backtests?before=`: every backtest, newest first, a page at a time.
pub(super) async fn list(State(st): State<AppState>, session: Session, Query(q): Query<ListQuery>) -> Response {
    let before = q.before.parse::<i64>().ok();
    let mut rows = match backtests::list(&st.service, None, before, PAGE + 1).await {
        Ok(rows) => rows,
        Err(e) => return failed(e),
    };
    let next = if rows.len() as i64 > PAGE {
        rows.truncate(PAGE as usize);
        rows.last().map(|b| b.id)
    } else {
        None
    };
    let body = html! {
        section.card {
            p.hint { "Queue one on the " a href="/dashboard/plugins#backtest" { "plugins page" } "." }
            (table(&rows, "backtests"))
            @if rows.is_empty() { p.muted { "No backtests." } }
            @if let Some(n) = next { p { a.next rel="next" href={ "/dashboard/backtests?before=" (n) } { "Older →" } } }
        }
    };
    layout(&session, Nav::Plugins, "Backtests", body).into_response()
}

/// `GET /dashboard/backtests/{id}`: a job's progress, then its result.
pub(super) async fn show(State(st): State<AppState>, session: Session, Path(id): Path<String>) -> Response {
    let job = match id.parse::<i64>() {
        Ok(n) => match backtests::get(&st.service, n).await {
            Ok(job) => job,
            Err(e) => return failed(e),
        },
        Err(_) => None,
    };
    let Some(b) = job else {
        let body = html! { (notice("error", &format!("No backtest {id:?}."))) };
        return (StatusCode::NOT_FOUND, layout(&session, Nav::Plugins, "Backtest", body)).into_response();
    };
    let body = html! {
        section.card #backtest-job {
            dl.facts {
                dt { "State" } dd #backtest-state { (badge(&b)) }
                dt { "Conversions" } dd #backtest-progress { (progress(&b)) @if b.skipped > 0 { " (" (b.skipped) " decided before inputs were recorded: skipped)" } }
                dt { "Merchant" } dd { (b.merchant) }
                dt { "Version" } dd { (b.plugin) " " span.muted { "#" (b.position) } }
                dt { "Window" } dd { (if b.from == i64::MIN { "the beginning".to_string() } else { time(b.from) }) " to " (time(b.to)) }
                dt { "Queued" } dd { (time(b.created_at)) " by " (b.created_by) }
                dt { "Started" } dd { (time_opt(b.started_at)) }
                dt { "Finished" } dd { (time_opt(b.finished_at)) }
            }
            @if !b.finished() { p.hint { "Running on a worker of the server; this page reloads itself until it ends." } }
            @if let Some(e) = &b.error { (notice("error", e)) }
        }
        @if let (true, Some(c)) = (b.state == "done", &b.result) {
            section.card #backtest {
                h2 { "Result: " (b.plugin) " for " (b.merchant) }
                (comparison(c, "backtest-result"))
            }
        }
    };
    let mut response = layout(&session, Nav::Plugins, &format!("Backtest #{}", b.id), body).into_response();
    if !b.finished() {
        // A plain reload (the CSP allows no inline script): every 2 seconds until it ends.
        response.headers_mut().insert("refresh", HeaderValue::from_static("2"));
    }
    response
}

/// A comparison's totals and differences.
pub(super) fn comparison(c: &Comparison, id: &str) -> Markup {
    html! {
        p {
            strong { (c.compared) } " conversions compared, " strong { (c.changed) } " would change. "
            span.muted { "Candidate " (short_digest(&c.candidate_digest)) }
        }
        @for (currency, delta) in &c.delta {
            p {
                (currency) ": active " (money(c.active_total.get(currency).copied().unwrap_or(0), currency))
                " → candidate " (money(c.candidate_total.get(currency).copied().unwrap_or(0), currency))
                " (" @if *delta >= 0 { "+" } (money(*delta, currency)) ")"
            }
        }
        @if !c.differences.is_empty() {
            table id=(id) {
                thead { tr { th { "Conversion" } th.num { "Active" } th.num { "Candidate" } th.num { "Delta" } th { "Error" } } }
                tbody {
                    @for d in &c.differences {
                        tr {
                            td { (conversion_link(&d.conversion_id)) }
                            td.num { (d.active_cashback.map_or("failed".into(), |v| money(v, &d.currency))) }
                            td.num { (d.candidate_cashback.map_or("failed".into(), |v| money(v, &d.currency))) }
                            td.num { (d.delta.map_or("—".into(), |v| money(v, &d.currency))) }
                            td { (d.error.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
            @if (c.differences.len() as u64) < c.changed { p.muted { "The first " (c.differences.len()) " differences." } }
        }
    }
}
