//! Delay analytics (seed 000's whole subject): how long from the purchase to the moment
//! cashbackd tracked it, per network and per integration type (postback, API import,
//! file), as median and 90th percentile; drawn as inline SVG, with the numbers beside.

use super::queries::{self, DelayGroup};
use super::{Nav, Session, duration, layout, time, unavailable};
use crate::clock::DAY_MS;
use crate::http::AppState;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(default)]
pub(super) struct Window {
    days: i64,
}

impl Default for Window {
    fn default() -> Self {
        Window { days: 30 }
    }
}

/// `GET /dashboard/delays?days=30`.
pub(super) async fn page(State(st): State<AppState>, session: Session, Query(w): Query<Window>) -> Response {
    let days = w.days.clamp(1, 3650);
    let now = st.service.now();
    let report = match queries::delays(st.service.db(), now - days * DAY_MS, now + 1).await {
        Ok(r) => r,
        Err(e) => return unavailable("cannot compute the delays", &e),
    };
    let body = html! {
        p.lede {
            "Time from purchase (the network's event time) to tracked (its first report reaching cashbackd), "
            "for the " (report.count) " orders reported since " (time(report.from)) " UTC. "
            "An order without a purchase time counts as tracked at once."
        }
        form.filters method="get" action="/dashboard/delays" {
            label { "Window"
                select name="days" {
                    @for d in [1, 7, 30, 90, 365] { option value=(d) selected[d == days] { "last " (d) @if d == 1 { " day" } @else { " days" } } }
                }
            }
            button type="submit" { "Show" }
        }
        @if report.count == 0 {
            section.card { p.empty { "No order reported in this window." } }
        } @else {
            div.legend { span { span.swatch.swatch-median {} "median" } span { span.swatch.swatch-p90 {} "90th percentile" } span { "(log scale)" } }
            div.grid2 {
                section.card { h2 { "Per integration type" } (chart("by-via", &report.by_via)) }
                section.card { h2 { "Per network" } (chart("by-network", &report.by_network)) }
            }
            section.card {
                h2 { "The numbers" }
                (numbers("delays-by-via", "Integration type", &report.by_via))
                h3 { "Per network" }
                (numbers("delays-by-network", "Network", &report.by_network))
                h3 { "Per network and integration type" }
                (numbers("delays-by-both", "Network / type", &report.by_both))
            }
        }
    };
    layout(&session, Nav::Delays, "Delays", body).into_response()
}

fn numbers(id: &str, what: &str, groups: &[DelayGroup]) -> Markup {
    html! {
        table id=(id) {
            thead { tr { th { (what) } th.num { "Orders" } th.num { "Median" } th.num { "90th pct." } th.num { "Longest" } th.num { "Tracked → user told (median)" } } }
            tbody {
                @for g in groups {
                    tr {
                        td { (label(&g.key)) }
                        td.num { (g.count) }
                        td.num { (duration(g.median_ms)) }
                        td.num { (duration(g.p90_ms)) }
                        td.num { (duration(g.max_ms)) }
                        td.num { (g.notify_median_ms.map_or("—".into(), duration)) }
                    }
                }
            }
        }
    }
}

/// `api_import` reads as "api import".
fn label(key: &str) -> String {
    key.replace('_', " ")
}

/// Where `ms` falls on the log axis, 0..=1 of `max_ms`. Seconds for postbacks and days
/// for files only fit one chart on a log scale.
fn scale(ms: i64, max_ms: i64) -> f64 {
    let f = |v: i64| (1.0 + v.max(0) as f64 / 1000.0).log10();
    if max_ms <= 0 { 0.0 } else { (f(ms) / f(max_ms)).clamp(0.0, 1.0) }
}

/// Horizontal bars: the 90th percentile light, the median dark over it, per group.
fn chart(id: &str, groups: &[DelayGroup]) -> Markup {
    const WIDTH: f64 = 640.0;
    const LEFT: f64 = 150.0;
    const RIGHT: f64 = 130.0;
    const ROW: f64 = 30.0;
    const TOP: f64 = 8.0;
    let plot = WIDTH - LEFT - RIGHT;
    // At least an hour wide, so that a few seconds never fill the chart.
    let max_ms = groups.iter().map(|g| g.p90_ms).max().unwrap_or(0).max(3_600_000) * 11 / 10;
    let height = TOP + ROW * groups.len() as f64 + 28.0;
    let ticks: Vec<(i64, &str)> = [
        (1_000, "1 s"),
        (60_000, "1 min"),
        (3_600_000, "1 h"),
        (86_400_000, "1 d"),
        (604_800_000, "1 w"),
        (2_592_000_000, "30 d"),
    ]
    .into_iter()
    .filter(|(t, _)| *t <= max_ms)
    .collect();
    let x = |ms: i64| LEFT + scale(ms, max_ms) * plot;
    let axis_y = TOP + ROW * groups.len() as f64;
    html! {
        svg.chart id=(id) viewBox={ "0 0 " (WIDTH) " " (height) } role="img" aria-label="median and 90th percentile delay per group" xmlns="http://www.w3.org/2000/svg" {
            @for (t, name) in &ticks {
                line.axis x1=(fmt(x(*t))) x2=(fmt(x(*t))) y1=(fmt(TOP)) y2=(fmt(axis_y)) stroke-dasharray="3 3" {}
                text.tick x=(fmt(x(*t))) y=(fmt(axis_y + 16.0)) text-anchor="middle" { (name) }
            }
            line.axis x1=(fmt(LEFT)) x2=(fmt(LEFT + plot)) y1=(fmt(axis_y)) y2=(fmt(axis_y)) {}
            @for (i, g) in groups.iter().enumerate() {
                @let y = TOP + ROW * i as f64;
                text x=(fmt(LEFT - 8.0)) y=(fmt(y + 18.0)) text-anchor="end" { (label(&g.key)) }
                rect x=(fmt(LEFT)) y=(fmt(y + 6.0)) width=(fmt((x(g.p90_ms) - LEFT).max(1.0))) height="16" rx="3" fill="#b7c6f8" {
                    title { (label(&g.key)) ": 90th percentile " (duration(g.p90_ms)) }
                }
                rect x=(fmt(LEFT)) y=(fmt(y + 6.0)) width=(fmt((x(g.median_ms) - LEFT).max(1.0))) height="16" rx="3" fill="#2f5bea" {
                    title { (label(&g.key)) ": median " (duration(g.median_ms)) }
                }
                text x=(fmt(x(g.p90_ms).max(x(g.median_ms)) + 6.0)) y=(fmt(y + 18.0)) {
                    (duration(g.median_ms)) " / " (duration(g.p90_ms))
                }
            }
        }
    }
}

fn fmt(v: f64) -> String {
    format!("{v:.1}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_scale_spans_seconds_to_days() {
        let day = 86_400_000;
        assert_eq!(scale(0, day), 0.0);
        assert_eq!(scale(day, day), 1.0);
        let (minute, hour) = (scale(60_000, day), scale(3_600_000, day));
        assert!(0.3 < minute && minute < hour && hour < 0.8, "{minute} {hour}");
    }
}
