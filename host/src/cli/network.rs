//! `cashbackd network add` and `import`: networks with their adapters and inbound auth,
//! and report files imported by hand.

use super::*;

/// `cashbackd network ...`
#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Create or update a network with its adapter and inbound authentication.
    Add {
        /// The network's id (the `{network}` of `/postback/{network}`).
        id: String,
        /// Display name.
        #[arg(long)]
        name: String,
        /// The adapter plugin component.
        #[arg(long)]
        adapter: PathBuf,
        /// The adapter's configuration (JSON).
        #[arg(long, default_value = "{}")]
        config: String,
        /// How postbacks authenticate: token, hmac, ip or none.
        #[arg(long, default_value = "token")]
        auth: String,
        /// The token or HMAC secret (prefer the environment variable: it stays out of
        /// the shell history).
        #[arg(long, env = "CASHBACKD_NETWORK_SECRET", hide_env_values = true)]
        secret: Option<String>,
        /// Comma-separated addresses allowed to post (with --auth ip).
        #[arg(long)]
        ips: Option<String>,
    },
}

/// Runs the command (`cli::run` dispatches here).
pub(super) fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Network {
            command: NetworkCommand::Add { ref id, ref name, ref adapter, ref config, ref auth, ref secret, ref ips },
        } => {
            let auth = match (auth.as_str(), secret.clone(), ips.clone()) {
                ("none", _, _) => crate::ingest::InboundAuth::None,
                ("token", Some(s), _) if !s.is_empty() => crate::ingest::InboundAuth::Token(s),
                ("hmac", Some(s), _) if !s.is_empty() => crate::ingest::InboundAuth::Hmac(s),
                ("ip", _, Some(list)) => crate::ingest::InboundAuth::IpAllowList(
                    list.split(',')
                        .map(|ip| ip.trim().parse().with_context(|| format!("--ips: {ip:?} is not an address")))
                        .collect::<anyhow::Result<_>>()?,
                ),
                ("token" | "hmac", _, _) => {
                    bail!("--secret (or CASHBACKD_NETWORK_SECRET): required with --auth {auth}")
                }
                ("ip", _, None) => bail!("--ips: required with --auth ip"),
                (other, _, _) => bail!("--auth: {other:?} is not one of token, hmac, ip, none"),
            };
            let config: serde_json::Value = serde_json::from_str(config).context("--config: not JSON")?;
            let bytes = std::fs::read(adapter).with_context(|| format!("--adapter: reading {}", adapter.display()))?;
            let (id, name) = (id.clone(), name.clone());
            with_service(cli, |service, _| async move {
                // `plugin upload`'s checks first, with its reason, then the rest.
                let vetted =
                    crate::registry::vet(&service, &bytes).await.map_err(|e| anyhow::anyhow!("--adapter: {e}"))?;
                let plugin = vetted.uploaded().plugin.clone();
                if plugin.kind() != PluginKind::NetworkAdapter {
                    bail!("--adapter: {} is a {}, not a network adapter", plugin.manifest.label(), plugin.kind());
                }
                plugin.manifest.validate_config(&config).map_err(|e| anyhow::anyhow!("--config: {e}"))?;
                crate::registry::admit(&service, vetted).await?;
                let network = crate::ingest::Network {
                    id: id.clone(),
                    name,
                    adapter_digest: Some(plugin.digest.to_string()),
                    adapter_config: config,
                    auth,
                };
                crate::ingest::upsert_network(service.db(), &network, service.now()).await?;
                println!(
                    "network {id} saved: adapter {} ({:?} auth); postbacks go to /postback/{id}",
                    plugin.manifest.label(),
                    network.auth
                );
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Import { ref network, ref file } => {
            // Read as the import goes, not here: a report may be larger than memory
            // should hold (the adapter takes it in pieces when it can).
            std::fs::metadata(file).with_context(|| format!("reading {}", file.display()))?;
            let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let network = network.clone();
            let file = file.clone();
            with_service(cli, |service, runtime| async move {
                let bar = indicatif::ProgressBar::new(0);
                bar.set_style(
                    indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} events {elapsed}")
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                let progress = |done: u64, total: u64| {
                    bar.set_length(total);
                    bar.set_position(done);
                };
                let summary = crate::imports::import_path(&service, &runtime, &network, &file, progress)
                    .await
                    .map_err(anyhow::Error::msg)?;
                bar.finish_and_clear();
                let t = &summary.tally;
                println!(
                    "{name}: {} events: {} created, {} updated, {} duplicate, {} ignored, {} rejected; {} rows refused by the adapter",
                    summary.events,
                    t.created,
                    t.updated,
                    t.duplicates,
                    t.ignored,
                    t.rejected,
                    summary.rejected_rows.len()
                );
                for r in &summary.rejected_rows {
                    println!("  row {}: {}", r.row.map_or("?".into(), |n| n.to_string()), r.reason);
                }
                for e in &t.errors {
                    println!("  rejected: {e}");
                }
                Ok(ExitCode::SUCCESS)
            })
        }
        _ => unreachable!("cli::run dispatches only this module's commands here"),
    }
}
