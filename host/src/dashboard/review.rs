//! The review queue (seed 002's manual mode and rule holds): approve, reject or hold,
//! recorded with the operator (the token's name) and a reason.

use super::{ActionSession, Nav, Session, badge, conversion_link, layout, money, notice, time, unavailable};
use crate::auth::Scope;
use crate::conversions::service::ServiceError;
use crate::conversions::{ApplyError, ReviewAction, Status};
use crate::http::AppState;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct Done {
    done: String,
    id: String,
    /// One conversion processed again, and its status now.
    reprocessed: String,
    now: String,
    /// A bulk reprocess: the status, how many were processed, how many still wait.
    bulk: String,
    done_count: String,
    still: String,
    /// The review queue's page: `reported_at:id` of the previous page's last row.
    cursor: String,
    /// The parked and failed list's page: `reported_at:id` of its previous page's last row.
    waiting_cursor: String,
    /// Rows per page of each list: 1 to 500, default 50.
    limit: String,
}

/// The link to the next page of one of the page's two lists: `key` is that list's cursor
/// parameter, set to `last`; the other list keeps its place.
fn next_link(q: &Done, limit: i64, key: &str, last: &crate::conversions::store::ConversionRow) -> String {
    let mut to = url::form_urlencoded::Serializer::new(String::new());
    let cursor = format!("{}:{}", last.reported_at, last.id);
    let (queue, waiting) = match key {
        "cursor" => (cursor.as_str(), q.waiting_cursor.as_str()),
        _ => (q.cursor.as_str(), cursor.as_str()),
    };
    if !queue.is_empty() {
        to.append_pair("cursor", queue);
    }
    if !waiting.is_empty() {
        to.append_pair("waiting_cursor", waiting);
    }
    if !q.limit.trim().is_empty() {
        to.append_pair("limit", &limit.to_string());
    }
    format!("/dashboard/review?{}", to.finish())
}

/// `GET /dashboard/review`.
pub(super) async fn page(State(st): State<AppState>, session: Session, Query(q): Query<Done>) -> Response {
    let s = &st.service;
    let (limit, after) = match (super::page_limit(&q.limit), crate::http::page::at_id_cursor(Some(&q.cursor))) {
        (Ok(l), Ok(a)) => (l, a),
        (Err(why), _) | (_, Err(why)) => return super::refusal(StatusCode::BAD_REQUEST, &why),
    };
    let waiting_after = match crate::http::page::at_id_cursor(Some(&q.waiting_cursor)) {
        Ok(a) => a,
        Err(why) => return super::refusal(StatusCode::BAD_REQUEST, &why.replacen("cursor", "waiting_cursor", 1)),
    };
    // One row more than shown says whether there is a next page; its link carries the
    // last row's key and the page size.
    let mut queue = match s.review_queue(after, limit + 1).await {
        Ok(rows) => rows,
        Err(e) => return unavailable("cannot read the review queue", &e),
    };
    let next = if queue.len() as i64 > limit {
        queue.truncate(limit as usize);
        queue.last().map(|c| next_link(&q, limit, "cursor", c))
    } else {
        None
    };
    let (mut waiting, merchants) = match (
        s.waiting(waiting_after, limit + 1).await,
        super::queries::distinct(s.db(), super::queries::Column::Merchant).await,
    ) {
        (Ok(w), Ok(m)) => (w, m),
        (Err(e), _) => return unavailable("cannot read the parked and failed conversions", &e),
        (_, Err(e)) => return unavailable("cannot read the merchants", &e),
    };
    let waiting_next = if waiting.len() as i64 > limit {
        waiting.truncate(limit as usize);
        waiting.last().map(|c| next_link(&q, limit, "waiting_cursor", c))
    } else {
        None
    };
    let can_act = session.scope() >= Scope::Write;
    let done = match q.done.as_str() {
        "approve" => Some("approved"),
        "reject" => Some("rejected"),
        "hold" => Some("held"),
        _ => None,
    };
    let body = html! {
        @if let Some(what) = done { (notice("ok", &format!("{} {what}.", q.id))) }
        @if !q.reprocessed.is_empty() { (notice("ok", &format!("{} processed again: now {}.", q.reprocessed, q.now))) }
        @if !q.bulk.is_empty() {
            (notice("ok", &format!("{} {} conversion(s) processed again; {} still {}.", q.done_count, q.bulk, q.still, q.bulk)))
        }
        p.lede {
            "Orders of merchants in manual mode, and orders a rule or an operator held. "
            "Approving credits the cashback as pending; rejecting denies it; holding keeps it here. "
            "Oldest first, " (limit) " a page."
        }
        @if !can_act { (notice("info", "Your token has the read scope: reviewing needs write.")) }
        section.card {
            @if queue.is_empty() {
                p.empty { @if q.cursor.is_empty() { "The queue is empty." } @else { "No more conversions to review." } }
            } @else {
                div.table-wrap {
                    table #review-queue {
                        thead { tr {
                            th { "Conversion" } th { "Status" } th { "Merchant" } th { "User" } th { "Order" }
                            th.num { "Amount" } th.num { "Cashback" } th { "Why" } th { "Reported" }
                        } }
                        // One body per order: its facts, then the decision under them.
                        @for c in &queue {
                            tbody.item data-conversion=(c.id) {
                                tr {
                                    td { (conversion_link(&c.id)) div.muted { (c.network_id) " · " (c.transaction_id) } }
                                    td { (badge(c.status)) }
                                    td.nowrap { (c.merchant_id.as_deref().unwrap_or("—")) }
                                    td { (c.user_id.as_deref().unwrap_or("—")) }
                                    td { (c.order_id.as_deref().unwrap_or("—")) }
                                    td.num { (money(c.amount, &c.currency)) }
                                    td.num { strong { (money(c.cashback, &c.currency)) } }
                                    td.why { (c.status_reason.as_deref().unwrap_or("")) }
                                    td.nowrap { (time(c.reported_at)) }
                                }
                                @if can_act {
                                    tr.decide {
                                        td colspan="9" {
                                            form.inline method="post" action={ "/dashboard/review/" (c.id) } {
                                                (session.csrf_field())
                                                input type="text" name="reason" placeholder="reason (required to reject)" maxlength="500" aria-label="reason";
                                                button.approve type="submit" name="action" value="approve" { "Approve" }
                                                button.reject type="submit" name="action" value="reject" { "Reject" }
                                                @if c.status != Status::Held {
                                                    button.hold type="submit" name="action" value="hold" { "Hold" }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                @if let Some(href) = &next { p { a.next rel="next" href=(href) { "Next page →" } } }
            }
        }
    };
    let body =
        html! { (body) (super::reprocess::waiting_section(&session, &waiting, &merchants, waiting_next.as_deref())) };
    layout(&session, Nav::Review, "Review queue", body).into_response()
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct ReviewForm {
    csrf: String,
    action: String,
    reason: String,
}

/// `POST /dashboard/review/{id}` `action=approve|reject|hold&reason=...`.
pub(super) async fn act(
    State(st): State<AppState>,
    ActionSession(session): ActionSession,
    Path(id): Path<String>,
    Form(f): Form<ReviewForm>,
) -> Response {
    if let Err(refused) = session.allow(&f.csrf, Scope::Write) {
        return refused.into_response();
    }
    let action = match f.action.as_str() {
        "approve" => ReviewAction::Approve,
        "reject" => ReviewAction::Reject,
        "hold" => ReviewAction::Hold,
        other => {
            return super::refusal(
                StatusCode::BAD_REQUEST,
                &format!("action: {other:?} is not approve, reject or hold"),
            );
        }
    };
    let reason = f.reason.trim();
    // Seed 002: document rejections.
    if action == ReviewAction::Reject && reason.is_empty() {
        return super::refusal(StatusCode::UNPROCESSABLE_ENTITY, "a rejection needs a reason");
    }
    let reason = if reason.is_empty() { "in the dashboard" } else { reason };
    match st.service.review(&id, action, session.operator(), reason).await {
        Ok(_) => {
            tracing::info!(conversion = %id, action = %f.action, operator = %session.operator(), "review");
            let mut to = url::form_urlencoded::Serializer::new(String::new());
            to.append_pair("done", &f.action).append_pair("id", &id);
            Redirect::to(&format!("/dashboard/review?{}", to.finish())).into_response()
        }
        Err(ServiceError::Apply(ApplyError::Invalid(why)) | ServiceError::Invalid(why)) => {
            super::refusal(StatusCode::UNPROCESSABLE_ENTITY, &why)
        }
        Err(e) => unavailable("cannot record the decision", &e),
    }
}
