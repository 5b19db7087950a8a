//! The payouts queue: requested payouts to approve or reject, approved ones to mark paid
//! (with the payment's reference) or failed, the closed ones, newest first (a paid payout
//! whose payment came back can still be marked failed); each list a page at a time, and one payout's history and postings.
//! Every action is recorded under the token's name, and carries the version the page
//! showed: an operator acting on a page another operator has overtaken is told so.

use super::queries;
use super::{ActionSession, Nav, Session, layout, money, notice, time, time_opt, unavailable};
use crate::auth::Scope;
use crate::http::AppState;
use crate::payouts::{self, Payout, PayoutAction, PayoutError, PayoutFilter, PayoutStatus, Refusal, Transition};
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

/// A payout's status as a badge.
pub fn payout_badge(status: PayoutStatus) -> Markup {
    html! { span class={ "badge badge-payout-" (status.as_str()) } { (status.as_str()) } }
}

fn payout_link(id: &str) -> Markup {
    html! { a href={ "/dashboard/payouts/" (id) } { code { (id) } } }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct Done {
    done: String,
    id: String,
    unchanged: String,
    /// The page of the requested payouts: the previous page's `next` (as the API's `after`).
    requested_cursor: String,
    /// The page of the approved payouts.
    approved_cursor: String,
    /// The page of the closed payouts (newest first): `updated_at:id` of the previous
    /// page's last row.
    closed_cursor: String,
    /// Rows per page of each list: 1 to 500, default 50.
    limit: String,
}

impl Done {
    /// The link to the page where the list `which` (a queue's status, or `None`: the
    /// closed payouts) starts at `cursor`, the other lists where they are.
    fn next(&self, which: Option<PayoutStatus>, cursor: &str) -> String {
        let mut to = url::form_urlencoded::Serializer::new(String::new());
        let (mut requested, mut approved, mut closed) =
            (self.requested_cursor.as_str(), self.approved_cursor.as_str(), self.closed_cursor.as_str());
        match which {
            Some(PayoutStatus::Requested) => requested = cursor,
            Some(_) => approved = cursor,
            None => closed = cursor,
        }
        for (k, v) in [
            ("requested_cursor", requested),
            ("approved_cursor", approved),
            ("closed_cursor", closed),
            ("limit", self.limit.trim()),
        ] {
            if !v.is_empty() {
                to.append_pair(k, v);
            }
        }
        format!("/dashboard/payouts?{}", to.finish())
    }
}

/// `GET /dashboard/payouts`.
pub(super) async fn page(State(st): State<AppState>, session: Session, Query(q): Query<Done>) -> Response {
    let s = &st.service;
    let limit = match super::page_limit(&q.limit) {
        Ok(l) => l,
        Err(why) => return super::refusal(StatusCode::BAD_REQUEST, &why),
    };
    let closed_before = match crate::http::page::at_id_cursor(Some(&q.closed_cursor)) {
        Ok(c) => c,
        Err(_) => return super::refusal(StatusCode::BAD_REQUEST, "closed_cursor: not one this page gave"),
    };
    // Each queue a page at a time, oldest first, with the API's cursor (`after`/`next`).
    let queue = |status, cursor: &str| PayoutFilter {
        status: Some(status),
        oldest_first: true,
        limit: Some(limit),
        after: Some(cursor.to_string()).filter(|c| !c.is_empty()),
        ..Default::default()
    };
    let (requested, approved, recent) = match (
        payouts::service::list(s, &queue(PayoutStatus::Requested, &q.requested_cursor)).await,
        payouts::service::list(s, &queue(PayoutStatus::Approved, &q.approved_cursor)).await,
        queries::closed_payouts(s.db(), closed_before, limit + 1).await.map_err(PayoutError::from),
    ) {
        (Ok(r), Ok(a), Ok(c)) => (r, a, c),
        (Err(PayoutError::Refused(Refusal::Invalid { .. })), _, _) => {
            return super::refusal(StatusCode::BAD_REQUEST, "requested_cursor: not one this page gave");
        }
        (_, Err(PayoutError::Refused(Refusal::Invalid { .. })), _) => {
            return super::refusal(StatusCode::BAD_REQUEST, "approved_cursor: not one this page gave");
        }
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return unavailable("cannot read the payouts", &e),
    };
    let requested_next = requested.next.as_deref().map(|n| q.next(Some(PayoutStatus::Requested), n));
    let approved_next = approved.next.as_deref().map(|n| q.next(Some(PayoutStatus::Approved), n));
    // One row more than shown says whether there is a next page.
    let mut recent = recent;
    let closed_next = if recent.len() as i64 > limit {
        recent.truncate(limit as usize);
        recent.last().map(|p| q.next(None, &format!("{}:{}", p.updated_at, p.id)))
    } else {
        None
    };
    let (requested, approved) = (requested.payouts, approved.payouts);
    let can_act = session.scope() >= Scope::Write;
    let done = match q.done.as_str() {
        "approve" => Some(("approved", "approved")),
        "reject" => Some(("rejected", "rejected: its amount is back in the user's available balance")),
        "paid" => Some(("paid", "marked paid")),
        "failed" => Some(("failed", "marked failed: its amount is back in the user's available balance")),
        _ => None,
    };
    let form = |p: &Payout, inner: Markup| -> Markup {
        html! {
            form.inline method="post" action={ "/dashboard/payouts/" (p.id) } {
                (session.csrf_field())
                input type="hidden" name="version" value=(p.version);
                (inner)
            }
        }
    };
    let head = html! {
        thead { tr {
            th { "Payout" } th { "User" } th.num { "Amount" } th { "Status" } th { "Requested" } th { "By" } th { "Last step" }
        } }
    };
    let facts = |p: &Payout| -> Markup {
        html! {
            tr {
                td { (payout_link(&p.id)) }
                td { (p.user_id) }
                td.num { strong { (money(p.amount, &p.currency)) } }
                td { (payout_badge(p.status)) }
                td.nowrap { (time(p.requested_at)) }
                td { (p.requested_by) }
                td {
                    @if let Some(op) = &p.operator { (op) " · " (time(p.updated_at)) }
                    @if let Some(r) = &p.reference { div.muted { "reference " code { (r) } } }
                    @if let Some(r) = &p.reason { div.muted { (r) } }
                }
            }
        }
    };
    let body = html! {
        @if let Some((status, what)) = done {
            @if q.unchanged == "1" {
                (notice("info", &format!("Payout {} was {status} already: nothing changed.", q.id)))
            } @else {
                (notice("ok", &format!("Payout {} {what}.", q.id)))
            }
        }
        p.lede {
            "Payouts the site requested for its users. Approve or reject what is requested; "
            "mark an approved payout paid with the payment's reference, or failed. "
            "A rejected or failed payout's amount returns to the user's available balance. Oldest first."
        }
        @if !can_act { (notice("info", "Your token has the read scope: acting on payouts needs write.")) }
        section.card {
            h2 { "To decide" }
            @if requested.is_empty() {
                p.empty { "No payout waits for a decision." }
            } @else {
                div.table-wrap { table #payouts-requested {
                    (head)
                    @for p in &requested {
                        tbody.item data-payout=(p.id) {
                            (facts(p))
                            @if can_act {
                                tr.decide { td colspan="7" {
                                    (form(p, html! {
                                        input type="text" name="reason" placeholder="reason (required to reject)" maxlength="500" aria-label="reason";
                                        button.approve type="submit" name="action" value="approve" { "Approve" }
                                        button.reject type="submit" name="action" value="reject" { "Reject" }
                                    }))
                                } }
                            }
                        }
                    }
                } }
                @if let Some(href) = &requested_next { p { a.next rel="next" href=(href) { "Next page →" } } }
            }
        }
        section.card {
            h2 { "To pay" }
            @if approved.is_empty() {
                p.empty { "No approved payout waits for its payment." }
            } @else {
                div.table-wrap { table #payouts-approved {
                    (head)
                    @for p in &approved {
                        tbody.item data-payout=(p.id) {
                            (facts(p))
                            @if can_act {
                                tr.decide { td colspan="7" {
                                    (form(p, html! {
                                        input type="text" name="reference" placeholder="payment reference" maxlength="255" aria-label="payment reference";
                                        button.approve type="submit" name="action" value="paid" { "Mark paid" }
                                    }))
                                    " "
                                    (form(p, html! {
                                        input type="text" name="reason" placeholder="why the payment failed" maxlength="500" aria-label="why it failed";
                                        button.reject type="submit" name="action" value="failed" { "Failed" }
                                    }))
                                } }
                            }
                        }
                    }
                } }
                @if let Some(href) = &approved_next { p { a.next rel="next" href=(href) { "Next page →" } } }
            }
        }
        section.card #closed {
            h2 { "Closed" }
            @if recent.is_empty() {
                p.empty { "No payout paid, rejected or failed yet." }
            } @else {
                div.table-wrap { table #payouts-closed {
                    (head)
                    @for p in &recent {
                        tbody.item data-payout=(p.id) {
                            (facts(p))
                            @if can_act && p.status == PayoutStatus::Paid {
                                tr.decide { td colspan="7" {
                                    (form(p, html! {
                                        input type="text" name="reason" placeholder="the payment came back: why" maxlength="500" aria-label="why it came back";
                                        button.reject type="submit" name="action" value="failed" { "Payment came back" }
                                    }))
                                } }
                            }
                        }
                    }
                } }
                @if let Some(href) = &closed_next { p { a.next rel="next" href=(href) { "Next page →" } } }
            }
        }
    };
    layout(&session, Nav::Payouts, "Payouts", body).into_response()
}

/// `GET /dashboard/payouts/{id}`: one payout, its history and its ledger postings.
pub(super) async fn show(State(st): State<AppState>, session: Session, Path(id): Path<String>) -> Response {
    let db = st.service.db();
    let p = match payouts::service::get(&st.service, &id).await {
        Ok(p) => p,
        Err(PayoutError::Refused(Refusal::NotFound(why))) => return super::refusal(StatusCode::NOT_FOUND, &why),
        Err(e) => return unavailable("cannot read the payout", &e),
    };
    let (history, postings) = match (payouts::store::history(db, &id).await, payouts::store::postings(db, &id).await) {
        (Ok(h), Ok(p)) => (h, p),
        (Err(e), _) | (_, Err(e)) => return unavailable("cannot read the payout's history", &e),
    };
    let body = html! {
        section.card {
            dl.facts #payout {
                dt { "Payout" } dd { code { (p.id) } }
                dt { "User" } dd { (p.user_id) }
                dt { "Amount" } dd { strong { (money(p.amount, &p.currency)) } }
                dt { "Status" } dd { (payout_badge(p.status)) " version " (p.version) }
                dt { "Requested" } dd { (time(p.requested_at)) " by " (p.requested_by) }
                dt { "Approved" } dd { (time_opt(p.approved_at)) }
                dt { "Paid" } dd { (time_opt(p.paid_at)) @if let Some(r) = &p.reference { " · reference " code { (r) } } }
                dt { "Closed" } dd { (time_opt(p.closed_at)) @if let Some(r) = &p.reason { " · " (r) } }
            }
        }
        section.card {
            h2 { "History" }
            table #history {
                thead { tr { th { "When" } th { "From" } th { "To" } th { "Who" } th { "What" } } }
                tbody {
                    @for h in &history {
                        tr {
                            td.nowrap { (time(h.at)) }
                            td { (h.from_status.as_deref().unwrap_or("—")) }
                            td { (h.to_status) }
                            td { (h.operator.as_deref().unwrap_or("—")) }
                            td { (h.detail) }
                        }
                    }
                }
            }
        }
        section.card {
            h2 { "Ledger postings" }
            @if postings.is_empty() { p.empty { "Nothing posted." } } @else {
                table #postings {
                    thead { tr { th { "When" } th { "Cause" } th { "Entries" } th { "Key" } } }
                    tbody {
                        @for posting in &postings {
                            tr {
                                td.nowrap { (time(posting.at)) }
                                td { (posting.cause) }
                                td {
                                    @for (owner, kind, amount) in &posting.entries {
                                        div { (owner) " / " (kind) ": " (money(*amount, &p.currency)) }
                                    }
                                }
                                td { code { (posting.key) } }
                            }
                        }
                    }
                }
            }
        }
        p { a href="/dashboard/payouts" { "Back to the payouts" } }
    };
    layout(&session, Nav::Payouts, &format!("Payout {id}"), body).into_response()
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct StepForm {
    csrf: String,
    action: String,
    reason: String,
    reference: String,
    version: String,
}

/// `POST /dashboard/payouts/{id}` `action=approve|reject|paid|failed&reason=&reference=&version=`.
pub(super) async fn act(
    State(st): State<AppState>,
    ActionSession(session): ActionSession,
    Path(id): Path<String>,
    Form(f): Form<StepForm>,
) -> Response {
    if let Err(refused) = session.allow(&f.csrf, Scope::Write) {
        return refused.into_response();
    }
    let action = match f.action.as_str() {
        "approve" => PayoutAction::Approve,
        "reject" => PayoutAction::Reject { reason: f.reason.clone() },
        "paid" => PayoutAction::MarkPaid { reference: f.reference.clone() },
        "failed" => PayoutAction::MarkFailed { reason: f.reason.clone() },
        other => {
            return super::refusal(
                StatusCode::BAD_REQUEST,
                &format!("action: {other:?} is not approve, reject, paid or failed"),
            );
        }
    };
    let expected_version = match f.version.trim() {
        "" => None,
        v => match v.parse() {
            Ok(v) => Some(v),
            Err(_) => return super::refusal(StatusCode::BAD_REQUEST, &format!("version: {v:?} is not a number")),
        },
    };
    let t = Transition { action, operator: session.operator().to_string(), expected_version };
    match payouts::service::transition(&st.service, &id, t).await {
        Ok((p, changed)) => {
            tracing::info!(payout = %id, action = %f.action, operator = %session.operator(), changed, "payout step");
            let mut to = url::form_urlencoded::Serializer::new(String::new());
            to.append_pair("done", &f.action).append_pair("id", &p.id);
            if !changed {
                to.append_pair("unchanged", "1");
            }
            Redirect::to(&format!("/dashboard/payouts?{}", to.finish())).into_response()
        }
        Err(PayoutError::Refused(Refusal::NotFound(why))) => super::refusal(StatusCode::NOT_FOUND, &why),
        Err(PayoutError::Refused(r @ (Refusal::Transition { .. } | Refusal::Stale { .. }))) => {
            super::refusal(StatusCode::CONFLICT, &r.to_string())
        }
        Err(PayoutError::Refused(r)) => super::refusal(StatusCode::UNPROCESSABLE_ENTITY, &r.to_string()),
        Err(e) => unavailable("cannot record the payout step", &e),
    }
}
