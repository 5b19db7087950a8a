//! Scheduled jobs (network imports, maturation, callback retries, digests): schedule,
//! next run, the latest runs, and running one now.

use super::{ActionSession, Nav, Session, layout, notice, time, time_opt, unavailable};
use crate::auth::Scope;
use crate::callbacks::Deliverer;
use crate::http::AppState;
use crate::notify::Notifier;
use crate::scheduler::{self, JobKind, RunInfo, Scheduler};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use maud::{Markup, html};
use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct JobQuery {
    job: String,
    ran: String,
    /// The runs' page: the id of the previous page's last run (newest first, as
    /// `GET /api/v1/jobs/{name}/runs`).
    cursor: String,
    /// Runs per page: 1 to 500, default 50.
    limit: String,
}

fn kind(k: &JobKind) -> String {
    match k {
        JobKind::Mature => "maturation: pending cashback whose delay passed becomes available".into(),
        JobKind::Import { network } => format!("API import of network {network}"),
        JobKind::Deliver => "partner callbacks due (retries)".into(),
        JobKind::Notify => "user e-mail digests".into(),
    }
}

fn outcome(r: &RunInfo) -> Markup {
    html! { span class={ "badge badge-" (r.outcome) } { (r.outcome) } }
}

fn counts(r: &RunInfo) -> String {
    match &r.counts {
        serde_json::Value::Object(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| format!("{k} {}", v.as_str().map_or_else(|| v.to_string(), str::to_string)))
            .collect::<Vec<_>>()
            .join(", "),
        _ => String::new(),
    }
}

/// `GET /dashboard/jobs[?job=NAME]`.
pub(super) async fn page(State(st): State<AppState>, session: Session, Query(q): Query<JobQuery>) -> Response {
    let jobs = match scheduler::list(&st.service).await {
        Ok(j) => j,
        Err(e) => return unavailable("cannot read the jobs", &e),
    };
    let shown = if q.job.is_empty() { None } else { Some(q.job.clone()) };
    let (limit, before) = match (super::page_limit(&q.limit), crate::http::page::checked_int_cursor(Some(&q.cursor))) {
        (Ok(l), Ok(b)) => (l, b),
        (Err(why), _) | (_, Err(why)) => return super::refusal(StatusCode::BAD_REQUEST, &why),
    };
    let (runs, next) = match &shown {
        Some(name) => match scheduler::runs_before(&st.service, name, before, limit + 1).await {
            Ok(mut r) => {
                // One run more than shown says whether there is an older page.
                let next = if r.len() as i64 > limit {
                    r.truncate(limit as usize);
                    r.last().map(|last| {
                        let mut to = url::form_urlencoded::Serializer::new(String::new());
                        to.append_pair("job", name).append_pair("cursor", &last.id.to_string());
                        if !q.limit.trim().is_empty() {
                            to.append_pair("limit", &limit.to_string());
                        }
                        format!("/dashboard/jobs?{}", to.finish())
                    })
                } else {
                    None
                };
                (Some(r), next)
            }
            Err(e) => return unavailable("cannot read the runs", &e),
        },
        None => (None, None),
    };
    let can_act = session.scope() >= Scope::Write;
    let ran = jobs.iter().find(|j| j.name == q.ran).and_then(|j| j.last_run.clone().map(|r| (j.name.clone(), r)));
    let body = html! {
        @if let Some((name, r)) = &ran {
            @if r.outcome == "ok" { (notice("ok", &format!("{name} ran: {}", if counts(r).is_empty() { "done".to_string() } else { counts(r) }))) }
            @else { (notice("error", &format!("{name} failed: {}", r.detail.as_deref().unwrap_or("see its runs")))) }
        }
        section.card {
            @if jobs.is_empty() { p.empty { "No job: " code { "cashbackd serve" } " creates the system jobs; " code { "cashbackd jobs add" } " adds imports." } }
            @else {
                div.table-wrap {
                    table #jobs {
                        thead { tr { th { "Job" } th { "Does" } th { "Schedule" } th { "Next run" } th { "Last run" } th { "Result" } @if can_act { th {} } } }
                        tbody {
                            @for j in &jobs {
                                tr {
                                    td { a href={ "/dashboard/jobs?job=" (j.name) } { strong { (j.name) } } @if !j.enabled { div.muted { "disabled" } } }
                                    td { (kind(&j.kind)) }
                                    td.nowrap { code { (j.schedule) } }
                                    td.nowrap { (time(j.next_run_at)) }
                                    td.nowrap { @match &j.last_run { Some(r) => { (time(r.started_at)) " " (outcome(r)) } None => { span.muted { "never" } } } }
                                    td { @if let Some(r) = &j.last_run { (counts(r)) @if let Some(d) = &r.detail { div.muted { (d) } } } }
                                    @if can_act {
                                        td {
                                            form.inline method="post" action={ "/dashboard/jobs/" (j.name) "/run" } {
                                                (session.csrf_field())
                                                button type="submit" { "Run now" }
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
        @if let (Some(name), Some(runs)) = (&shown, &runs) {
            section.card {
                h2 { "Runs of " (name) }
                @if runs.is_empty() { p.empty { "No run yet." } } @else {
                    table #runs {
                        thead { tr { th { "Tick" } th { "Started" } th { "Finished" } th { "By" } th { "Outcome" } th.num { "Missed ticks" } th { "What it did" } } }
                        tbody {
                            @for r in runs {
                                tr data-run=(r.id) {
                                    td.nowrap { (time(r.scheduled_for)) }
                                    td.nowrap { (time(r.started_at)) }
                                    td.nowrap { (time_opt(r.finished_at)) }
                                    td { code { (r.owner) } }
                                    td { (outcome(r)) }
                                    td.num { (r.missed) }
                                    td { (counts(r)) @if let Some(d) = &r.detail { div.muted { (d) } } }
                                }
                            }
                        }
                    }
                    @if let Some(href) = &next { p { a.next rel="next" href=(href) { "Older →" } } }
                }
            }
        }
    };
    layout(&session, Nav::Jobs, "Jobs", body).into_response()
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct RunForm {
    csrf: String,
}

/// `POST /dashboard/jobs/{name}/run`: runs the job now, whatever its schedule, with the
/// server's delivery worker and notifier when it has them.
pub(super) async fn run(
    State(st): State<AppState>,
    deliverer: Option<Extension<Deliverer>>,
    notifier: Option<Extension<Notifier>>,
    ActionSession(session): ActionSession,
    Path(name): Path<String>,
    Form(f): Form<RunForm>,
) -> Response {
    if let Err(r) = session.allow(&f.csrf, Scope::Write) {
        return r.into_response();
    }
    let jobs = match scheduler::list(&st.service).await {
        Ok(j) => j,
        Err(e) => return unavailable("cannot read the jobs", &e),
    };
    let Some(job) = jobs.iter().find(|j| j.name == name) else {
        return super::refusal(StatusCode::NOT_FOUND, &format!("no job named {name:?}"));
    };
    // Without the server's notifier, a digest run would say that no SMTP server is
    // configured and be recorded as done: refuse rather than record a wrong run.
    if job.kind == JobKind::Notify && notifier.is_none() {
        return super::refusal(
            StatusCode::CONFLICT,
            "this server did not give the dashboard its notifier: the digests run on their schedule",
        );
    }
    let owner = format!("dashboard:{}", session.operator());
    let mut scheduler = Scheduler::new(st.service.clone(), st.runtime.clone(), owner);
    if let Some(Extension(d)) = deliverer {
        scheduler = scheduler.with_callbacks(d);
    }
    if let Some(Extension(n)) = notifier {
        scheduler = scheduler.with_notifier(n);
    }
    match scheduler.run_now(&name).await {
        Ok(_) => {
            tracing::info!(job = %name, operator = %session.operator(), "job run from the dashboard");
            let mut to = url::form_urlencoded::Serializer::new(String::new());
            to.append_pair("ran", &name).append_pair("job", &name);
            Redirect::to(&format!("/dashboard/jobs?{}", to.finish())).into_response()
        }
        Err(e) => super::refusal(StatusCode::UNPROCESSABLE_ENTITY, &e),
    }
}
