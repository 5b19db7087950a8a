//! The operators' dashboard (seed 002), served by cashbackd itself under `/dashboard`:
//! server-rendered HTML (maud: checked at compile time, every value escaped), no build
//! step, one small script for the overview's auto-refresh.
//!
//! | file | page |
//! |---|---|
//! | `login.rs` | sign in with an admin API token, sign out |
//! | `overview.rs` | seed 002's four metrics, refreshed as postbacks arrive (`overview.json`) |
//! | `review.rs` | the review queue: approve / reject / hold |
//! | `payouts.rs` | the payouts queue: approve / reject, mark paid (reference) / failed; one payout |
//! | `conversions.rs` | search, and one conversion's timeline, history and postings |
//! | `delays.rs` | seed 000's delays: purchase to tracked, per network and integration type |
//! | `plugins.rs` | versions, placements, shadow diff, backtest, activate, rollback |
//! | `backtests.rs` | backtest jobs: the list, a job's progress and result |
//! | `deliveries.rs` | partner callbacks: the log, replay, the tester |
//! | `jobs.rs` | scheduled jobs, their runs, run now |
//! | `queries.rs` | what the pages read (public: the admin API can use the same) |
//!
//! **Sessions.** Signing in posts an admin API token (`cashbackd token create`) with the
//! login form's CSRF token (a random value also set as a `SameSite=Strict` cookie on the
//! login path: a form posted from another site carries no such cookie, so nobody can sign
//! a browser into their own account). The token is checked like a bearer token and never
//! stored in the browser: the session cookie (`HttpOnly`, `SameSite=Strict`, scoped to
//! `/dashboard`) holds a random 256-bit session id, and the server keeps only its SHA-256
//! (`dashboard_sessions`), with the token it was opened with, that token's scope, and an
//! expiry (12 hours). Every request checks the session and its token again, so signing
//! out, `cashbackd session revoke`, or revoking or expiring the token ends it at once.
//! Pages need any valid session; actions are POST forms that need the write scope
//! (reviews, payouts, replays, the tester, running a job) or the admin scope (activating,
//! rolling back, shadowing plugins), and a CSRF token derived from the session id (an
//! HMAC of it: it proves the form came from a page this session was shown, and reveals
//! nothing of the id). Refusals: a page redirects to the login, an action answers 401 (no
//! valid session) or 403 (scope or CSRF token). No page ever shows a token, a session id
//! or a webhook secret.

mod backtests;
mod conversions;
mod delays;
mod deliveries;
mod jobs;
mod login;
mod overview;
mod payouts;
mod plugins;
pub mod queries;
mod reprocess;
mod review;

use crate::auth::{self, AuthError, Caller, Scope};
use crate::conversions::Status;
use crate::http::AppState;
use axum::Router;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use hmac::{Hmac, Mac};
use maud::{DOCTYPE, Markup, html};
use sha2::Sha256;

/// The session cookie's name.
pub const COOKIE: &str = "cashbackd_session";

/// The login form's CSRF cookie (path `/dashboard/login`).
pub const LOGIN_COOKIE: &str = "cashbackd_login";

/// How long a session lasts (the token's own expiry still applies).
pub const SESSION_MS: i64 = 12 * 3600 * 1000;

/// Every page, as the refusal test walks them (keep in step with [`routes`]).
pub const PAGES: &[&str] = &[
    "/dashboard",
    "/dashboard/overview.json",
    "/dashboard/review",
    "/dashboard/payouts",
    "/dashboard/payouts/po_x",
    "/dashboard/conversions",
    "/dashboard/conversions/cv_x",
    "/dashboard/delays",
    "/dashboard/plugins",
    "/dashboard/backtests",
    "/dashboard/backtests/1",
    "/dashboard/deliveries",
    "/dashboard/deliveries/1",
    "/dashboard/jobs",
];

/// Every action and the scope it needs (keep in step with [`routes`]).
pub const ACTIONS: &[(&str, Scope)] = &[
    ("/dashboard/review/cv_x", Scope::Write),
    ("/dashboard/conversions/cv_x/reprocess", Scope::Write),
    ("/dashboard/reprocess", Scope::Write),
    ("/dashboard/payouts/po_x", Scope::Write),
    ("/dashboard/plugins/activate", Scope::Admin),
    ("/dashboard/plugins/rollback", Scope::Admin),
    ("/dashboard/plugins/shadow", Scope::Admin),
    ("/dashboard/plugins/unshadow", Scope::Admin),
    ("/dashboard/plugins/backtest", Scope::Read),
    ("/dashboard/deliveries/1/replay", Scope::Write),
    ("/dashboard/endpoints/x/test", Scope::Write),
    ("/dashboard/jobs/mature/run", Scope::Write),
    ("/dashboard/logout", Scope::Read),
];

/// The dashboard's routes (merged into the server's router).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/dashboard", get(overview::page))
        .route("/dashboard/overview.json", get(overview::json))
        .route("/dashboard/login", get(login::form).post(login::submit))
        .route("/dashboard/logout", post(login::logout))
        .route("/dashboard/review", get(review::page))
        .route("/dashboard/review/{id}", post(review::act))
        .route("/dashboard/payouts", get(payouts::page))
        .route("/dashboard/payouts/{id}", get(payouts::show).post(payouts::act))
        .route("/dashboard/conversions", get(conversions::search))
        .route("/dashboard/conversions/{id}", get(conversions::timeline))
        .route("/dashboard/conversions/{id}/reprocess", post(reprocess::one))
        .route("/dashboard/reprocess", post(reprocess::all))
        .route("/dashboard/delays", get(delays::page))
        .route("/dashboard/plugins", get(plugins::page))
        .route("/dashboard/plugins/activate", post(plugins::activate))
        .route("/dashboard/plugins/rollback", post(plugins::rollback))
        .route("/dashboard/plugins/shadow", post(plugins::shadow))
        .route("/dashboard/plugins/unshadow", post(plugins::unshadow))
        .route("/dashboard/plugins/backtest", post(plugins::backtest))
        .route("/dashboard/backtests", get(backtests::list))
        .route("/dashboard/backtests/{id}", get(backtests::show))
        .route("/dashboard/deliveries", get(deliveries::page))
        .route("/dashboard/deliveries/{id}", get(deliveries::show))
        .route("/dashboard/deliveries/{id}/replay", post(deliveries::replay))
        .route("/dashboard/endpoints/{id}/test", post(deliveries::test))
        .route("/dashboard/jobs", get(jobs::page))
        .route("/dashboard/jobs/{name}/run", post(jobs::run))
        .route("/dashboard/static/style.css", get(|| asset("text/css; charset=utf-8", include_str!("style.css"))))
        .route(
            "/dashboard/static/refresh.js",
            get(|| asset("text/javascript; charset=utf-8", include_str!("refresh.js"))),
        )
        .layer(axum::middleware::map_response(harden))
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "max-age=300")], body).into_response()
}

/// Headers on every dashboard response: nothing is cached (pages hold account data),
/// nothing runs but our own script, no page can be framed (actions are buttons).
async fn harden(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; script-src 'self'; connect-src 'self'; img-src 'self' data:; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    response
}

// ---- sessions ------------------------------------------------------------------------

/// A signed-in operator. The token stays inside: only its name, scope and the derived
/// CSRF token are ever rendered.
#[derive(Debug, Clone)]
pub struct Session {
    caller: Caller,
    csrf: String,
    /// The cookie's value: kept to sign this session out, never rendered.
    secret: String,
}

impl Session {
    /// The token's name: the operator recorded with every action.
    pub fn operator(&self) -> &str {
        &self.caller.name
    }

    /// The token's scope.
    pub fn scope(&self) -> Scope {
        self.caller.scope
    }

    /// Checks an action: the form's CSRF token first (a forged form learns nothing
    /// about scopes), then the scope.
    pub fn allow(&self, csrf: &str, needed: Scope) -> Result<(), Refused> {
        let ok: bool = subtle::ConstantTimeEq::ct_eq(csrf.as_bytes(), self.csrf.as_bytes()).into();
        if !ok {
            return Err(Refused::new(
                StatusCode::FORBIDDEN,
                "this form is stale or was not sent by the dashboard: reload the page and try again",
            ));
        }
        if self.caller.scope < needed {
            return Err(Refused::new(
                StatusCode::FORBIDDEN,
                format!("this needs the {} scope; your token has {}", needed.as_str(), self.caller.scope.as_str()),
            ));
        }
        Ok(())
    }

    /// The hidden field every action form carries.
    pub fn csrf_field(&self) -> Markup {
        html! { input type="hidden" name="csrf" value=(self.csrf); }
    }
}

/// The CSRF token of a session: an HMAC of a fixed label keyed by the session's id.
fn csrf_for(secret: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(b"cashbackd dashboard csrf v2");
    hex::encode(mac.finalize().into_bytes())
}

/// The value of cookie `name`, if the request sent a non-empty one.
fn cookie(parts: &Parts, name: &str) -> Option<String> {
    cookie_in(&parts.headers, name)
}

fn cookie_in(headers: &axum::http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
        .filter(|v| !v.is_empty())
}

async fn session_of(parts: &Parts, st: &AppState) -> Result<Session, AuthError> {
    let secret = cookie(parts, COOKIE).ok_or(AuthError::Missing)?;
    let session = auth::session(st.service.db(), &secret, st.service.now()).await?;
    Ok(Session { caller: session.caller, csrf: csrf_for(&secret), secret })
}

/// A page's session: without a valid one, the login page (then back here).
impl FromRequestParts<AppState> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Self::Rejection> {
        match session_of(parts, st).await {
            Ok(s) => Ok(s),
            Err(AuthError::Unavailable) => {
                Err(refusal(StatusCode::SERVICE_UNAVAILABLE, "cannot check the session; retry"))
            }
            Err(e) => {
                // The dashboard is merged, not nested: the URI is the one requested.
                let next = parts.uri.path_and_query().map_or("/dashboard", |p| p.as_str());
                let reason = match e {
                    AuthError::Expired => "expired",
                    AuthError::Revoked => "revoked",
                    AuthError::Missing => "",
                    _ => "invalid",
                };
                let mut to = url::form_urlencoded::Serializer::new(String::new());
                to.append_pair("next", next);
                if !reason.is_empty() {
                    to.append_pair("why", reason);
                }
                Err(Redirect::to(&format!("/dashboard/login?{}", to.finish())).into_response())
            }
        }
    }
}

/// An action's session: without a valid one, 401.
#[derive(Debug, Clone)]
pub struct ActionSession(pub Session);

impl FromRequestParts<AppState> for ActionSession {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Self::Rejection> {
        match session_of(parts, st).await {
            Ok(s) => Ok(ActionSession(s)),
            Err(AuthError::Unavailable) => {
                Err(refusal(StatusCode::SERVICE_UNAVAILABLE, "cannot check the session; retry"))
            }
            Err(e) => Err(refusal(StatusCode::UNAUTHORIZED, &format!("sign in first ({e})"))),
        }
    }
}

/// Why a request was refused; answered as a [`refusal`] page.
#[derive(Debug)]
pub struct Refused {
    status: StatusCode,
    why: String,
}

impl Refused {
    /// A refusal with `status` and the reason shown to the operator.
    pub fn new(status: StatusCode, why: impl Into<String>) -> Refused {
        Refused { status, why: why.into() }
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        refusal(self.status, &self.why)
    }
}

/// The `limit` of a dashboard list, checked as the API checks it (text in the query: a
/// form field may be anything).
pub(super) fn page_limit(raw: &str) -> Result<i64, String> {
    let asked = match raw.trim() {
        "" => None,
        t => Some(t.parse::<i64>().map_err(|_| format!("limit: {t:?} is not a number"))?),
    };
    crate::http::page::checked_limit(asked)
}

/// A refusal page: the status and why, with a way back.
pub fn refusal(status: StatusCode, why: &str) -> Response {
    let body = html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { (status.as_u16()) " · cashbackd" } link rel="stylesheet" href="/dashboard/static/style.css"; }
            body.bare {
                main.narrow {
                    div.card {
                        h1 { (status.canonical_reason().unwrap_or("Refused")) }
                        p { (why) }
                        p { a href="/dashboard" { "Back to the dashboard" } " · " a href="/dashboard/login" { "Sign in" } }
                    }
                }
            }
        }
    };
    (status, body).into_response()
}

/// An error while rendering: logged; the operator sees that it failed, not why.
pub fn unavailable(context: &str, error: &dyn std::fmt::Display) -> Response {
    tracing::error!(error = %error, "dashboard: {context}");
    refusal(StatusCode::SERVICE_UNAVAILABLE, &format!("{context}; retry later"))
}

// ---- layout ----------------------------------------------------------------------------

/// The pages of the navigation bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    /// Overview.
    Overview,
    /// Review queue.
    Review,
    /// Payouts.
    Payouts,
    /// Conversions.
    Conversions,
    /// Delays.
    Delays,
    /// Plugins.
    Plugins,
    /// Deliveries.
    Deliveries,
    /// Jobs.
    Jobs,
}

const NAV: [(Nav, &str, &str); 8] = [
    (Nav::Overview, "/dashboard", "Overview"),
    (Nav::Review, "/dashboard/review", "Review queue"),
    (Nav::Payouts, "/dashboard/payouts", "Payouts"),
    (Nav::Conversions, "/dashboard/conversions", "Conversions"),
    (Nav::Delays, "/dashboard/delays", "Delays"),
    (Nav::Plugins, "/dashboard/plugins", "Plugins"),
    (Nav::Deliveries, "/dashboard/deliveries", "Deliveries"),
    (Nav::Jobs, "/dashboard/jobs", "Jobs"),
];

/// A dashboard page in the shared layout.
pub fn layout(session: &Session, nav: Nav, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · cashbackd" }
                link rel="stylesheet" href="/dashboard/static/style.css";
            }
            body {
                header.top {
                    a.brand href="/dashboard" { "cashbackd" }
                    nav {
                        @for (item, href, label) in NAV {
                            a href=(href) class=[(item == nav).then_some("active")] { (label) }
                        }
                    }
                    div.who {
                        span.operator title="the token you signed in with" { (session.operator()) }
                        span class={ "scope scope-" (session.scope().as_str()) } { (session.scope().as_str()) }
                        form method="post" action="/dashboard/logout" {
                            (session.csrf_field())
                            button.linkish type="submit" { "Sign out" }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// A notice above a page's content (the outcome of the action that led here).
pub fn notice(kind: &str, text: &str) -> Markup {
    html! { div class={ "notice notice-" (kind) } role="status" { (text) } }
}

// ---- formatting ------------------------------------------------------------------------

/// A UTC time: `2026-01-01 12:00:00`.
pub fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map_or_else(|| ms.to_string(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
}

/// An optional UTC time, or a dash.
pub fn time_opt(ms: Option<i64>) -> String {
    ms.map_or_else(|| "—".into(), time)
}

/// Money for display only: minor units with the currency's exponent (`12.34 EUR`).
pub fn money(minor: i64, currency: &str) -> String {
    cashback_sdk::money::format(minor, currency)
}

/// A duration for people: `42 s`, `7 min`, `3.5 h`, `2.1 d`.
pub fn duration(ms: i64) -> String {
    let s = ms as f64 / 1000.0;
    if ms < 0 {
        format!("-{}", duration(-ms))
    } else if s < 60.0 {
        format!("{} s", s.round() as i64)
    } else if s < 3600.0 {
        format!("{:.0} min", s / 60.0)
    } else if s < 86_400.0 {
        format!("{:.1} h", s / 3600.0)
    } else {
        format!("{:.1} d", s / 86_400.0)
    }
}

/// Seed 002's status badges (and parked: customer not found).
pub fn badge(status: Status) -> Markup {
    let label = match status {
        Status::Processed => "Processed",
        Status::PendingReview => "Pending review",
        Status::Held => "Held",
        Status::Rejected => "Rejected",
        Status::Reversed => "Reversed",
        Status::Failed => "Failed",
        Status::Parked => "Customer not found",
    };
    html! { span class={ "badge badge-" (status.as_str()) } { (label) } }
}

/// A digest shortened for tables; the whole of it in the tooltip.
pub fn short_digest(digest: &str) -> Markup {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    html! { code title=(digest) { (hex.get(..12).unwrap_or(hex)) } }
}

/// A link to a conversion's timeline.
pub fn conversion_link(id: &str) -> Markup {
    html! { a href={ "/dashboard/conversions/" (id) } { code { (id) } } }
}
