//! `cashbackd plugin upload|list|activate|rollback|delete|shadow|unshadow|diff|backtest|history`:
//! the plugin registry from the command line (the admin API has the same operations).

use super::{Cli, with_service};
use crate::registry::{self, Target};
use anyhow::Context;
use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;

/// Registry operations on the database (`--database-url`).
#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Validate a component (it compiles, exports a known world at a supported contract
    /// version, has a sane manifest, passes its own fixtures) and store it.
    Upload {
        /// The component (.wasm).
        file: PathBuf,
    },
    /// Stored versions and where each is active or in shadow.
    List {
        /// Only this plugin name.
        name: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Activate a version (`name@version` or a digest) for a merchant's rule chain, a
    /// network's adapter or a callback endpoint's requests; the next conversion (or
    /// delivery) uses it, on every replica.
    Activate {
        /// `name@version`, `sha256:...` or a unique digest prefix.
        plugin: String,
        /// The merchant whose chain gets it.
        #[arg(long, conflicts_with_all = ["network", "endpoint"], required_unless_present_any = ["network", "endpoint"])]
        merchant: Option<String>,
        /// The network whose adapter it becomes.
        #[arg(long)]
        network: Option<String>,
        /// The callback endpoint whose requests it renders (a partner-callback plugin).
        #[arg(long, conflicts_with = "network")]
        endpoint: Option<String>,
        /// Place in the merchant's chain (default: where the plugin of the same name is, else appended).
        #[arg(long)]
        position: Option<usize>,
        /// Configuration (JSON); default: the configuration of the version it replaces.
        #[arg(long)]
        config: Option<String>,
    },
    /// Put back what the last activation replaced (for an endpoint whose first plugin it
    /// was: the built-in template).
    Rollback {
        /// The merchant.
        #[arg(long, conflicts_with_all = ["network", "endpoint"], required_unless_present_any = ["network", "endpoint"])]
        merchant: Option<String>,
        /// The network.
        #[arg(long)]
        network: Option<String>,
        /// The callback endpoint whose requests it renders (a partner-callback plugin).
        #[arg(long, conflicts_with = "network")]
        endpoint: Option<String>,
        /// Place in the merchant's chain (default: the last activated place).
        #[arg(long)]
        position: Option<usize>,
    },
    /// Delete a version nothing uses (not active, not in shadow, no ledger posting pinned to it).
    Delete {
        /// `name@version` or a digest.
        plugin: String,
    },
    /// Run a candidate version beside a merchant's active chain on live conversions;
    /// its decisions are recorded, never posted.
    Shadow {
        /// `name@version` or a digest.
        plugin: String,
        /// The merchant.
        #[arg(long)]
        merchant: String,
        /// Place in the chain it stands in for.
        #[arg(long)]
        position: Option<usize>,
        /// Configuration (JSON); default: the replaced version's.
        #[arg(long)]
        config: Option<String>,
    },
    /// Stop a merchant's shadow candidate (its recorded decisions stay).
    Unshadow {
        /// The merchant.
        #[arg(long)]
        merchant: String,
    },
    /// What the shadow candidate decided differently: count, total delta, examples.
    Diff {
        /// The merchant.
        #[arg(long)]
        merchant: String,
        /// A candidate other than the current one (`name@version` or digest).
        #[arg(long)]
        plugin: Option<String>,
        /// Examples to show.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Evaluate a version over a merchant's past conversions (rules run in [from, to))
    /// and report what would change. Runs as a backtest job (`backtests` table), here in
    /// this process; with `--queue`, left to the workers of the `serve` replicas (see
    /// `GET /api/v1/backtests/ID`). Writes nothing else.
    Backtest {
        /// `name@version` or a digest.
        plugin: String,
        /// The merchant.
        #[arg(long)]
        merchant: String,
        /// Start (RFC 3339 or YYYY-MM-DD; default: the beginning).
        #[arg(long)]
        from: Option<String>,
        /// End, exclusive (default: now).
        #[arg(long)]
        to: Option<String>,
        /// Place in the chain it stands in for.
        #[arg(long)]
        position: Option<usize>,
        /// Configuration (JSON); default: the replaced version's.
        #[arg(long)]
        config: Option<String>,
        /// Examples to show.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Only queue the job and print its id: a `serve` replica runs it.
        #[arg(long)]
        queue: bool,
    },
    /// Activations, rollbacks and shadow changes of a merchant, network or endpoint, newest first.
    History {
        /// The merchant.
        #[arg(long, conflicts_with_all = ["network", "endpoint"], required_unless_present_any = ["network", "endpoint"])]
        merchant: Option<String>,
        /// The network.
        #[arg(long)]
        network: Option<String>,
        /// The callback endpoint whose requests it renders (a partner-callback plugin).
        #[arg(long, conflicts_with = "network")]
        endpoint: Option<String>,
    },
}

fn target(
    merchant: &Option<String>,
    network: &Option<String>,
    endpoint: &Option<String>,
    position: Option<usize>,
) -> Target {
    match (merchant, network, endpoint) {
        (Some(m), ..) => Target::Merchant { id: m.clone(), position },
        (None, Some(n), _) => Target::Network { id: n.clone() },
        (None, None, Some(e)) => Target::Endpoint { id: e.clone() },
        // clap requires one of the three.
        (None, None, None) => Target::Merchant { id: String::new(), position },
    }
}

fn json_arg(flag: &str, text: &Option<String>) -> anyhow::Result<Option<serde_json::Value>> {
    text.as_deref().map(|t| serde_json::from_str(t).with_context(|| format!("{flag}: not JSON: {t}"))).transpose()
}

fn actor() -> String {
    format!("cli:{}", std::env::var("USER").unwrap_or_else(|_| "unknown".into()))
}

fn print_comparison(c: &registry::Comparison) {
    println!("candidate  {}", c.candidate_digest);
    println!("compared   {} conversions, {} would change", c.compared, c.changed);
    for (currency, delta) in &c.delta {
        println!(
            "total      {currency}: active {} → candidate {} (delta {delta:+})",
            c.active_total.get(currency).copied().unwrap_or(0),
            c.candidate_total.get(currency).copied().unwrap_or(0),
        );
    }
    for d in &c.differences {
        let show = |v: Option<i64>| v.map_or("failed".to_string(), |v| v.to_string());
        println!(
            "  {}  {} → {} {}{}",
            d.conversion_id,
            show(d.active_cashback),
            show(d.candidate_cashback),
            d.currency,
            d.error.as_deref().map(|e| format!("  ({e})")).unwrap_or_default()
        );
    }
}

/// Runs a registry command.
pub fn run(cli: &Cli, command: &RegistryCommand) -> anyhow::Result<ExitCode> {
    with_service(cli, |service, _| async move {
        match command {
            RegistryCommand::Upload { file } => {
                let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
                let u = registry::upload(&service, &bytes).await?;
                println!(
                    "{} {} ({}, wit {}) {}: {} fixtures passed\n{}",
                    u.name,
                    u.version,
                    u.kind,
                    u.wit,
                    if u.already_stored { "was stored already" } else { "stored" },
                    u.fixtures_passed,
                    u.digest
                );
            }
            RegistryCommand::List { name, json } => {
                let versions = registry::versions(&service, name.as_deref()).await?;
                if *json {
                    println!("{}", serde_json::to_string_pretty(&versions)?);
                } else {
                    for v in versions {
                        let mut uses = v.active.clone();
                        uses.extend(v.shadow.iter().map(|s| format!("shadow {s}")));
                        println!(
                            "{:<20} {:<10} {:<16} {}  {}",
                            v.name,
                            v.version,
                            v.kind,
                            &v.digest[..19.min(v.digest.len())],
                            if uses.is_empty() { "-".into() } else { uses.join(", ") }
                        );
                    }
                }
            }
            RegistryCommand::Activate { plugin, merchant, network, endpoint, position, config } => {
                let p = registry::resolve(&service, plugin).await?;
                let a = registry::activate(
                    &service,
                    &target(merchant, network, endpoint, *position),
                    &p,
                    json_arg("--config", config)?,
                    &actor(),
                )
                .await?;
                println!(
                    "{} {} #{}: {} {} active (was {})",
                    a.target_kind,
                    a.target_id,
                    a.position,
                    p.manifest.name,
                    p.manifest.version,
                    a.previous_digest.as_deref().unwrap_or("nothing")
                );
            }
            RegistryCommand::Rollback { merchant, network, endpoint, position } => {
                let a = registry::rollback(&service, &target(merchant, network, endpoint, *position), &actor()).await?;
                println!(
                    "{} {} #{}: rolled back to {} (replacing {})",
                    a.target_kind,
                    a.target_id,
                    a.position,
                    if a.digest.is_empty() { "the built-in template" } else { &a.digest },
                    a.previous_digest.as_deref().unwrap_or("nothing")
                );
            }
            RegistryCommand::Delete { plugin } => {
                let p = registry::resolve(&service, plugin).await?;
                registry::delete(&service, &p).await?;
                println!("deleted {} ({})", p.manifest.label(), p.digest);
            }
            RegistryCommand::Shadow { plugin, merchant, position, config } => {
                let p = registry::resolve(&service, plugin).await?;
                let a =
                    registry::set_shadow(&service, merchant, &p, json_arg("--config", config)?, *position, &actor())
                        .await?;
                println!("merchant {merchant} #{}: {} runs in shadow", a.position, p.manifest.label());
            }
            RegistryCommand::Unshadow { merchant } => {
                let stopped = registry::clear_shadow(&service, merchant).await?;
                println!("merchant {merchant}: {}", if stopped { "shadow stopped" } else { "had no shadow candidate" });
            }
            RegistryCommand::Diff { merchant, plugin, limit } => {
                let candidate = match plugin {
                    Some(p) => Some(registry::resolve(&service, p).await?.digest.to_string()),
                    None => None,
                };
                print_comparison(&registry::shadow_report(&service, merchant, candidate.as_deref(), *limit).await?);
            }
            RegistryCommand::Backtest { plugin, merchant, from, to, position, config, limit, queue } => {
                let p = registry::resolve(&service, plugin).await?;
                let from =
                    from.as_deref().map(|f| crate::clock::parse_instant("--from", f)).transpose()?.unwrap_or(i64::MIN);
                let to = to
                    .as_deref()
                    .map(|t| crate::clock::parse_instant("--to", t))
                    .transpose()?
                    .unwrap_or_else(|| service.now() + 1);
                let request = crate::backtests::Request {
                    merchant: merchant.clone(),
                    plugin: p,
                    config: json_arg("--config", config)?,
                    position: *position,
                    from,
                    to,
                    limit: *limit,
                    actor: "cli".into(),
                };
                // The same job as the API's, claimed by this process at once (no replica
                // takes it while this one renews its lease).
                let owner = format!("cli-{}", std::process::id());
                let job = crate::backtests::queue(&service, request, (!*queue).then_some(owner.as_str())).await?;
                if *queue {
                    println!("backtest {} queued (GET /api/v1/backtests/{})", job.id, job.id);
                    return Ok(ExitCode::SUCCESS);
                }
                crate::backtests::Worker::new(service.clone(), owner).run_claimed(job.id).await?;
                let done = crate::backtests::get(&service, job.id).await?.context("the backtest vanished")?;
                match (done.state.as_str(), done.result) {
                    ("done", Some(c)) => {
                        println!("backtest {}: {} conversions read, {} skipped", done.id, done.processed, done.skipped);
                        print_comparison(&c);
                    }
                    _ => anyhow::bail!("backtest {} {}: {}", done.id, done.state, done.error.unwrap_or_default()),
                }
            }
            RegistryCommand::History { merchant, network, endpoint } => {
                for a in registry::activations(&service, &target(merchant, network, endpoint, None), 100).await? {
                    println!(
                        "{}  {:<8} #{} {} {} (was {}) by {}",
                        chrono::DateTime::from_timestamp_millis(a.at).map(|t| t.to_rfc3339()).unwrap_or_default(),
                        a.action,
                        a.position,
                        a.plugin_name,
                        a.digest,
                        a.previous_digest.as_deref().unwrap_or("nothing"),
                        a.actor
                    );
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}
