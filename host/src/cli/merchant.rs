//! `cashbackd merchant add|map-ref` and `link add`: merchants, their rules and tracked links.

use super::*;

/// `cashbackd merchant ...`
#[derive(Debug, Subcommand)]
pub enum MerchantCommand {
    /// Create or update a merchant, optionally with its rule plugin.
    Add {
        /// The merchant's id.
        id: String,
        /// Display name.
        #[arg(long)]
        name: String,
        /// Review every order before crediting it (seed 002's manual mode).
        #[arg(long)]
        manual: bool,
        /// Days from completion until cashback is available.
        #[arg(long, default_value_t = 30)]
        reward_delay_days: i64,
        /// A rule plugin component to store and bind.
        #[arg(long)]
        rule: Option<PathBuf>,
        /// The rule's configuration (JSON).
        #[arg(long, default_value = "{}")]
        rule_config: String,
    },
    /// Map a network's merchant reference to the merchant; conversions parked because it
    /// was not mapped are processed.
    MapRef {
        /// The merchant.
        id: String,
        /// The network.
        #[arg(long)]
        network: String,
        /// The network's reference for this merchant (its `merchant_ref`).
        #[arg(long = "ref")]
        merchant_ref: String,
    },
}

/// `cashbackd link ...`
#[derive(Debug, Subcommand)]
pub enum LinkCommand {
    /// Create or update a tracked link `/c/{id}`.
    Add {
        /// The link's id.
        id: String,
        /// The merchant.
        #[arg(long)]
        merchant: String,
        /// The network tracking it.
        #[arg(long)]
        network: String,
        /// Where to redirect; `{click_id}`, `{ref_id}`, `{sub1}`..`{sub5}` are filled in.
        #[arg(long)]
        url: String,
    },
}

/// Runs the command (`cli::run` dispatches here).
pub(super) fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Merchant { command: MerchantCommand::MapRef { ref id, ref network, ref merchant_ref } } => {
            let (id, network, merchant_ref) = (id.clone(), network.clone(), merchant_ref.clone());
            with_service(cli, |service, _| async move {
                if crate::ingest::network(service.db(), &network).await?.is_none() {
                    bail!("--network: no network {network:?}");
                }
                let processed = service.map_merchant_ref(&network, &merchant_ref, &id).await?;
                println!(
                    "network {network}'s merchant ref {merchant_ref} is merchant {id}; {processed} parked conversion(s) processed"
                );
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Merchant {
            command: MerchantCommand::Add { ref id, ref name, manual, reward_delay_days, ref rule, ref rule_config },
        } => {
            let (id, name, rule, rule_config) = (id.clone(), name.clone(), rule.clone(), rule_config.clone());
            // Everything that can be checked before a write is: a refused rule leaves
            // neither a merchant nor a stored component behind.
            let rule = match rule {
                Some(path) => {
                    let bytes = std::fs::read(&path).with_context(|| format!("--rule: reading {}", path.display()))?;
                    let config: serde_json::Value =
                        serde_json::from_str(&rule_config).context("--rule-config: not JSON")?;
                    Some((bytes, config))
                }
                None => None,
            };
            let most = i64::from(crate::plugin::boundary::MAX_REWARD_DELAY_DAYS);
            if !(0..=most).contains(&reward_delay_days) {
                bail!("--reward-delay-days: must be between 0 and {most}, got {reward_delay_days}");
            }
            with_service(cli, |service, _| async move {
                let rule = match rule {
                    Some((bytes, config)) => {
                        // `plugin upload`'s checks first, with its reason, then the rest.
                        let vetted =
                            crate::registry::vet(&service, &bytes).await.map_err(|e| anyhow::anyhow!("--rule: {e}"))?;
                        let plugin = vetted.uploaded().plugin.clone();
                        if plugin.kind() != PluginKind::MerchantRules {
                            bail!("--rule: {} is a {}, not a rule plugin", plugin.manifest.label(), plugin.kind());
                        }
                        plugin.manifest.validate_config(&config).map_err(|e| anyhow::anyhow!("--rule-config: {e}"))?;
                        crate::registry::admit(&service, vetted).await?;
                        Some((plugin, config))
                    }
                    None => None,
                };
                service.upsert_merchant(&id, &name, manual, reward_delay_days).await?;
                if let Some((plugin, config)) = rule {
                    service.set_rules(&id, &[(plugin.digest.to_string(), config)]).await?;
                    println!("merchant {id}: rule {} ({})", plugin.manifest.label(), plugin.digest);
                }
                println!(
                    "merchant {id} saved ({} mode, {reward_delay_days} days' reward delay)",
                    if manual { "manual" } else { "automatic" }
                );
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Link { command: LinkCommand::Add { ref id, ref merchant, ref network, ref url } } => {
            if !url.starts_with("https://") && !url.starts_with("http://") {
                bail!("--url: must start with https:// or http://");
            }
            let link = crate::ingest::Link {
                id: id.clone(),
                merchant_id: merchant.clone(),
                network_id: network.clone(),
                url_template: url.clone(),
            };
            with_service(cli, |service, _| async move {
                crate::ingest::upsert_link(service.db(), &link, service.now()).await?;
                println!("link {} saved: /c/{}?user=USER -> {}", link.id, link.id, link.url_template);
                Ok(ExitCode::SUCCESS)
            })
        }
        _ => unreachable!("cli::run dispatches only this module's commands here"),
    }
}
