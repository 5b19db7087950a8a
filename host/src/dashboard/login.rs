//! Signing in with an admin API token, and out.

use super::{ActionSession, COOKIE, LOGIN_COOKIE, SESSION_MS};
use crate::auth::{self, AuthError, Scope};
use crate::http::AppState;
use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;

/// How long the login form's CSRF cookie lasts: an hour to type a token in.
const LOGIN_SECONDS: u32 = 3600;

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct LoginQuery {
    next: String,
    why: String,
}

/// Where to go after signing in: a dashboard path only (never another site).
fn safe_next(next: &str) -> &str {
    let ok = (next == "/dashboard" || next.starts_with("/dashboard/") || next.starts_with("/dashboard?"))
        && !next.contains("//")
        && !next.contains('\\')
        && !next.starts_with("/dashboard/login")
        && !next.starts_with("/dashboard/overview.json");
    if ok { next } else { "/dashboard" }
}

fn login_page(next: &str, message: Option<&str>, csrf: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Sign in · cashbackd" }
                link rel="stylesheet" href="/dashboard/static/style.css";
            }
            body.bare {
                main.narrow {
                    div.card.login {
                        div.brand-big { "cashbackd" }
                        h1 { "Sign in" }
                        @if let Some(m) = message { div.notice.notice-error role="alert" { (m) } }
                        form method="post" action="/dashboard/login" {
                            input type="hidden" name="next" value=(safe_next(next));
                            input type="hidden" name="csrf" value=(csrf);
                            label for="token" { "Admin API token" }
                            input #token type="password" name="token" autocomplete="off" autofocus required
                                placeholder="cbk_…";
                            button.primary type="submit" { "Sign in" }
                        }
                        p.hint {
                            "Create one with " code { "cashbackd token create NAME --scope write" }
                            ". Read tokens see everything; reviews, replays and jobs need write; plugin swaps need admin."
                        }
                    }
                }
            }
        }
    }
}

/// Whether the request came over HTTPS (through a proxy that says so): cookies get `Secure`.
fn secure(headers: &HeaderMap) -> &'static str {
    if headers.get("x-forwarded-proto").is_some_and(|v| v.as_bytes() == b"https") { "; Secure" } else { "" }
}

/// The login page with a fresh login CSRF token, in the form and in its cookie: the
/// double-submit pattern. A cross-site form cannot read the cookie nor, being
/// `SameSite=Strict`, send it.
fn login_response(status: StatusCode, headers: &HeaderMap, next: &str, message: Option<&str>) -> Response {
    let csrf = format!("{:032x}{:032x}", rand::random::<u128>(), rand::random::<u128>());
    let cookie = format!(
        "{LOGIN_COOKIE}={csrf}; Path=/dashboard/login; HttpOnly; SameSite=Strict; Max-Age={LOGIN_SECONDS}{}",
        secure(headers)
    );
    let mut response = (status, login_page(next, message, &csrf)).into_response();
    response.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).expect("hex is a header value"));
    response
}

/// `GET /dashboard/login`.
pub(super) async fn form(headers: HeaderMap, Query(q): Query<LoginQuery>) -> Response {
    let message = match q.why.as_str() {
        "expired" => Some("Your session has expired: sign in again."),
        "revoked" => Some("Your session was signed out or its token revoked: sign in again."),
        "invalid" => Some("Your session is no longer valid: sign in again."),
        _ => None,
    };
    login_response(StatusCode::OK, &headers, &q.next, message)
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct LoginForm {
    token: String,
    next: String,
    csrf: String,
}

/// `POST /dashboard/login`: checks the login CSRF token, then the API token; on success
/// opens a session, whose random id the cookie holds.
pub(super) async fn submit(State(st): State<AppState>, headers: HeaderMap, Form(f): Form<LoginForm>) -> Response {
    let expected = super::cookie_in(&headers, LOGIN_COOKIE).unwrap_or_default();
    let csrf_ok: bool =
        !expected.is_empty() && bool::from(subtle::ConstantTimeEq::ct_eq(f.csrf.as_bytes(), expected.as_bytes()));
    if !csrf_ok {
        tracing::info!("dashboard sign-in refused: no or wrong login CSRF token");
        return login_response(
            StatusCode::FORBIDDEN,
            &headers,
            &f.next,
            Some("This sign-in form is stale or was not sent by this dashboard: try again."),
        );
    }
    let token = f.token.trim();
    // Tokens we issue are `cbk_` and hex; anything else cannot be one.
    let plausible =
        !token.is_empty() && token.len() <= 256 && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    let checked = if plausible {
        auth::caller(st.service.db(), token, Scope::Read, st.service.now()).await
    } else {
        Err(AuthError::Invalid)
    };
    match checked {
        Ok(caller) => {
            let (secret, session) =
                match auth::open_session(st.service.db(), &caller, st.service.now(), SESSION_MS).await {
                    Ok(s) => s,
                    Err(e) => return super::unavailable("cannot open a session", &e),
                };
            tracing::info!(token = %caller.id, name = %caller.name, session = %session.id, "dashboard sign-in");
            let secure = secure(&headers);
            let cookie = format!(
                "{COOKIE}={secret}; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
                SESSION_MS / 1000
            );
            let mut response = Redirect::to(safe_next(&f.next)).into_response();
            let h = response.headers_mut();
            h.append(header::SET_COOKIE, HeaderValue::from_str(&cookie).expect("hex is a header value"));
            // The login token is spent.
            h.append(
                header::SET_COOKIE,
                HeaderValue::from_str(&format!(
                    "{LOGIN_COOKIE}=; Path=/dashboard/login; HttpOnly; SameSite=Strict; Max-Age=0{secure}"
                ))
                .expect("ascii"),
            );
            response
        }
        Err(AuthError::Unavailable) => super::refusal(StatusCode::SERVICE_UNAVAILABLE, "cannot check the token; retry"),
        Err(e) => {
            tracing::info!(reason = %e, "dashboard sign-in refused");
            let why = match e {
                AuthError::Expired => "This token has expired.",
                AuthError::Revoked => "This token was revoked.",
                _ => "This is not a valid token.",
            };
            login_response(StatusCode::UNAUTHORIZED, &headers, &f.next, Some(why))
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct LogoutForm {
    csrf: String,
}

/// `POST /dashboard/logout`: revokes the session on the server (the cookie alone would be
/// forgotten by this browser only), and forgets the cookie. The token stays valid: revoke
/// it with `cashbackd token revoke`.
pub(super) async fn logout(
    State(st): State<AppState>,
    ActionSession(session): ActionSession,
    Form(f): Form<LogoutForm>,
) -> Response {
    if let Err(refused) = session.allow(&f.csrf, Scope::Read) {
        return refused.into_response();
    }
    if let Err(e) = auth::close_session(st.service.db(), &session.secret, st.service.now()).await {
        return super::unavailable("cannot sign out", &e);
    }
    tracing::info!(name = %session.operator(), "dashboard sign-out");
    let mut response = Redirect::to("/dashboard/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("cashbackd_session=; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    response
}
