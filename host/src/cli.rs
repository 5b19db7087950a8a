//! The `cashbackd` command line: the options every command shares ([`Cli`]), the
//! commands ([`Command`]), and the dispatch to one module per command group
//! (`serve`, `plugin`, `merchant`, `network`, `jobs`, `access`, `callbacks`, `endpoint`, `users`,
//! `payout`, `config_cmd`), each of which parses its own subcommands.

mod access;
mod author;
mod author_ts;
mod callbacks;
mod config_cmd;
mod decision;
mod endpoint;
mod jobs;
mod merchant;
mod network;
mod payout;
mod plugin;
mod registry;
mod serve;
mod users;

use crate::plugin::fixtures;
use crate::plugin::{LoadedPlugin, PluginKind, PluginRuntime};
use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// cashbackd: self-hosted cashback and affiliate-conversion platform.
#[derive(Parser)]
#[command(name = "cashbackd", version, about)]
pub struct Cli {
    // The settings below are also read from the config file and the environment (their
    // variables are read there, not by clap, so that one place checks them and names
    // the key): `cashbackd config default` lists them. Given here, a flag wins.
    /// A config file over the defaults (`cashbackd config default` prints them). Before
    /// the command (`cashbackd --config FILE serve`): `network add` has a `--config` of
    /// its own.
    #[arg(long, env = "CASHBACKD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where plugin components and compiled artifacts are stored [config: plugin.store,
    /// env: CASHBACKD_PLUGIN_STORE].
    #[arg(long, global = true, default_value = ".cashbackd/plugins")]
    pub plugin_store: PathBuf,
    /// The database: a SQLite file (created on first start) or PostgreSQL [config:
    /// database.url, env: CASHBACKD_DATABASE_URL or DATABASE_URL].
    #[arg(long, global = true, default_value = "sqlite://.cashbackd/cashbackd.db")]
    pub database_url: String,
    /// Let partner callbacks reach private, loopback and link-local addresses (refused
    /// by default: a callback URL must not become a way into the private network)
    /// [config: callbacks.allow_private, env: CASHBACKD_CALLBACKS_ALLOW_PRIVATE].
    #[arg(long, global = true)]
    pub callbacks_allow_private: bool,
    /// SMTP server for user notifications: `smtp://user:password@host:587?tls=required`,
    /// `smtps://...`, or `smtp://host:25` (no TLS). Without it, digests are not sent
    /// [config: smtp.url, env: CASHBACKD_SMTP_URL].
    #[arg(long, global = true)]
    pub smtp_url: Option<String>,
    /// The sender of notification e-mails [config: smtp.from, env: CASHBACKD_SMTP_FROM].
    #[arg(long, global = true, default_value = "cashbackd <cashback@localhost>")]
    pub smtp_from: String,
    /// A directory whose subject.txt, body.txt, change.txt, payout.txt override the built-in
    /// notification templates [config: notify.templates, env: CASHBACKD_NOTIFY_TEMPLATES].
    #[arg(long, global = true)]
    pub notify_templates: Option<PathBuf>,
    /// Log lines as text or JSON [config: log.format, env: CASHBACKD_LOG_FORMAT]; which
    /// ones: CASHBACKD_LOG (log.filter).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<crate::config::LogFormat>,
    /// Every setting in effect (filled by [`main`] from the layers of [`crate::config`]).
    #[arg(skip)]
    pub settings: crate::config::Settings,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
/// By hand, so that no `{:?}` of the command line can print a secret: the database and
/// SMTP URLs may hold passwords, and subcommands take endpoint and network secrets.
impl std::fmt::Debug for Cli {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cli")
            .field("config", &self.config)
            .field("plugin_store", &self.plugin_store)
            .field("database_url", &crate::db::redact(&self.database_url))
            .field("callbacks_allow_private", &self.callbacks_allow_private)
            .field("smtp_url", &self.smtp_url.as_ref().map(|_| "***"))
            .field("smtp_from", &self.smtp_from)
            .field("log_format", &self.log_format)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Work with plugin components.
    Plugin {
        /// What to do.
        #[command(subcommand)]
        command: plugin::PluginCommand,
    },
    /// Run cashbackd on a fresh SQLite demo database with something to see: a merchant,
    /// a network, a tracked link, and clicks and postbacks sent through its HTTP server.
    Demo {
        /// Folder of built plugin components (scripts/build-plugins.sh writes here).
        #[arg(long, default_value = "target/plugins/wasm32-wasip2")]
        plugins: PathBuf,
        /// The demo's SQLite file, recreated on every start.
        #[arg(long, default_value = ".cashbackd/demo.db")]
        demo_database: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Seed, simulate, report, then exit instead of serving.
        #[arg(long)]
        once: bool,
    },
    /// Run the server: tracked clicks (`/c/{link}`), S2S postbacks (`/postback/{network}`),
    /// health, metrics, and reward maturation.
    Serve {
        /// Address to listen on [config: http.listen, env: CASHBACKD_LISTEN; default
        /// 127.0.0.1:8080].
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// The configuration: the commented defaults, and checking a file.
    Config {
        /// What to do.
        #[command(subcommand)]
        command: config_cmd::ConfigCommand,
    },
    /// Configure merchants.
    Merchant {
        /// What to do.
        #[command(subcommand)]
        command: merchant::MerchantCommand,
    },
    /// Configure affiliate networks.
    Network {
        /// What to do.
        #[command(subcommand)]
        command: network::NetworkCommand,
    },
    /// Scheduled jobs: network imports and the system's own.
    Jobs {
        /// What to do.
        #[command(subcommand)]
        command: jobs::JobsCommand,
    },
    /// Import a network's offline report file through its adapter.
    Import {
        /// The network.
        #[arg(long)]
        network: String,
        /// The file.
        file: PathBuf,
    },
    /// Admin API tokens.
    Token {
        /// What to do.
        #[command(subcommand)]
        command: access::TokenCommand,
    },
    /// Dashboard sessions.
    Session {
        /// What to do.
        #[command(subcommand)]
        command: access::SessionCommand,
    },
    /// Configure tracked links.
    Link {
        /// What to do.
        #[command(subcommand)]
        command: merchant::LinkCommand,
    },
    /// Create the database if needed and apply the embedded migrations (the server also
    /// does this on start).
    Migrate,
    /// Partners (publishers) who receive callbacks.
    Partner {
        /// What to do.
        #[command(subcommand)]
        command: callbacks::PartnerCommand,
    },
    /// Partners' callback endpoints: URL templates, signing, retries, the tester.
    Endpoint {
        /// What to do.
        #[command(subcommand)]
        command: endpoint::EndpointCommand,
    },
    /// The callback delivery log, replay and alerts.
    Deliveries {
        /// What to do.
        #[command(subcommand)]
        command: callbacks::DeliveriesCommand,
    },
    /// User accounts: the site's users, their balances and conversions.
    User {
        /// What to do.
        #[command(subcommand)]
        command: users::UserCommand,
    },
    /// Conversions that wait: process parked or failed ones again, attribute by hand.
    Conversion {
        /// What to do.
        #[command(subcommand)]
        command: users::ConversionCommand,
    },
    /// Payouts of users' available cashback: list, show, approve, reject, mark paid or
    /// failed (and request, for operators).
    Payout {
        /// What to do.
        #[command(subcommand)]
        command: payout::PayoutCommand,
    },
}

/// The `cashbackd` program: parses the command line, loads and checks the configuration
/// (an error names the key, and exits 2), starts the logs, runs the command.
pub fn main() -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let outcome = match &cli.command {
        // Its errors are its output: it runs whatever the configuration holds.
        Command::Config { command } => config_cmd::run(&cli, Some(&matches), command),
        _ => match config_cmd::resolve(&mut cli, &matches) {
            Ok(loaded) => {
                crate::logging::init(&cli.settings.log);
                for name in &loaded.unknown_env {
                    tracing::warn!(variable = %name, "not a cashbackd setting; ignored (`cashbackd config default` lists them)");
                }
                run(cli)
            }
            Err(e) => Err(e.into()),
        },
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the command line with `cli.settings` as they are (see [`main`]).
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Config { ref command } => config_cmd::run(&cli, None, command),
        Command::Payout { ref command } => payout::run(&cli, command),
        Command::User { ref command } => users::run_user(&cli, command),
        Command::Conversion { ref command } => users::run_conversion(&cli, command),
        Command::Demo { .. } | Command::Migrate | Command::Serve { .. } => serve::run(&cli),
        Command::Plugin { .. } => plugin::run(&cli),
        Command::Merchant { .. } | Command::Link { .. } => merchant::run(&cli),
        Command::Network { .. } | Command::Import { .. } => network::run(&cli),
        Command::Jobs { .. } => jobs::run(&cli),
        Command::Token { .. } | Command::Session { .. } => access::run(&cli),
        Command::Partner { .. } | Command::Deliveries { .. } => callbacks::run(&cli),
        Command::Endpoint { .. } => endpoint::run(&cli),
    }
}

/// Runs `f` with a connected, migrated service on a fresh runtime.
pub(crate) fn with_service<F, Fut>(cli: &Cli, f: F) -> anyhow::Result<ExitCode>
where
    F: FnOnce(crate::conversions::Service, Arc<PluginRuntime>) -> Fut,
    Fut: Future<Output = anyhow::Result<ExitCode>>,
{
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        // A command's pool: small, whatever it does (a million-row import included).
        let db = crate::db::Db::connect_as(&cli.database_url, crate::db::Profile::Command).await?;
        let runtime = Arc::new(PluginRuntime::new(cli.settings.runtime_config(&cli.plugin_store))?);
        let clock = Arc::new(crate::clock::SystemClock);
        let service = crate::conversions::Service::new(db, runtime.clone(), clock, Default::default());
        f(service, runtime).await
    })
}

pub(crate) fn fmt_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map_or_else(|| ms.to_string(), |t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::Parser;

    #[test]
    fn debugging_the_command_line_prints_no_secret() {
        let cli = Cli::try_parse_from([
            "cashbackd",
            "--database-url",
            "postgres://app:db-pass-123@db/cb",
            "--smtp-url",
            "smtp://mailer:smtp-pass-456@mail:587",
            "migrate",
        ])
        .expect("parses");
        let shown = format!("{cli:?}");
        assert!(!shown.contains("db-pass-123") && !shown.contains("smtp-pass-456"), "{shown}");
        assert!(shown.contains("postgres://app:***@db/cb"), "{shown}");
    }
}
