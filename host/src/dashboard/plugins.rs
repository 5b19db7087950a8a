//! Plugins: stored versions and where each runs, the shadow candidates' differences,
//! backtests, and hot swaps (activate, roll back, shadow). Swaps need the admin scope,
//! as in the API; a backtest writes nothing and needs only read.

use super::queries::{self, Placement};
use super::{ActionSession, Nav, Refused, Session, layout, notice, short_digest, time, unavailable};
use crate::auth::Scope;
use crate::conversions::service::ServiceError;
use crate::http::AppState;
use crate::registry::{self, Target};
use axum::Form;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct Done {
    done: String,
    target: String,
}

fn refused(e: ServiceError) -> Response {
    match e {
        ServiceError::Db(e) => unavailable("the registry is unavailable", &e),
        other => super::refusal(StatusCode::UNPROCESSABLE_ENTITY, &other.to_string()),
    }
}

/// `GET /dashboard/plugins`.
pub(super) async fn page(State(st): State<AppState>, session: Session, Query(q): Query<Done>) -> Response {
    match render(&st, &session, &q).await {
        Ok(m) => m.into_response(),
        Err(r) => r,
    }
}

async fn render(st: &AppState, session: &Session, q: &Done) -> Result<Markup, Response> {
    let s = &st.service;
    let recent = super::backtests::newest(st, 5).await?;
    let versions = registry::versions(s, None).await.map_err(refused)?;
    let places = queries::placements(s.db()).await.map_err(|e| unavailable("cannot read the placements", &e))?;
    let mut diffs = Vec::new();
    for p in places.iter().filter(|p| p.shadow.is_some()) {
        diffs.push((p.target_id.clone(), registry::shadow_report(s, &p.target_id, None, 20).await.map_err(refused)?));
    }
    let admin = session.scope() >= Scope::Admin;
    let merchants: Vec<&Placement> = places.iter().filter(|p| p.target_kind == "merchant").collect();
    let rules: Vec<_> = versions.iter().filter(|v| v.kind == "merchant-rules").collect();
    let done = match q.done.as_str() {
        "activate" => Some("activated"),
        "rollback" => Some("rolled back"),
        "shadow" => Some("now runs a shadow candidate"),
        "unshadow" => Some("no longer runs a shadow candidate"),
        _ => None,
    };
    let body = html! {
        @if let Some(what) = done { (notice("ok", &format!("{}: {what}. The next conversion uses it, on every replica.", q.target))) }
        @if !admin { (notice("info", "Swapping plugins needs the admin scope; your token can look and backtest.")) }
        section.card {
            h2 { "Where plugins run" }
            table #placements {
                thead { tr { th { "Target" } th { "Chain (in order)" } th { "Shadow candidate" } @if admin { th { "Actions" } } } }
                tbody {
                    @for p in &places {
                        tr {
                            td { strong { (p.target_id) } div.muted { (p.target_kind) " · " (p.target_name) @if let Some(m) = &p.mode { " · " (m) " mode" } } }
                            td {
                                @if p.chain.is_empty() { span.muted { "none" } }
                                @for (pos, name, version, digest) in &p.chain {
                                    div { @if p.target_kind == "merchant" { span.muted { "#" (pos) " " } } (name) " " (version) " " span.digest { (short_digest(digest)) } }
                                }
                            }
                            td {
                                @match &p.shadow {
                                    Some((pos, name, version, digest)) => { "#" (pos) " " (name) " " (version) " " span.digest { (short_digest(digest)) } }
                                    None => { span.muted { "—" } }
                                }
                            }
                            @if admin {
                                td {
                                    form.inline method="post" action="/dashboard/plugins/rollback" {
                                        (session.csrf_field())
                                        input type="hidden" name="target" value={ (p.target_kind) ":" (p.target_id) };
                                        button type="submit" title="put back what the last activation replaced" { "Roll back" }
                                    }
                                    @if p.shadow.is_some() {
                                        form.inline method="post" action="/dashboard/plugins/unshadow" {
                                            (session.csrf_field())
                                            input type="hidden" name="target" value={ "merchant:" (p.target_id) };
                                            button type="submit" { "Stop shadow" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if admin {
            section.card {
                h2 { "Activate a version" }
                p.hint { "Takes the place of the plugin of the same name in a merchant's chain (or the given position), keeping its configuration. "
                    "“Run in shadow” runs it beside the live chain on every conversion and records what it would have decided, never posting it." }
                form.stacked method="post" action="/dashboard/plugins/activate" {
                    (session.csrf_field())
                    label { "Version" select name="plugin" required {
                        @for v in &versions { option value={ (v.name) "@" (v.version) } { (v.name) " " (v.version) " (" (v.kind) ")" } }
                    } }
                    label { "For" select name="target" required {
                        @for p in &places { option value={ (p.target_kind) ":" (p.target_id) } { (p.target_kind) " " (p.target_id) } }
                    } }
                    label { "Position (optional)" input type="number" name="position" min="0" placeholder="same name"; }
                    div.form-actions {
                        button.primary type="submit" { "Activate" }
                        " "
                        button type="submit" formaction="/dashboard/plugins/shadow" { "Run in shadow" }
                    }
                }
            }
        }
        @for (merchant, c) in &diffs {
            section.card {
                h2 { "Shadow: " (merchant) }
                (super::backtests::comparison(c, "shadow-diff"))
            }
        }
        section.card #backtest {
            h2 { "Backtest" }
            p.hint { "Runs a rule version over past conversions with the exact inputs each decision recorded, and compares. Nothing is written. It runs in the background: its page shows the progress, then the result." }
            form.stacked method="post" action="/dashboard/plugins/backtest" {
                (session.csrf_field())
                label { "Merchant" select name="merchant" required {
                    @for m in &merchants { option value=(m.target_id) { (m.target_id) } }
                } }
                label { "Version" select name="plugin" required {
                    @for v in &rules { option value={ (v.name) "@" (v.version) } { (v.name) " " (v.version) } }
                } }
                label { "From (UTC date)" input type="date" name="from"; }
                label { "To (UTC date, excluded)" input type="date" name="to"; }
                div.form-actions { button.primary type="submit" { "Run backtest" } }
            }
            @if !recent.is_empty() {
                h3 { "Latest backtests" }
                (super::backtests::table(&recent, "recent-backtests"))
                p { a href="/dashboard/backtests" { "All backtests →" } }
            }
        }
        section.card {
            h2 { "Stored versions" }
            table #versions {
                thead { tr { th { "Plugin" } th { "Version" } th { "Kind" } th { "Digest" } th { "Stored" } th { "Active at" } th { "Shadow at" } } }
                tbody {
                    @for v in &versions {
                        tr {
                            td { strong { (v.name) } }
                            td { (v.version) }
                            td { (v.kind) }
                            td { (short_digest(&v.digest)) }
                            td.nowrap { (time(v.created_at)) }
                            td { @if v.active.is_empty() { span.muted { "—" } } @for a in &v.active { div { code { (a) } } } }
                            td { @for a in &v.shadow { div { code { (a) } } } }
                        }
                    }
                }
            }
        }
    };
    Ok(layout(session, Nav::Plugins, "Plugins", body))
}

/// `merchant:ID` or `network:ID`.
fn target(text: &str, position: Option<usize>) -> Result<Target, Refused> {
    match text.split_once(':') {
        Some(("merchant", id)) if !id.is_empty() => Ok(Target::Merchant { id: id.into(), position }),
        Some(("network", id)) if !id.is_empty() => Ok(Target::Network { id: id.into() }),
        _ => Err(Refused::new(StatusCode::BAD_REQUEST, format!("target: {text:?} is not merchant:ID or network:ID"))),
    }
}

fn position(text: &str) -> Result<Option<usize>, Refused> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(None);
    }
    t.parse().map(Some).map_err(|_| Refused::new(StatusCode::BAD_REQUEST, format!("position: {t:?} is not a number")))
}

fn actor(session: &Session) -> String {
    format!("dashboard:{}", session.operator())
}

fn done(action: &str, target: &str) -> Response {
    let mut to = url::form_urlencoded::Serializer::new(String::new());
    to.append_pair("done", action).append_pair("target", target);
    Redirect::to(&format!("/dashboard/plugins?{}", to.finish())).into_response()
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct SwapForm {
    csrf: String,
    plugin: String,
    target: String,
    position: String,
}

/// `POST /dashboard/plugins/activate` `plugin=name@version&target=merchant:ID[&position=N]`.
pub(super) async fn activate(
    State(st): State<AppState>,
    ActionSession(session): ActionSession,
    Form(f): Form<SwapForm>,
) -> Response {
    if let Err(r) = session.allow(&f.csrf, Scope::Admin) {
        return r.into_response();
    }
    let t = match position(&f.position).and_then(|p| target(&f.target, p)) {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    let plugin = match registry::resolve(&st.service, &f.plugin).await {
        Ok(p) => p,
        Err(e) => return refused(e),
    };
    match registry::activate(&st.service, &t, &plugin, None, &actor(&session)).await {
        Ok(_) => done("activate", &f.target),
        Err(e) => refused(e),
    }
}

/// `POST /dashboard/plugins/shadow`: the same form, run in shadow (merchants only).
pub(super) async fn shadow(
    State(st): State<AppState>,
    ActionSession(session): ActionSession,
    Form(f): Form<SwapForm>,
) -> Response {
    if let Err(r) = session.allow(&f.csrf, Scope::Admin) {
        return r.into_response();
    }
    let (merchant, position) = match position(&f.position).and_then(|p| target(&f.target, p)) {
        Ok(Target::Merchant { id, position }) => (id, position),
        Ok(Target::Network { .. } | Target::Endpoint { .. }) => {
            return super::refusal(StatusCode::UNPROCESSABLE_ENTITY, "only a merchant's rules run in shadow");
        }
        Err(r) => return r.into_response(),
    };
    let plugin = match registry::resolve(&st.service, &f.plugin).await {
        Ok(p) => p,
        Err(e) => return refused(e),
    };
    match registry::set_shadow(&st.service, &merchant, &plugin, None, position, &actor(&session)).await {
        Ok(_) => done("shadow", &f.target),
        Err(e) => refused(e),
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct TargetForm {
    csrf: String,
    target: String,
}

/// `POST /dashboard/plugins/rollback` `target=merchant:ID|network:ID`.
pub(super) async fn rollback(
    State(st): State<AppState>,
    ActionSession(session): ActionSession,
    Form(f): Form<TargetForm>,
) -> Response {
    if let Err(r) = session.allow(&f.csrf, Scope::Admin) {
        return r.into_response();
    }
    let t = match target(&f.target, None) {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    match registry::rollback(&st.service, &t, &actor(&session)).await {
        Ok(_) => done("rollback", &f.target),
        Err(e) => refused(e),
    }
}

/// `POST /dashboard/plugins/unshadow` `target=merchant:ID`.
pub(super) async fn unshadow(
    State(st): State<AppState>,
    ActionSession(session): ActionSession,
    Form(f): Form<TargetForm>,
) -> Response {
    if let Err(r) = session.allow(&f.csrf, Scope::Admin) {
        return r.into_response();
    }
    let Ok(Target::Merchant { id, .. }) = target(&f.target, None) else {
        return super::refusal(StatusCode::BAD_REQUEST, "target: merchant:ID");
    };
    match registry::clear_shadow(&st.service, &id).await {
        Ok(_) => done("unshadow", &f.target),
        Err(e) => refused(e),
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct BacktestForm {
    csrf: String,
    merchant: String,
    plugin: String,
    from: String,
    to: String,
}

/// `POST /dashboard/plugins/backtest`: queues the job and leads to its page.
pub(super) async fn backtest(
    State(st): State<AppState>,
    ActionSession(session): ActionSession,
    Form(f): Form<BacktestForm>,
) -> Response {
    if let Err(r) = session.allow(&f.csrf, Scope::Read) {
        return r.into_response();
    }
    let when = |field: &str, text: &str, default: i64| -> Result<i64, Refused> {
        if text.trim().is_empty() {
            return Ok(default);
        }
        crate::clock::parse_instant(field, text.trim())
            .map_err(|e| Refused::new(StatusCode::BAD_REQUEST, e.to_string()))
    };
    let (from, to) = match (when("from", &f.from, i64::MIN), when("to", &f.to, st.service.now() + 1)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(r), _) | (_, Err(r)) => return r.into_response(),
    };
    let plugin = match registry::resolve(&st.service, &f.plugin).await {
        Ok(p) => p,
        Err(e) => return refused(e),
    };
    let request = crate::backtests::Request {
        merchant: f.merchant.clone(),
        plugin,
        config: None,
        position: None,
        from,
        to,
        limit: 100,
        actor: format!("dashboard:{}", session.operator()),
    };
    match crate::backtests::queue(&st.service, request, None).await {
        Ok(job) => Redirect::to(&format!("/dashboard/backtests/{}", job.id)).into_response(),
        Err(e) => refused(e),
    }
}
