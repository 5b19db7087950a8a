//! `cashbackd partner ...` and `deliveries ...`: partners, and the callback delivery log,
//! replay and alerts (endpoints: `endpoint.rs`).

use super::*;

/// `cashbackd partner ...`
#[derive(Debug, Subcommand)]
pub enum PartnerCommand {
    /// Create or rename a partner.
    Add {
        /// The partner's id.
        id: String,
        /// Display name.
        #[arg(long)]
        name: String,
    },
    /// Every partner.
    List,
}

/// `cashbackd deliveries ...`
#[derive(Debug, Subcommand)]
pub enum DeliveriesCommand {
    /// The latest deliveries.
    List {
        /// Of one endpoint.
        #[arg(long)]
        endpoint: Option<String>,
        /// pending, delivered, failed or skipped.
        #[arg(long)]
        state: Option<String>,
        /// Of one conversion.
        #[arg(long)]
        conversion: Option<String>,
        /// Of one click: its CREATED (sent on the click).
        #[arg(long)]
        click: Option<String>,
        /// At most.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// A delivery with every attempt: request, status, latency, response excerpt.
    Show {
        /// The delivery (`cbk_d12` or 12).
        id: String,
    },
    /// Send again one delivery, or every delivery created in a time range.
    Replay {
        /// The delivery.
        id: Option<String>,
        /// With --from/--to: only this endpoint's.
        #[arg(long)]
        endpoint: Option<String>,
        /// Start of the range (RFC 3339, or ms since the epoch).
        #[arg(long, requires = "to", conflicts_with = "id")]
        from: Option<String>,
        /// End of the range (excluded).
        #[arg(long, requires = "from")]
        to: Option<String>,
    },
    /// Alerts (endpoints disabled after repeated failures...).
    Alerts,
}

pub(super) enum DeliveriesAction {
    List(crate::callbacks::deliver::DeliveryFilter),
    Show(i64),
    Replay(i64),
    ReplayRange { endpoint: Option<String>, from: i64, to: i64 },
    Alerts,
}

/// Runs the command (`cli::run` dispatches here).
pub(super) fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Partner { ref command } => {
            let command = match command {
                PartnerCommand::Add { id, name } => Some((id.clone(), name.clone())),
                PartnerCommand::List => None,
            };
            with_service(cli, |service, _| async move {
                match command {
                    Some((id, name)) => {
                        crate::callbacks::upsert_partner(service.db(), &id, &name, service.now()).await?;
                        println!(
                            "partner {id} saved; add its endpoints with `cashbackd endpoint add ID --partner {id} --url ...`"
                        );
                    }
                    None => {
                        for p in crate::callbacks::partners(service.db()).await? {
                            println!("{:<24} {}", p.id, p.name);
                        }
                    }
                }
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Deliveries { ref command } => {
            let command = match command {
                DeliveriesCommand::Replay { id: None, from: None, .. } => {
                    bail!("deliveries replay: give a delivery id, or --from and --to")
                }
                DeliveriesCommand::Replay { from: Some(from), to, endpoint, .. } => {
                    let from = parse_time(from).context("--from")?;
                    let to = parse_time(to.as_deref().unwrap_or_default()).context("--to")?;
                    DeliveriesAction::ReplayRange { endpoint: endpoint.clone(), from, to }
                }
                DeliveriesCommand::Replay { id: Some(id), .. } => DeliveriesAction::Replay(parse_delivery(id)?),
                DeliveriesCommand::Show { id } => DeliveriesAction::Show(parse_delivery(id)?),
                DeliveriesCommand::List { endpoint, state, conversion, click, limit } => {
                    DeliveriesAction::List(crate::callbacks::deliver::DeliveryFilter {
                        endpoint_id: endpoint.clone(),
                        state: state.clone(),
                        conversion_id: conversion.clone(),
                        click_id: click.clone(),
                        limit: Some(*limit),
                        ..Default::default()
                    })
                }
                DeliveriesCommand::Alerts => DeliveriesAction::Alerts,
            };
            with_service(cli, |service, _| async move {
                let db = service.db();
                use crate::callbacks::deliver;
                match command {
                    DeliveriesAction::List(filter) => {
                        for d in deliver::deliveries(db, &filter).await? {
                            println!(
                                "{:<10} {:<16} {} v{:<3} {:<9} {:<9} attempts {} {}",
                                d.message_id,
                                d.endpoint_id,
                                d.subject(),
                                d.version,
                                d.conversion_state,
                                d.state,
                                d.attempts,
                                d.last_error.or(d.last_status.map(|s| format!("HTTP {s}"))).unwrap_or_default()
                            );
                        }
                    }
                    DeliveriesAction::Show(id) => {
                        let (d, attempts) = deliver::delivery(db, id).await?;
                        let about = match &d.conversion_id {
                            Some(conversion) => format!("conversion {conversion} v{}", d.version),
                            None => d.subject(),
                        };
                        println!(
                            "{} to {}: {} {} ({about}), {} attempts, next {}",
                            d.message_id,
                            d.endpoint_id,
                            d.conversion_state,
                            d.state,
                            d.attempts,
                            fmt_time(d.next_attempt_at)
                        );
                        for a in attempts {
                            println!(
                                "  #{} {} {} {} -> {} in {} ms [{}]",
                                a.attempt,
                                fmt_time(a.started_at),
                                a.request.method,
                                a.request.url,
                                a.status.map_or_else(|| a.error.clone().unwrap_or_default(), |s| format!("HTTP {s}")),
                                a.latency_ms,
                                a.outcome
                            );
                            for (k, v) in &a.request.headers {
                                println!("      {k}: {v}");
                            }
                            if let Some(ex) = a.response_excerpt.filter(|e| !e.is_empty()) {
                                println!("      response: {}", ex.chars().take(200).collect::<String>());
                            }
                        }
                    }
                    DeliveriesAction::Replay(id) => {
                        deliver::replay(db, id, service.now()).await?;
                        println!("{} queued again", deliver::message_id(id));
                    }
                    DeliveriesAction::ReplayRange { endpoint, from, to } => {
                        let n = deliver::replay_range(db, endpoint.as_deref(), from, to, service.now()).await?;
                        println!("{n} deliveries queued again");
                    }
                    DeliveriesAction::Alerts => {
                        for a in crate::callbacks::alerts(db, 100).await? {
                            println!("{} {:<18} {:<16} {}", fmt_time(a.at), a.kind, a.subject, a.message);
                        }
                    }
                }
                Ok(ExitCode::SUCCESS)
            })
        }
        _ => unreachable!("cli::run dispatches only this module's commands here"),
    }
}

fn parse_delivery(id: &str) -> anyhow::Result<i64> {
    id.trim_start_matches("cbk_d").parse().map_err(|_| anyhow::anyhow!("delivery id: {id:?} is not cbk_dN or N"))
}

/// RFC 3339 or milliseconds since the epoch.
fn parse_time(text: &str) -> anyhow::Result<i64> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|_| anyhow::anyhow!("{text:?} is neither RFC 3339 (2026-11-21T08:00:00Z) nor milliseconds"))
}
