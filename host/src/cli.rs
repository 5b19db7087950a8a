//! The `cashbackd` command line.

mod author;
mod author_ts;
mod config_cmd;
mod decision;
mod payout;
mod registry;
mod users;

pub use registry::instant as parse_instant;

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
        command: PluginCommand,
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
        command: MerchantCommand,
    },
    /// Configure affiliate networks.
    Network {
        /// What to do.
        #[command(subcommand)]
        command: NetworkCommand,
    },
    /// Scheduled jobs: network imports and the system's own.
    Jobs {
        /// What to do.
        #[command(subcommand)]
        command: JobsCommand,
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
        command: TokenCommand,
    },
    /// Dashboard sessions.
    Session {
        /// What to do.
        #[command(subcommand)]
        command: SessionCommand,
    },
    /// Configure tracked links.
    Link {
        /// What to do.
        #[command(subcommand)]
        command: LinkCommand,
    },
    /// Create the database if needed and apply the embedded migrations (the server also
    /// does this on start).
    Migrate,
    /// Partners (publishers) who receive callbacks.
    Partner {
        /// What to do.
        #[command(subcommand)]
        command: PartnerCommand,
    },
    /// Partners' callback endpoints: URL templates, signing, retries, the tester.
    Endpoint {
        /// What to do.
        #[command(subcommand)]
        command: EndpointCommand,
    },
    /// The callback delivery log, replay and alerts.
    Deliveries {
        /// What to do.
        #[command(subcommand)]
        command: DeliveriesCommand,
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

/// `cashbackd endpoint ...`
#[derive(Debug, Subcommand)]
// Parsed once per process: the size of the `add` variant does not matter.
#[allow(clippy::large_enum_variant)]
pub enum EndpointCommand {
    /// Create or replace a callback endpoint (docs/CALLBACKS.md lists the macros).
    Add {
        /// The endpoint's id.
        id: String,
        /// The partner it belongs to.
        #[arg(long)]
        partner: String,
        /// URL template, e.g. `https://p.example/cb?state=[%CASHBACK:STATE%]&cid={click_id}&pay={payout}`.
        #[arg(long)]
        url: String,
        /// GET (values in the URL, HMAC query signature) or POST (JSON body, Standard Webhooks).
        #[arg(long, default_value = "get")]
        method: String,
        /// A static custom parameter `name=value` (repeatable).
        #[arg(long = "param")]
        params: Vec<String>,
        /// The signing secret: `whsec_<base64>` (any text of 16+ characters for GET).
        /// Prefer the environment variable: it stays out of the shell history.
        #[arg(long, env = "CASHBACKD_CALLBACK_SECRET", hide_env_values = true, conflicts_with = "generate_secret")]
        secret: Option<String>,
        /// Generate a `whsec_` secret and print it once.
        #[arg(long)]
        generate_secret: bool,
        /// Query parameter of the GET signature.
        #[arg(long, default_value = "signature")]
        signature_param: String,
        /// Only this merchant's conversions.
        #[arg(long)]
        merchant: Option<String>,
        /// Only this network's conversions.
        #[arg(long)]
        network: Option<String>,
        /// Only conversions whose click carried a ref_id (seed 003).
        #[arg(long)]
        require_ref_id: bool,
        /// Only these states, comma-separated: CREATED (sent on every click, seed 001),
        /// PENDING, ADJUSTED, COMPLETED, REJECTED, REVERSED [default: every state].
        #[arg(long, value_delimiter = ',')]
        states: Vec<String>,
        /// What it is sent, comma-separated: `conversions` (every state of a
        /// conversion), `payouts` (every step of a payout).
        #[arg(long, default_value = "conversions")]
        events: String,
        // Unset, these take the configuration's callbacks.* (seed 003's values by default).
        /// Attempts in all [default: callbacks.max_attempts, 3].
        #[arg(long)]
        max_attempts: Option<u32>,
        /// fixed or exponential [default: callbacks.backoff, fixed].
        #[arg(long)]
        backoff: Option<String>,
        /// Seconds between attempts (the first wait, with exponential backoff) [default:
        /// callbacks.retry_delay_secs, 300].
        #[arg(long)]
        retry_delay: Option<i64>,
        /// Longest wait in seconds (also caps a partner's Retry-After) [default:
        /// callbacks.max_delay_secs, 86400].
        #[arg(long)]
        max_delay: Option<i64>,
        /// Random spread of each wait, in percent [default: callbacks.jitter_pct, 0].
        #[arg(long)]
        jitter: Option<u32>,
        /// Request timeout in milliseconds [default: callbacks.timeout_ms, 10000].
        #[arg(long)]
        timeout_ms: Option<i64>,
        /// Failed attempts in a row after which the endpoint is disabled [default:
        /// callbacks.disable_after, 20].
        #[arg(long)]
        disable_after: Option<u32>,
    },
    /// Every endpoint (secrets masked) with its backlog.
    List,
    /// Enable an endpoint: its backlog is sent, in order.
    Enable {
        /// The endpoint.
        id: String,
        /// Do not queue again the deliveries given up during its failures.
        #[arg(long)]
        no_replay: bool,
    },
    /// Disable an endpoint: its deliveries wait.
    Disable {
        /// The endpoint.
        id: String,
        /// Why.
        #[arg(long, default_value = "disabled by an operator")]
        reason: String,
    },
    /// Send a sample callback and print the exact request and the response.
    Test {
        /// The endpoint.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rotate the signing secret: a new secret is generated (printed once) and signs
    /// beside the old ones until `drop-old-secrets`.
    RotateSecret {
        /// The endpoint.
        id: String,
    },
    /// Keep only the newest signing secret.
    DropOldSecrets {
        /// The endpoint.
        id: String,
    },
    /// Change only which states an endpoint receives (its other settings, secrets
    /// included, stay as they are).
    SetStates {
        /// The endpoint.
        id: String,
        /// The states, comma-separated: CREATED (sent on every click), PENDING, ADJUSTED,
        /// COMPLETED, REJECTED, REVERSED.
        #[arg(long, value_delimiter = ',', required_unless_present = "every_state", conflicts_with = "every_state")]
        states: Vec<String>,
        /// Every state, CREATED on click included (the default of a new endpoint).
        #[arg(long)]
        every_state: bool,
    },
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

/// `cashbackd jobs ...`
#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Every job, its schedule, next run and last run.
    List,
    /// Run a job now, whatever its schedule.
    Run {
        /// The job's name.
        name: String,
    },
    /// Schedule a network's API import.
    Add {
        /// The job's name.
        name: String,
        /// Cron expression: `0 * * * *` (hourly), `0 3 * * *` (daily), `@weekly`...
        #[arg(long)]
        schedule: String,
        /// The network whose report to import.
        #[arg(long)]
        import: String,
    },
}

/// `cashbackd token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; it is printed once and only its hash is stored.
    Create {
        /// Who or what it is for.
        name: String,
        /// read, write or admin.
        #[arg(long, default_value = "read")]
        scope: String,
        /// Days until it expires (never, if absent).
        #[arg(long)]
        expires_days: Option<i64>,
    },
    /// Revoke a token by id.
    Revoke {
        /// The token's id (`tok_...`).
        id: String,
    },
}

/// `cashbackd session ...`
#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// The open sessions: id, token, scope, opened, expires.
    List,
    /// Sign a session out (`ses_...`), or every session of a token (`tok_...`).
    Revoke {
        /// A session's id, or a token's id.
        id: String,
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

/// `cashbackd plugin ...`
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Print a component's world, contract version, manifest, imports, exports and limits.
    Inspect {
        /// The component (.wasm).
        file: PathBuf,
        /// A manifest for a component that does not embed one.
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run a component against its embedded fixtures and/or a fixture file, inside the
    /// sandbox; given a plugin crate, its native tests first.
    ///
    /// A crate's directory: `cargo test` in it, then `plugin build`, then its fixtures in
    /// the sandbox. Exits non-zero if any case fails.
    Test {
        /// The component (.wasm), or a plugin crate's directory.
        #[arg(default_value = ".")]
        file: PathBuf,
        /// A fixture file (JSON array of cases) to run besides the embedded ones.
        #[arg(long)]
        fixtures: Option<PathBuf>,
        /// A manifest for a component that does not embed one.
        #[arg(long)]
        manifest: Option<PathBuf>,
    },
    /// Create a plugin crate that uses the SDK: a small working rule or adapter, its
    /// manifest, fixtures and unit tests.
    ///
    /// Inside a cashbackd workspace (examples/NAME, plugins/NAME) it is a member of it;
    /// anywhere else, a crate of its own that depends on this repository's SDK by path.
    New {
        /// `rule` (a merchant's cashback rule) or `adapter` (a network's import adapter).
        kind: author::Kind,
        /// The plugin's name, also its crate's: a-z, 0-9 and -, starting with a letter.
        #[arg(value_parser = author::plugin_name)]
        name: String,
        /// Where to create it (default: ./NAME); must not exist.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The SDK a crate of its own depends on (default: the sdk/ of the repository this
        /// cashbackd was built from).
        #[arg(long)]
        sdk: Option<PathBuf>,
        /// The language: `rust` (a crate using the SDK), or `ts` (TypeScript, built with
        /// componentize-js from npm; rules only).
        #[arg(long, value_enum, default_value = "rust")]
        lang: author::Lang,
    },
    /// Build a plugin crate into components and print where they are.
    ///
    /// Runs scripts/build-plugins.sh --crate PATH of the cashbackd repository, which picks
    /// the wasm toolchain (installed target, `rustup target add`, Debian's rustc-web).
    Build {
        /// The crate's directory.
        #[arg(default_value = ".")]
        path: PathBuf,
    },
    /// What the rules decided for one conversion, and what the ledger holds for it.
    ///
    /// The plugin versions of the chain, the inputs they saw (prior orders, time), each
    /// line's cashback and reason, exclusions, notes and holds.
    Decision {
        /// The conversion's id (`cv_...`, as a postback's answer names it).
        conversion: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The registry in the database.
    #[command(flatten)]
    Registry(registry::RegistryCommand),
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
        Command::Plugin { command: PluginCommand::Registry(ref command) } => registry::run(&cli, command),
        Command::User { ref command } => users::run_user(&cli, command),
        Command::Conversion { ref command } => users::run_conversion(&cli, command),
        Command::Merchant { command: MerchantCommand::MapRef { ref id, ref network, ref merchant_ref } } => {
            let (id, network, merchant_ref) = (id.clone(), network.clone(), merchant_ref.clone());
            with_service(&cli, |service, _| async move {
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
        Command::Plugin { command: PluginCommand::New { kind, ref name, ref dir, ref sdk, lang } } => match lang {
            author::Lang::Rust => author::new(kind, name, dir.as_deref(), sdk.as_deref()),
            author::Lang::Ts if kind == author::Kind::Rule => author_ts::new(name, dir.as_deref()),
            author::Lang::Ts => anyhow::bail!("--lang ts: only rules can be written in TypeScript; adapters are Rust"),
        },
        Command::Plugin { command: PluginCommand::Build { ref path } } if author_ts::is_project(path) => {
            println!("component {}", author_ts::build(path)?.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin { command: PluginCommand::Build { ref path } } => author::build(path),
        Command::Plugin { command: PluginCommand::Decision { ref conversion, json } } => {
            decision::run(&cli, conversion, json)
        }
        Command::Plugin { command } => {
            let runtime = PluginRuntime::new(cli.settings.runtime_config(&cli.plugin_store))?;
            match command {
                PluginCommand::Inspect { file, manifest, json } => {
                    let plugin = load(&runtime, &file, manifest.as_deref())?;
                    print_inspect(&plugin, json)?;
                    Ok(ExitCode::SUCCESS)
                }
                PluginCommand::Test { file, fixtures, manifest } if author_ts::is_project(&file) => {
                    author_ts::test(&runtime, &file, fixtures.as_deref(), manifest.as_deref())
                }
                PluginCommand::Test { file, fixtures, manifest } if file.is_dir() => {
                    author::test(&runtime, &file, fixtures.as_deref(), manifest.as_deref())
                }
                PluginCommand::Test { file, fixtures, manifest } => {
                    let plugin = load(&runtime, &file, manifest.as_deref())?;
                    test_plugin(&runtime, &plugin, fixtures.as_deref())
                }
                PluginCommand::Registry(_)
                | PluginCommand::New { .. }
                | PluginCommand::Build { .. }
                | PluginCommand::Decision { .. } => unreachable!("matched above"),
            }
        }
        Command::Demo { ref plugins, ref demo_database, listen, once } => {
            for suffix in ["", "-wal", "-shm"] {
                let mut path = demo_database.clone().into_os_string();
                path.push(suffix);
                let _ = std::fs::remove_file(path);
            }
            let url = format!("sqlite://{}", demo_database.display());
            let plugins = plugins.clone();
            // The demo plays a network's reporting API and a partner's callback receiver
            // itself, on 127.0.0.1 (`demo/history.rs`): its adapters and callbacks may
            // reach loopback, which `serve` refuses unless configured.
            let mut settings = cli.settings.clone();
            settings.plugin.http_allow_private = true;
            let demo_cli = Cli {
                config: None,
                database_url: url.clone(),
                plugin_store: cli.plugin_store.clone(),
                callbacks_allow_private: true,
                smtp_url: cli.smtp_url.clone(),
                smtp_from: cli.smtp_from.clone(),
                notify_templates: cli.notify_templates.clone(),
                log_format: cli.log_format,
                settings,
                command: Command::Migrate,
            };
            let config = (callbacks_config(&demo_cli), notify_config(&cli));
            let http = crate::http::HttpConfig::from_settings(&cli.settings);
            crate::metrics::install();
            with_service(&demo_cli, |service, runtime| async move {
                let workers = Workers::start(&service, config.0, config.1, "demo")?;
                let servers = (workers.deliverer, workers.notifier, http);
                crate::demo::run(service, runtime, servers, &plugins, listen, &url, once).await?;
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Migrate => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                let db = crate::db::Db::connect(&cli.database_url).await?;
                println!("database {} ({:?}) is up to date:", crate::db::redact(&cli.database_url), db.backend);
                for (version, description) in db.applied_migrations().await? {
                    println!("  {version} {description}");
                }
                anyhow::Ok(ExitCode::SUCCESS)
            })
        }
        Command::Serve { listen } => {
            let config = (callbacks_config(&cli), notify_config(&cli));
            let listen = listen.unwrap_or(cli.settings.http.listen);
            let metrics_access = crate::http::MetricsAccess { require_token: cli.settings.metrics.require_token };
            let http = crate::http::HttpConfig::from_settings(&cli.settings);
            let notify_schedule = cli.settings.notify.schedule.clone();
            let payout_policy = cli.settings.payouts.policy();
            crate::metrics::install();
            with_service(&cli, |service, runtime| async move {
                let listener =
                    tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
                println!("cashbackd listening on http://{}", listener.local_addr()?);
                crate::scheduler::ensure_system_jobs(&service).await.map_err(anyhow::Error::msg)?;
                if crate::scheduler::set_schedule(&service, "notify", &notify_schedule)
                    .await
                    .map_err(anyhow::Error::msg)?
                {
                    tracing::info!(schedule = %notify_schedule, "notify job scheduled as configured (notify.schedule)");
                }
                let owner = format!("{}-{}", listen, std::process::id());
                let workers = Workers::start(&service, config.0, config.1, &owner)?;
                let scheduler = crate::scheduler::Scheduler::new(service.clone(), runtime.clone(), owner)
                    .with_callbacks(workers.deliverer.clone())
                    .with_notifier(workers.notifier.clone());
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
                    loop {
                        tick.tick().await;
                        if let Err(e) = scheduler.tick().await {
                            tracing::error!(error = %e, "scheduler tick failed");
                        }
                    }
                });
                let state = crate::http::AppState { service, runtime };
                let shutdown = async {
                    let _ = tokio::signal::ctrl_c().await;
                };
                let app = crate::http::router_with(state, http)
                    .layer(axum::Extension(workers.deliverer.clone()))
                    .layer(axum::Extension(workers.notifier.clone()))
                    .layer(axum::Extension(metrics_access))
                    .layer(axum::Extension(payout_policy));
                crate::http::serve_router(app, listener, shutdown).await?;
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
            with_service(&cli, |service, _| async move {
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
            with_service(&cli, |service, _| async move {
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
        Command::Jobs { ref command } => {
            let command = match command {
                JobsCommand::List => None,
                JobsCommand::Run { name } => Some((name.clone(), None)),
                JobsCommand::Add { name, schedule, import } => {
                    Some((name.clone(), Some((schedule.clone(), import.clone()))))
                }
            };
            with_service(&cli, |service, runtime| async move {
                crate::scheduler::ensure_system_jobs(&service).await.map_err(anyhow::Error::msg)?;
                match command {
                    None => {
                        for job in crate::scheduler::list(&service).await? {
                            let last = job.last_run.as_ref().map_or("never run".to_string(), |r| {
                                format!(
                                    "last {} ({} missed) {}",
                                    r.outcome,
                                    r.missed,
                                    r.detail.clone().unwrap_or_else(|| r.counts.to_string())
                                )
                            });
                            println!(
                                "{:<24} {:<14} next {}  {}",
                                job.name,
                                job.schedule,
                                fmt_time(job.next_run_at),
                                last
                            );
                        }
                        Ok(ExitCode::SUCCESS)
                    }
                    Some((name, None)) => {
                        let scheduler =
                            crate::scheduler::Scheduler::new(service, runtime, format!("cli-{}", std::process::id()));
                        let run = scheduler.run_now(&name).await.map_err(anyhow::Error::msg)?;
                        println!(
                            "{name}: {} {}",
                            run.outcome,
                            run.detail.clone().unwrap_or_else(|| run.counts.to_string())
                        );
                        Ok(if run.outcome == "ok" { ExitCode::SUCCESS } else { ExitCode::FAILURE })
                    }
                    Some((name, Some((schedule, network)))) => {
                        if crate::ingest::network(service.db(), &network).await?.is_none() {
                            bail!("--import: no network {network:?} (cashbackd network add)");
                        }
                        let kind = crate::scheduler::JobKind::Import { network };
                        crate::scheduler::upsert_job(&service, &name, &schedule, &kind)
                            .await
                            .map_err(|e| anyhow::anyhow!("--schedule: {e}"))?;
                        println!("job {name} saved");
                        Ok(ExitCode::SUCCESS)
                    }
                }
            })
        }
        Command::Import { ref network, ref file } => {
            let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
            let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let network = network.clone();
            with_service(&cli, |service, runtime| async move {
                let bar = indicatif::ProgressBar::new(0);
                bar.set_style(
                    indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} events {elapsed}")
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                let progress = |done: u64, total: u64| {
                    bar.set_length(total);
                    bar.set_position(done);
                };
                let summary = crate::imports::import_file(&service, &runtime, &network, &name, bytes, progress)
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
        Command::Token { ref command } => {
            let command = match command {
                TokenCommand::Create { name, scope, expires_days } => {
                    let scope = crate::auth::Scope::parse(scope)
                        .ok_or_else(|| anyhow::anyhow!("--scope: {scope:?} is not read, write or admin"))?;
                    if expires_days.is_some_and(|d| d <= 0) {
                        bail!("--expires-days: must be at least 1");
                    }
                    Ok((name.clone(), scope, *expires_days))
                }
                TokenCommand::Revoke { id } => Err(id.clone()),
            };
            with_service(&cli, |service, _| async move {
                match command {
                    Ok((name, scope, days)) => {
                        let now = service.now();
                        let token = crate::auth::create_token(
                            service.db(),
                            &name,
                            scope,
                            now,
                            days.map(|d| now + d * crate::clock::DAY_MS),
                        )
                        .await?;
                        println!("{token}");
                        eprintln!("token for {name} ({} scope); shown once, store it now", scope.as_str());
                        Ok(ExitCode::SUCCESS)
                    }
                    Err(id) => {
                        if crate::auth::revoke(service.db(), &id, service.now()).await? {
                            println!("token {id} revoked");
                            Ok(ExitCode::SUCCESS)
                        } else {
                            bail!("no active token {id}")
                        }
                    }
                }
            })
        }
        Command::Session { ref command } => with_service(&cli, |service, _| async move {
            let now = service.now();
            match command {
                SessionCommand::List => {
                    for s in crate::auth::open_sessions(service.db(), now).await? {
                        println!(
                            "{}\t{} ({})\t{}\topened {}\texpires {}",
                            s.id,
                            s.caller.id,
                            s.caller.name,
                            s.caller.scope.as_str(),
                            crate::dashboard::time(s.created_at),
                            crate::dashboard::time(s.expires_at)
                        );
                    }
                    Ok(ExitCode::SUCCESS)
                }
                SessionCommand::Revoke { id } => {
                    if !id.starts_with("ses_") && !id.starts_with("tok_") {
                        bail!("{id:?}: give a session id (ses_...) or a token id (tok_...)");
                    }
                    match crate::auth::revoke_sessions(service.db(), id, now).await? {
                        0 => bail!("no open session of {id}"),
                        n => {
                            println!("{n} session(s) of {id} signed out");
                            Ok(ExitCode::SUCCESS)
                        }
                    }
                }
            }
        }),
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
            with_service(&cli, |service, _| async move {
                crate::ingest::upsert_link(service.db(), &link, service.now()).await?;
                println!("link {} saved: /c/{}?user=USER -> {}", link.id, link.id, link.url_template);
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Partner { ref command } => {
            let command = match command {
                PartnerCommand::Add { id, name } => Some((id.clone(), name.clone())),
                PartnerCommand::List => None,
            };
            with_service(&cli, |service, _| async move {
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
        Command::Endpoint { ref command } => {
            let spec = match command {
                EndpointCommand::Add { .. } => Some(endpoint_spec(command, &cli.settings.callbacks)?),
                _ => None,
            };
            let command = EndpointAction::of(command);
            let deliver_config = callbacks_config(&cli);
            with_service(&cli, |service, _| async move {
                let db = service.db();
                let now = service.now();
                match command {
                    EndpointAction::Add { generated } => {
                        let spec = spec.ok_or_else(|| anyhow::anyhow!("no endpoint"))?;
                        if !crate::callbacks::partners(db).await?.iter().any(|p| p.id == spec.partner_id) {
                            bail!("--partner: no partner {:?} (cashbackd partner add)", spec.partner_id);
                        }
                        crate::callbacks::save_endpoint(db, &spec, now).await?;
                        println!("endpoint {} saved ({} {})", spec.id, spec.method.as_str(), spec.url_template);
                        if generated && let Some(secret) = spec.secrets.first() {
                            println!("{}", secret.expose());
                            eprintln!("signing secret of {}: shown once, give it to the partner now", spec.id);
                        }
                    }
                    EndpointAction::List => {
                        for e in crate::callbacks::endpoints(db).await? {
                            let states = e.states.as_ref().map_or("every state".to_string(), |v| {
                                v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",")
                            });
                            println!(
                                "{:<20} {:<12} {:<4} {:<8} {:<20} backlog {:<5} failures {:<3} states {states} secrets [{}] {}{}",
                                e.id,
                                e.partner_id,
                                e.method.as_str(),
                                if e.enabled { "enabled" } else { "DISABLED" },
                                e.events.join(","),
                                e.backlog,
                                e.consecutive_failures,
                                e.secrets.join(", "),
                                e.url_template,
                                e.disabled_reason.map(|r| format!(" ({r})")).unwrap_or_default()
                            );
                        }
                    }
                    EndpointAction::Enable { id, replay } => {
                        let done = crate::callbacks::enable(db, &id, replay, now).await?;
                        println!(
                            "endpoint {id} enabled: {} deliveries waiting are sent in order ({} given up during its failures queued again)",
                            done.backlog, done.requeued
                        );
                    }
                    EndpointAction::Disable { id, reason } => {
                        crate::callbacks::disable(db, &id, &reason, now).await?;
                        println!("endpoint {id} disabled: its deliveries wait until it is enabled");
                    }
                    EndpointAction::Test { id, json } => {
                        let d = crate::callbacks::Deliverer::new(
                            db.clone(),
                            service.clock(),
                            deliver_config,
                            "cli-tester",
                        )?
                        .with_plugins(service.runtime().clone());
                        let report = d.test(&id).await?;
                        if json {
                            println!("{}", serde_json::to_string_pretty(&report)?);
                        } else {
                            print_test(&report);
                        }
                        return Ok(if report.delivered { ExitCode::SUCCESS } else { ExitCode::FAILURE });
                    }
                    EndpointAction::SetStates { id, states } => {
                        let mut e = crate::callbacks::endpoint(db, &id).await?.spec;
                        e.states = states
                            .map(|names| crate::callbacks::parse_states(&names))
                            .transpose()
                            .map_err(|e| anyhow::anyhow!("--{e}"))?;
                        crate::callbacks::save_endpoint(db, &e, now).await?;
                        match &e.states {
                            None => println!("endpoint {id} receives every state (CREATED on every click included)"),
                            Some(v) => println!(
                                "endpoint {id} receives {} only",
                                v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                            ),
                        }
                    }
                    EndpointAction::Rotate { id, drop_old } => {
                        let mut e = crate::callbacks::endpoint(db, &id).await?.spec;
                        if drop_old {
                            e.secrets.truncate(1);
                            crate::callbacks::save_endpoint(db, &e, now).await?;
                            println!("endpoint {id} signs with its newest secret only");
                        } else {
                            let secret = crate::callbacks::sign::Secret::generate();
                            e.secrets.insert(0, secret.clone());
                            crate::callbacks::save_endpoint(db, &e, now).await?;
                            println!("{}", secret.expose());
                            eprintln!(
                                "new signing secret of {id}, shown once; callbacks are signed with it and the {} older one(s) \
                                 until `cashbackd endpoint drop-old-secrets {id}`",
                                e.secrets.len() - 1
                            );
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
            with_service(&cli, |service, _| async move {
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
    }
}

enum EndpointAction {
    Add { generated: bool },
    List,
    Enable { id: String, replay: bool },
    Disable { id: String, reason: String },
    Test { id: String, json: bool },
    Rotate { id: String, drop_old: bool },
    SetStates { id: String, states: Option<Vec<String>> },
}

impl EndpointAction {
    fn of(c: &EndpointCommand) -> EndpointAction {
        match c {
            EndpointCommand::Add { generate_secret, .. } => EndpointAction::Add { generated: *generate_secret },
            EndpointCommand::List => EndpointAction::List,
            EndpointCommand::Enable { id, no_replay } => EndpointAction::Enable { id: id.clone(), replay: !no_replay },
            EndpointCommand::Disable { id, reason } => {
                EndpointAction::Disable { id: id.clone(), reason: reason.clone() }
            }
            EndpointCommand::Test { id, json } => EndpointAction::Test { id: id.clone(), json: *json },
            EndpointCommand::RotateSecret { id } => EndpointAction::Rotate { id: id.clone(), drop_old: false },
            EndpointCommand::DropOldSecrets { id } => EndpointAction::Rotate { id: id.clone(), drop_old: true },
            EndpointCommand::SetStates { id, states, every_state } => {
                EndpointAction::SetStates { id: id.clone(), states: Some(states.clone()).filter(|_| !every_state) }
            }
        }
    }
}

enum DeliveriesAction {
    List(crate::callbacks::deliver::DeliveryFilter),
    Show(i64),
    Replay(i64),
    ReplayRange { endpoint: Option<String>, from: i64, to: i64 },
    Alerts,
}

/// The endpoint `endpoint add` describes; errors name the option.
fn endpoint_spec(
    c: &EndpointCommand,
    defaults: &crate::config::CallbackSettings,
) -> anyhow::Result<crate::callbacks::EndpointSpec> {
    use crate::callbacks::{Backoff, EndpointField, EndpointSpec, Method, RetryPolicy, sign::Secret};
    let EndpointCommand::Add {
        id,
        partner,
        url,
        method,
        params,
        secret,
        generate_secret,
        signature_param,
        merchant,
        network,
        require_ref_id,
        states,
        events,
        max_attempts,
        backoff,
        retry_delay,
        max_delay,
        jitter,
        timeout_ms,
        disable_after,
    } = c
    else {
        bail!("not endpoint add");
    };
    let method = Method::parse(method).ok_or_else(|| anyhow::anyhow!("--method: {method:?} is not get or post"))?;
    let d = defaults.endpoint_defaults();
    let mut spec = EndpointSpec::with_defaults(id, partner, url, &d);
    spec.method = method;
    for p in params {
        let (k, v) = p.split_once('=').ok_or_else(|| anyhow::anyhow!("--param: {p:?} is not name=value"))?;
        spec.params.insert(k.to_string(), v.to_string());
    }
    if let Some(s) = secret {
        spec.secrets = vec![Secret::parse(s, method == Method::Post).map_err(|e| anyhow::anyhow!("--secret: {e}"))?];
    } else if *generate_secret {
        spec.secrets = vec![Secret::generate()];
    }
    spec.signature_param = signature_param.clone();
    spec.merchant_id = merchant.clone();
    spec.network_id = network.clone();
    spec.require_ref_id = *require_ref_id;
    if !states.is_empty() {
        spec.states = Some(crate::callbacks::parse_states(states).map_err(|e| anyhow::anyhow!("--{e}"))?);
    }
    spec.events = crate::callbacks::Events::parse(events.split(',')).map_err(|e| anyhow::anyhow!("--{e}"))?;
    spec.retry = RetryPolicy {
        max_attempts: max_attempts.unwrap_or(d.retry.max_attempts),
        backoff: match backoff.as_deref() {
            None => d.retry.backoff,
            Some("fixed") => Backoff::Fixed,
            Some("exponential") => Backoff::Exponential,
            Some(other) => bail!("--backoff: {other:?} is not fixed or exponential"),
        },
        delay_ms: retry_delay.map_or(d.retry.delay_ms, |s| s.saturating_mul(1000)),
        max_delay_ms: max_delay.map_or(d.retry.max_delay_ms, |s| s.saturating_mul(1000)),
        jitter_pct: jitter.unwrap_or(d.retry.jitter_pct),
    };
    spec.timeout_ms = timeout_ms.unwrap_or(d.timeout_ms);
    spec.disable_after = disable_after.unwrap_or(d.disable_after);
    spec.check().map_err(|e| {
        // Named as the operator gave it: the option, or the configuration key whose
        // default was taken when the option was not given.
        let given = match e.field {
            EndpointField::MaxAttempts => max_attempts.is_some(),
            EndpointField::RetryDelay => retry_delay.is_some(),
            EndpointField::MaxDelay => max_delay.is_some(),
            EndpointField::Jitter => jitter.is_some(),
            EndpointField::Timeout => timeout_ms.is_some(),
            EndpointField::DisableAfter => disable_after.is_some(),
            _ => true,
        };
        let name = match e.field.config_key() {
            Some(key) if !given => format!("{key} (the default of {})", e.field.flag()),
            _ => e.field.flag().to_string(),
        };
        anyhow::anyhow!("{name}: {}", e.why).context(format!("endpoint {id}"))
    })?;
    Ok(spec)
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

fn print_test(r: &crate::callbacks::deliver::TestReport) {
    println!("> {} {}", r.request.method, r.request.url);
    for (k, v) in &r.request.headers {
        println!("> {k}: {v}");
    }
    if let Some(body) = &r.request.body {
        println!(">\n{body}");
    }
    match (&r.response, &r.error) {
        (Some(resp), _) => {
            println!("< {} ({} ms)", resp.status, r.latency_ms);
            for (k, v) in &resp.headers {
                println!("< {k}: {v}");
            }
            println!("<\n{}{}", resp.body_excerpt, if resp.truncated { "\n< [truncated]" } else { "" });
        }
        (None, Some(e)) => println!("! no response after {} ms: {e}", r.latency_ms),
        (None, None) => {}
    }
    println!(
        "{}",
        if r.delivered {
            "delivered: the endpoint answered 200"
        } else {
            "NOT delivered: only a 200 counts (seed 003)"
        }
    );
}

fn callbacks_config(cli: &Cli) -> crate::callbacks::DeliveryConfig {
    cli.settings.callbacks.delivery(cli.callbacks_allow_private)
}

fn notify_config(cli: &Cli) -> crate::notify::NotifyConfig {
    crate::notify::NotifyConfig {
        smtp_url: cli.smtp_url.clone(),
        ca_file: cli.settings.smtp.ca_file.clone(),
        from: cli.smtp_from.clone(),
        templates_dir: cli.notify_templates.clone(),
        max_attempts: cli.settings.notify.max_attempts,
        retry_delay_ms: cli.settings.notify.retry_delay_secs.saturating_mul(1000),
        ..Default::default()
    }
}

/// The background workers of `serve` and `demo`: the callback delivery worker (a task
/// sending new callbacks as they come) and the notifier (run by the scheduler's job).
struct Workers {
    deliverer: crate::callbacks::Deliverer,
    notifier: crate::notify::Notifier,
}

impl Workers {
    fn start(
        service: &crate::conversions::Service,
        callbacks: crate::callbacks::DeliveryConfig,
        notify: crate::notify::NotifyConfig,
        owner: &str,
    ) -> anyhow::Result<Workers> {
        let deliverer =
            crate::callbacks::Deliverer::new(service.db().clone(), service.clock(), callbacks, owner.to_string())?
                .with_plugins(service.runtime().clone());
        let notifier = crate::notify::Notifier::new(service.db().clone(), service.clock(), notify)?;
        tokio::spawn(deliverer.clone().run_worker());
        Ok(Workers { deliverer, notifier })
    }
}

/// Runs `f` with a connected, migrated service on a fresh runtime.
fn with_service<F, Fut>(cli: &Cli, f: F) -> anyhow::Result<ExitCode>
where
    F: FnOnce(crate::conversions::Service, Arc<PluginRuntime>) -> Fut,
    Fut: Future<Output = anyhow::Result<ExitCode>>,
{
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let db = crate::db::Db::connect(&cli.database_url).await?;
        let runtime = Arc::new(PluginRuntime::new(cli.settings.runtime_config(&cli.plugin_store))?);
        let clock = Arc::new(crate::clock::SystemClock);
        let service = crate::conversions::Service::new(db, runtime.clone(), clock, Default::default());
        f(service, runtime).await
    })
}

fn load(runtime: &PluginRuntime, file: &Path, manifest: Option<&Path>) -> anyhow::Result<Arc<LoadedPlugin>> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let manifest =
        manifest.map(|m| std::fs::read_to_string(m).with_context(|| format!("reading {}", m.display()))).transpose()?;
    runtime.load_with_manifest(&bytes, manifest.as_deref()).with_context(|| format!("loading {}", file.display()))
}

fn print_inspect(plugin: &LoadedPlugin, json: bool) -> anyhow::Result<()> {
    let fixture_count =
        plugin.fixtures.as_deref().map(fixtures::parse).transpose().map_err(anyhow::Error::msg)?.map_or(0, |f| f.len());
    if json {
        let doc = serde_json::json!({
            "name": plugin.manifest.name,
            "version": plugin.manifest.version.to_string(),
            "kind": plugin.manifest.kind,
            "api_version": plugin.api_version,
            "digest": plugin.digest.to_string(),
            "manifest": plugin.manifest,
            "limits": plugin.limits,
            "imports": plugin.imports,
            "exports": plugin.exports,
            "fixtures": fixture_count,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    let m = &plugin.manifest;
    println!("plugin      {}", m.label());
    println!("world       {} (cashback:plugin@{})", m.kind, plugin.api_version);
    println!("digest      {}", plugin.digest);
    if !m.description.is_empty() {
        println!("about       {}", m.description);
    }
    println!("exports     {}", plugin.exports.join(", "));
    println!("imports     {}", plugin.imports.join(", "));
    let hosts = &m.capabilities.http_hosts;
    println!("http hosts  {}", if hosts.is_empty() { "none".to_string() } else { hosts.join(", ") });
    for (name, cred) in &m.credentials {
        let place = cred
            .header
            .as_ref()
            .map_or_else(|| format!("query `{}`", cred.query.clone().unwrap_or_default()), |h| format!("header `{h}`"));
        println!("credential  {name}: secret config `{}` into {place}", cred.config);
    }
    let l = &plugin.limits;
    println!(
        "limits      deadline {} ms, memory {} MiB, input {} B, output {} B, log {} B, http {} requests",
        l.deadline_ms, l.memory_mib, l.max_input_bytes, l.max_output_bytes, l.max_log_bytes, l.max_http_requests
    );
    for (name, f) in &m.config {
        let flags = [f.required.then_some("required"), f.secret.then_some("secret")]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "config      {name}: {:?}{}  {}",
            f.ty,
            if flags.is_empty() { String::new() } else { format!(" ({flags})") },
            f.description
        );
    }
    println!("fixtures    {fixture_count} embedded");
    Ok(())
}

fn test_plugin(runtime: &PluginRuntime, plugin: &LoadedPlugin, extra: Option<&Path>) -> anyhow::Result<ExitCode> {
    let mut cases = Vec::new();
    if let Some(embedded) = &plugin.fixtures {
        cases.extend(fixtures::parse(embedded).map_err(|e| anyhow::anyhow!("embedded fixtures: {e}"))?);
    }
    if let Some(path) = extra {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        cases.extend(fixtures::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?);
    }
    if cases.is_empty() {
        bail!(
            "{} has no fixtures: embed them (export_rule!(T, fixtures = \"fixtures.json\")) or pass --fixtures FILE",
            plugin.manifest.label()
        );
    }
    println!("testing {} against {} fixtures in the sandbox", plugin.manifest.label(), cases.len());
    let results = fixtures::run(runtime, plugin, &cases);
    let failed = results.iter().filter(|r| !r.passed).count();
    for r in &results {
        println!("  {} {}", if r.passed { "ok  " } else { "FAIL" }, r.name);
        if !r.passed {
            println!("       {}", r.detail.replace('\n', "\n       "));
        }
    }
    println!("{} passed, {} failed", results.len() - failed, failed);
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn fmt_time(ms: i64) -> String {
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
