//! Partner callbacks: the delivery log (every attempt with its status and latency),
//! replay, the endpoints with the callback tester, and alerts. Signatures are shown
//! masked, secrets never (an endpoint shows how many it has).

use super::{ActionSession, Nav, Session, conversion_link, layout, notice, time, time_opt, unavailable};
use crate::auth::Scope;
use crate::callbacks::deliver::{self, AttemptView, DeliveryFilter, DeliveryView, RequestView, TestReport};
use crate::callbacks::{self, CallbackError, Deliverer, DeliveryConfig, EndpointView};
use crate::http::AppState;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use maud::{Markup, html};
use serde::Deserialize;

fn failed(e: CallbackError) -> Response {
    match e {
        CallbackError::Invalid(why) => super::refusal(StatusCode::UNPROCESSABLE_ENTITY, &why),
        CallbackError::NotFound(why) => super::refusal(StatusCode::NOT_FOUND, &why),
        CallbackError::Conflict(why) => super::refusal(StatusCode::CONFLICT, &why),
        CallbackError::Db(e) => unavailable("cannot read or write callbacks", &e),
    }
}

fn state_badge(state: &str) -> Markup {
    html! { span class={ "badge badge-" (state) } { (state) } }
}

/// What a delivery tells of: its conversion (a link), or the click whose CREATED it is
/// (seed 001: sent on the click; there is no conversion to link to).
fn subject(d: &DeliveryView) -> Markup {
    match &d.conversion_id {
        Some(id) => conversion_link(id),
        None => html! { span.muted { "click " } code { (d.click_id.as_deref().unwrap_or("")) } },
    }
}

/// Which changes an endpoint is sent: its states, and its merchant, network and ref_id
/// filters.
fn sends(e: &EndpointView) -> Markup {
    html! {
        @match &e.states {
            None => { "every state" }
            Some(states) => { (states.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")) }
        }
        @if let Some(m) = &e.merchant_id { div.muted { "merchant " code { (m) } } }
        @if let Some(n) = &e.network_id { div.muted { "network " code { (n) } } }
        @if e.require_ref_id { div.muted { "only with a ref_id" } }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct Filter {
    state: String,
    endpoint: String,
    conversion: String,
    click: String,
    replayed: String,
    /// The last delivery id of the previous page.
    before: String,
}

/// Deliveries a page of the log shows.
const PAGE: i64 = 200;

fn opt(s: &str) -> Option<String> {
    Some(s.trim().to_string()).filter(|s| !s.is_empty())
}

/// `GET /dashboard/deliveries?state=&endpoint=&conversion=&click=`.
pub(super) async fn page(State(st): State<AppState>, session: Session, Query(q): Query<Filter>) -> Response {
    let db = st.service.db();
    let filter = DeliveryFilter {
        endpoint_id: opt(&q.endpoint),
        state: opt(&q.state),
        conversion_id: opt(&q.conversion),
        click_id: opt(&q.click),
        limit: Some(PAGE + 1),
        before: q.before.parse().ok(),
        ..DeliveryFilter::default()
    };
    let (mut list, endpoints, alerts) =
        match (deliver::deliveries(db, &filter).await, callbacks::endpoints(db).await, callbacks::alerts(db, 10).await)
        {
            (Ok(l), Ok(e), Ok(a)) => (l, e, a),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return failed(e),
        };
    // One row more than shown says whether there is an older page; its link keeps the filters.
    let older = if list.len() as i64 > PAGE {
        list.truncate(PAGE as usize);
        list.last().map(|d| {
            let mut to = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in
                [("state", &q.state), ("endpoint", &q.endpoint), ("conversion", &q.conversion), ("click", &q.click)]
            {
                if !v.is_empty() {
                    to.append_pair(k, v);
                }
            }
            to.append_pair("before", &d.id.to_string());
            format!("/dashboard/deliveries?{}", to.finish())
        })
    } else {
        None
    };
    let can_act = session.scope() >= Scope::Write;
    let body = html! {
        @if let Some(id) = opt(&q.replayed) { (notice("ok", &format!("{id} replayed: it is due now, with a fresh count of attempts and the same message id."))) }
        @if !alerts.is_empty() {
            section.card {
                h2 { "Alerts" }
                table #alerts {
                    thead { tr { th { "When" } th { "Kind" } th { "About" } th { "What happened" } } }
                    tbody { @for a in &alerts { tr { td.nowrap { (time(a.at)) } td { code { (a.kind) } } td { (a.subject) } td { (a.message) } } } }
                }
            }
        }
        section.card {
            h2 { "Endpoints" }
            @if endpoints.is_empty() {
                p.empty { "No partner endpoint: add one with " code { "cashbackd endpoint add" } "." }
            } @else {
                div.table-wrap {
                    table #endpoints {
                        thead { tr { th { "Endpoint" } th { "Partner" } th { "Request" } th { "Sends" } th { "Signing" } th { "Retries" } th { "State" } th.num { "Backlog" } @if can_act { th { "Tester" } } } }
                        tbody {
                            @for e in &endpoints {
                                tr {
                                    td { a href={ "/dashboard/deliveries?endpoint=" (e.id) } { strong { (e.id) } } }
                                    td { (e.partner_id) }
                                    td { (e.method.as_str()) " " code { (e.url_template) }
                                        @if !e.params.is_empty() { div.muted { "static params: " (e.params.keys().cloned().collect::<Vec<_>>().join(", ")) } } }
                                    td { (sends(e)) }
                                    td { @match e.secrets.len() { 0 => { span.muted { "unsigned" } } 1 => { "1 secret" } n => { (n) " secrets (rotating)" } } }
                                    td.nowrap { (e.retry.max_attempts) " tries, " (e.retry.backoff.as_str()) }
                                    td {
                                        @if e.enabled { span.badge.badge-ok { "enabled" } } @else { span.badge.badge-failed { "disabled" } }
                                        @if e.consecutive_failures > 0 { div.muted { (e.consecutive_failures) " failures in a row" } }
                                        @if let Some(why) = &e.disabled_reason { div.muted { (why) } }
                                    }
                                    td.num { (e.backlog) }
                                    @if can_act {
                                        td {
                                            form.inline method="post" action={ "/dashboard/endpoints/" (e.id) "/test" } {
                                                (session.csrf_field())
                                                button type="submit" title="send a sample callback and show the exact request and response" { "Send a test" }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        section.card {
            h2 { "Delivery log" }
            form.filters method="get" action="/dashboard/deliveries" {
                label { "State" select name="state" {
                    option value="" { "any" }
                    @for s in ["pending", "delivered", "failed", "skipped"] { option value=(s) selected[q.state == s] { (s) } }
                } }
                label { "Endpoint" select name="endpoint" {
                    option value="" { "any" }
                    @for e in &endpoints { option value=(e.id) selected[q.endpoint == e.id] { (e.id) } }
                } }
                label { "Conversion" input type="text" name="conversion" value=(q.conversion) placeholder="cv_…"; }
                label { "Click" input type="text" name="click" value=(q.click) placeholder="its CREATED"; }
                button.primary type="submit" { "Filter" }
            }
            @if list.is_empty() {
                p.empty { "No delivery." }
            } @else {
                div.table-wrap {
                    table #deliveries {
                        thead { tr {
                            th { "Message" } th { "Endpoint" } th { "Conversion or click" } th { "Tells" } th { "State" } th.num { "Attempts" }
                            th { "Last answer" } th { "Created" } th { "Delivered / next try" } @if can_act { th {} }
                        } }
                        tbody {
                            @for d in &list {
                                tr {
                                    td { a href={ "/dashboard/deliveries/" (d.id) } { code { (d.message_id) } } }
                                    td { (d.endpoint_id) }
                                    td { (subject(d)) }
                                    td { (d.conversion_state) }
                                    td { (state_badge(&d.state)) }
                                    td.num { (d.attempts) }
                                    td { @if let Some(s) = d.last_status { code { (s) } " " } span.muted { (d.last_error.as_deref().unwrap_or("")) } }
                                    td.nowrap { (time(d.created_at)) }
                                    td.nowrap { @if d.state == "pending" { span.muted { "next " (time(d.next_attempt_at)) } } @else { (time_opt(d.delivered_at)) } }
                                    @if can_act { td { @if d.state != "pending" { (replay_button(&session, d.id)) } } }
                                }
                            }
                        }
                    }
                }
                @if let Some(href) = &older { p { a.next rel="next" href=(href) { "Older →" } } }
            }
        }
    };
    layout(&session, Nav::Deliveries, "Deliveries", body).into_response()
}

fn replay_button(session: &Session, id: i64) -> Markup {
    html! {
        form.inline method="post" action={ "/dashboard/deliveries/" (id) "/replay" } {
            (session.csrf_field())
            button type="submit" { "Replay" }
        }
    }
}

fn request_box(r: &RequestView) -> Markup {
    let mut text = format!("{} {}\n", r.method, r.url);
    for (k, v) in &r.headers {
        text.push_str(&format!("{k}: {v}\n"));
    }
    if let Some(b) = &r.body {
        text.push('\n');
        text.push_str(b);
    }
    html! { pre.box { (text) } }
}

fn attempts_table(attempts: &[AttemptView]) -> Markup {
    html! {
        table #attempts {
            thead { tr { th { "#" } th { "Started" } th.num { "Latency" } th { "Status" } th { "Outcome" } th { "Request (signatures masked) and answer" } } }
            tbody {
                @for a in attempts {
                    tr {
                        td { (a.attempt) }
                        td.nowrap { (time(a.started_at)) }
                        td.num { (a.latency_ms) " ms" }
                        td { @match a.status { Some(s) => { code { (s) } } None => { span.muted { "no answer" } } } }
                        td { (state_badge(&a.outcome)) }
                        td {
                            (request_box(&a.request))
                            @if let Some(e) = &a.error { div.notice.notice-error { (e) } }
                            @if let Some(x) = &a.response_excerpt { @if !x.is_empty() { pre.box { (x) } } }
                        }
                    }
                }
            }
        }
    }
}

/// `GET /dashboard/deliveries/{id}` (`cbk_d17` or `17`): the delivery and every attempt.
pub(super) async fn show(State(st): State<AppState>, session: Session, Path(id): Path<String>) -> Response {
    let Ok(n) = id.trim_start_matches("cbk_d").parse::<i64>() else {
        return super::refusal(StatusCode::NOT_FOUND, &format!("{id:?} is not a delivery id"));
    };
    let (d, attempts) = match deliver::delivery(st.service.db(), n).await {
        Ok(x) => x,
        Err(e) => return failed(e),
    };
    let can_act = session.scope() >= Scope::Write;
    let body = html! {
        section.card {
            dl.facts {
                dt { "Message id" } dd { code { (d.message_id) } }
                dt { "Endpoint" } dd { (d.endpoint_id) }
                @if d.conversion_id.is_some() {
                    dt { "Conversion" } dd { (subject(&d)) " version " (d.version) ", tells " (d.conversion_state) }
                } @else {
                    dt { "Click" } dd { (subject(&d)) ", tells " (d.conversion_state) " (sent on the click)" }
                }
                dt { "State" } dd { (state_badge(&d.state)) " after " (d.attempts) " attempts" }
                dt { "Created" } dd { (time(d.created_at)) }
                dt { "Delivered" } dd { (time_opt(d.delivered_at)) }
                @if d.state == "pending" { dt { "Next try" } dd { (time(d.next_attempt_at)) } }
            }
            @if can_act && d.state != "pending" { p { (replay_button(&session, d.id)) } }
        }
        section.card {
            h2 { "Attempts" }
            @if attempts.is_empty() { p.empty { "Not sent yet." } } @else { (attempts_table(&attempts)) }
        }
    };
    layout(&session, Nav::Deliveries, &format!("Delivery {}", d.message_id), body).into_response()
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct CsrfForm {
    csrf: String,
}

/// `POST /dashboard/deliveries/{id}/replay`.
pub(super) async fn replay(
    State(st): State<AppState>,
    ActionSession(session): ActionSession,
    Path(id): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    if let Err(r) = session.allow(&f.csrf, Scope::Write) {
        return r.into_response();
    }
    let Ok(n) = id.trim_start_matches("cbk_d").parse::<i64>() else {
        return super::refusal(StatusCode::BAD_REQUEST, &format!("{id:?} is not a delivery id"));
    };
    match deliver::replay(st.service.db(), n, st.service.now()).await {
        Ok(()) => {
            tracing::info!(delivery = n, operator = %session.operator(), "delivery replayed from the dashboard");
            Redirect::to(&format!("/dashboard/deliveries?replayed={}", deliver::message_id(n))).into_response()
        }
        Err(e) => failed(e),
    }
}

/// The tester's request with its signature masked: the page shows what was sent, not
/// what would let someone forge it.
fn masked(mut r: RequestView, signature_param: &str) -> RequestView {
    for (k, v) in &mut r.headers {
        if k.eq_ignore_ascii_case("webhook-signature") {
            *v = v.split(' ').map(|_| "v1,***").collect::<Vec<_>>().join(" ");
        }
    }
    if let Ok(mut url) = url::Url::parse(&r.url) {
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        if pairs.iter().any(|(k, _)| k == signature_param) {
            url.query_pairs_mut().clear().extend_pairs(
                pairs.iter().map(|(k, v)| (k.as_str(), if k == signature_param { "***" } else { v.as_str() })),
            );
            r.url = url.to_string();
        }
    }
    r
}

/// `POST /dashboard/endpoints/{id}/test`: sends a sample callback and shows the exact
/// request and what came back (logged as a `test` attempt).
pub(super) async fn test(
    State(st): State<AppState>,
    deliverer: Option<Extension<Deliverer>>,
    ActionSession(session): ActionSession,
    Path(id): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    if let Err(r) = session.allow(&f.csrf, Scope::Write) {
        return r.into_response();
    }
    let deliverer = match deliverer {
        Some(Extension(d)) => d,
        None => match Deliverer::new(
            st.service.db().clone(),
            st.service.clock(),
            DeliveryConfig::default(),
            "dashboard-tester",
        ) {
            Ok(d) => d.with_plugins(st.service.runtime().clone()),
            Err(e) => return failed(e),
        },
    };
    let endpoint = match callbacks::endpoint(st.service.db(), &id).await {
        Ok(e) => e,
        Err(e) => return failed(e),
    };
    let report: TestReport = match deliverer.test(&id).await {
        Ok(r) => r,
        Err(e) => return failed(e),
    };
    let request = masked(report.request.clone(), &endpoint.spec.signature_param);
    let why = report.error.clone().unwrap_or_else(|| {
        report.response.as_ref().map_or("no answer".into(), |r| format!("the endpoint answered {}", r.status))
    });
    let body = html! {
        @if report.delivered {
            (notice("ok", &format!("The endpoint answered 200 in {} ms: a real callback would count as delivered.", report.latency_ms)))
        } @else {
            (notice("error", &format!("Not delivered: {why}. Only a 200 counts (seed 003: a redirect is a failure).")))
        }
        section.card #tester {
            h2 { "Request sent" }
            (request_box(&request))
            h2 { "Response" }
            @match &report.response {
                Some(r) => {
                    p { "Status " code { (r.status) } " · " (report.latency_ms) " ms" @if r.truncated { " · body truncated" } }
                    pre.box { @for (k, v) in &r.headers { (k) ": " (v) "\n" } "\n" (r.body_excerpt) }
                }
                None => { p.muted { (report.error.as_deref().unwrap_or("no answer")) } }
            }
        }
        p { a href="/dashboard/deliveries" { "Back to the deliveries" } }
    };
    layout(&session, Nav::Deliveries, &format!("Tester: {id}"), body).into_response()
}
