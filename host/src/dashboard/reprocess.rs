//! Processing waiting conversions again: one (from its page or the review queue), or every
//! failed or parked conversion of a merchant (after a broken rule was replaced, say).
//! The same service calls as `POST /api/v1/conversions/{id}/reprocess` and
//! `POST /api/v1/conversions/reprocess`.

use super::{ActionSession, Session, conversion_link, money, time, unavailable};
use crate::auth::Scope;
use crate::conversions::service::ServiceError;
use crate::conversions::{Outcome, Status};
use crate::http::AppState;
use axum::Form;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct OneForm {
    csrf: String,
    /// Where to go back to: `review` or the conversion's page.
    back: String,
}

/// `POST /dashboard/conversions/{id}/reprocess`.
pub(super) async fn one(
    State(st): State<AppState>,
    ActionSession(session): ActionSession,
    Path(id): Path<String>,
    Form(f): Form<OneForm>,
) -> Response {
    if let Err(refused) = session.allow(&f.csrf, Scope::Write) {
        return refused.into_response();
    }
    let reason = format!("processed again by {} in the dashboard", session.operator());
    match st.service.reprocess_with(&id, Some(&reason), None).await {
        Ok(Outcome::Applied { status, .. }) => {
            tracing::info!(conversion = %id, operator = %session.operator(), %status, "reprocessed");
            let mut to = url::form_urlencoded::Serializer::new(String::new());
            to.append_pair("reprocessed", &id).append_pair("now", status.as_str());
            let page = if f.back == "review" {
                "/dashboard/review".to_string()
            } else {
                format!("/dashboard/conversions/{}", urlencode(&id))
            };
            Redirect::to(&format!("{page}?{}", to.finish())).into_response()
        }
        Ok(Outcome::Ignored { reason, .. }) => super::refusal(StatusCode::CONFLICT, &format!("{id}: {reason}")),
        Ok(other) => super::refusal(StatusCode::CONFLICT, &format!("{id}: {other:?}")),
        Err(ServiceError::NotFound(why)) => super::refusal(StatusCode::NOT_FOUND, &why),
        Err(ServiceError::Invalid(why)) => super::refusal(StatusCode::UNPROCESSABLE_ENTITY, &why),
        Err(e) => unavailable("cannot process the conversion again", &e),
    }
}

fn urlencode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct AllForm {
    csrf: String,
    status: String,
    merchant: String,
}

/// `POST /dashboard/reprocess` `status=failed|parked&merchant=` (empty: every merchant).
pub(super) async fn all(
    State(st): State<AppState>,
    ActionSession(session): ActionSession,
    Form(f): Form<AllForm>,
) -> Response {
    if let Err(refused) = session.allow(&f.csrf, Scope::Write) {
        return refused.into_response();
    }
    let status = match Status::parse(&f.status) {
        Some(s @ (Status::Failed | Status::Parked)) => s,
        _ => {
            return super::refusal(StatusCode::BAD_REQUEST, &format!("status: {:?} is not failed or parked", f.status));
        }
    };
    let merchant = Some(f.merchant.trim()).filter(|m| !m.is_empty());
    let reason = format!("processed again by {} in the dashboard", session.operator());
    match st.service.reprocess_all(merchant, status, &reason).await {
        Ok((done, still)) => {
            tracing::info!(operator = %session.operator(), %status, done, still, "bulk reprocess");
            let mut to = url::form_urlencoded::Serializer::new(String::new());
            to.append_pair("bulk", status.as_str())
                .append_pair("done_count", &done.to_string())
                .append_pair("still", &still.to_string());
            Redirect::to(&format!("/dashboard/review?{}", to.finish())).into_response()
        }
        Err(ServiceError::NotFound(why)) => super::refusal(StatusCode::NOT_FOUND, &why),
        Err(ServiceError::Invalid(why)) => super::refusal(StatusCode::UNPROCESSABLE_ENTITY, &why),
        Err(e) => unavailable("cannot process the conversions again", &e),
    }
}

/// The button on a conversion's page (or a queue row) for a parked or failed conversion.
pub(super) fn button(session: &Session, id: &str, back: &str) -> Markup {
    html! {
        form.inline method="post" action={ "/dashboard/conversions/" (urlencode(id)) "/reprocess" } {
            (session.csrf_field())
            input type="hidden" name="back" value=(back);
            button.reprocess type="submit" { "Reprocess" }
        }
    }
}

/// The review page's section of conversions that wait for something else than a person:
/// parked (customer not found, merchant unknown) and failed (a plugin failed).
pub(super) fn waiting_section(
    session: &Session,
    waiting: &[crate::conversions::store::ConversionRow],
    merchants: &[String],
    next: Option<&str>,
) -> Markup {
    let can_act = session.scope() >= Scope::Write;
    html! {
        section.card #waiting {
            h2 { "Parked and failed" }
            p.lede {
                "Parked: the click, the user or the merchant is not known yet (INGEST.md lists what resolves each). "
                "Failed: a plugin failed; replace it, then process the conversions again. "
                "Each is credited at most once."
            }
            @if can_act {
                form.inline #reprocess-all method="post" action="/dashboard/reprocess" {
                    (session.csrf_field())
                    select name="status" aria-label="status" {
                        option value="failed" { "every failed" }
                        option value="parked" { "every parked" }
                    }
                    select name="merchant" aria-label="merchant" {
                        option value="" { "of every merchant" }
                        @for m in merchants { option value=(m) { "of " (m) } }
                    }
                    button.reprocess type="submit" { "Reprocess" }
                }
            }
            @if waiting.is_empty() {
                p.empty { "Nothing is parked or failed." }
            } @else {
                div.table-wrap {
                    table #waiting-list {
                        thead { tr {
                            th { "Conversion" } th { "Status" } th { "Merchant" } th { "User" } th.num { "Amount" }
                            th { "Why" } th { "Reported" } @if can_act { th {} }
                        } }
                        tbody {
                            @for c in waiting {
                                tr data-conversion=(c.id) {
                                    td { (conversion_link(&c.id)) div.muted { (c.network_id) " · " (c.transaction_id) } }
                                    td { (super::badge(c.status)) }
                                    td.nowrap { (c.merchant_id.as_deref().unwrap_or("—")) }
                                    td { (c.user_id.as_deref().unwrap_or("—")) }
                                    td.num { (money(c.amount, &c.currency)) }
                                    td.why { (c.status_reason.as_deref().unwrap_or("")) }
                                    td.nowrap { (time(c.reported_at)) }
                                    @if can_act { td { (button(session, &c.id, "review")) } }
                                }
                            }
                        }
                    }
                }
                @if let Some(href) = next { p { a.next #waiting-next rel="next" href=(href) { "Next page →" } } }
            }
        }
    }
}
