//! Signing in with an admin API token, and out.

use super::{ActionSession, COOKIE};
use crate::auth::{self, AuthError, Scope};
use crate::http::AppState;
use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;

/// How long the browser keeps the session cookie (the token's own expiry still applies).
const SESSION_SECONDS: u32 = 12 * 3600;

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

fn login_page(next: &str, message: Option<&str>) -> Markup {
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

/// `GET /dashboard/login`.
pub(super) async fn form(Query(q): Query<LoginQuery>) -> Markup {
    let message = match q.why.as_str() {
        "expired" => Some("Your token has expired: sign in with another."),
        "revoked" => Some("Your token was revoked: sign in with another."),
        "invalid" => Some("Your session is no longer valid: sign in again."),
        _ => None,
    };
    login_page(&q.next, message)
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct LoginForm {
    token: String,
    next: String,
}

/// `POST /dashboard/login`: checks the token; on success the session cookie holds it.
pub(super) async fn submit(State(st): State<AppState>, headers: HeaderMap, Form(f): Form<LoginForm>) -> Response {
    let token = f.token.trim();
    // Tokens we issue are `cbk_` and hex; anything else cannot be one, and must never
    // reach a header.
    let plausible =
        !token.is_empty() && token.len() <= 256 && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    let checked = if plausible {
        auth::caller(st.service.db(), token, Scope::Read, st.service.now()).await
    } else {
        Err(AuthError::Invalid)
    };
    match checked {
        Ok(caller) => {
            tracing::info!(token = %caller.id, name = %caller.name, "dashboard sign-in");
            let secure = headers.get("x-forwarded-proto").is_some_and(|v| v.as_bytes() == b"https");
            let cookie = format!(
                "{COOKIE}={token}; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECONDS}{}",
                if secure { "; Secure" } else { "" }
            );
            let mut response = Redirect::to(safe_next(&f.next)).into_response();
            match HeaderValue::from_str(&cookie) {
                Ok(v) => {
                    response.headers_mut().insert(header::SET_COOKIE, v);
                    response
                }
                Err(_) => super::refusal(StatusCode::BAD_REQUEST, "this token cannot be used here"),
            }
        }
        Err(AuthError::Unavailable) => super::refusal(StatusCode::SERVICE_UNAVAILABLE, "cannot check the token; retry"),
        Err(e) => {
            tracing::info!(reason = %e, "dashboard sign-in refused");
            let why = match e {
                AuthError::Expired => "This token has expired.",
                AuthError::Revoked => "This token was revoked.",
                _ => "This is not a valid token.",
            };
            (StatusCode::UNAUTHORIZED, login_page(&f.next, Some(why))).into_response()
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct LogoutForm {
    csrf: String,
}

/// `POST /dashboard/logout`: forgets the cookie (the token itself stays valid: revoke it
/// with `cashbackd token revoke`).
pub(super) async fn logout(ActionSession(session): ActionSession, Form(f): Form<LogoutForm>) -> Response {
    if let Err(refused) = session.allow(&f.csrf, Scope::Read) {
        return refused.into_response();
    }
    let mut response = Redirect::to("/dashboard/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("cashbackd_session=; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    response
}
