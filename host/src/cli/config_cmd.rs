//! `cashbackd config default|check`, and the settings of every other command: the layers
//! of [`crate::config`] with the flags given on the command line on top.

use super::{Cli, Command};
use crate::config::{self, ConfigError, Layer, Loaded, LogFormat, Settings};
use clap::ArgMatches;
use clap::parser::ValueSource;
use figment::value::Value;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

/// `cashbackd config ...`
#[derive(Debug, clap::Subcommand)]
pub enum ConfigCommand {
    /// Print the default configuration file, every setting commented.
    Default,
    /// Check a configuration file, with the environment and the flags over it, and print
    /// the settings in effect (secrets masked), each with where it came from.
    Check {
        /// The file (default: --config or CASHBACKD_CONFIG, else none: defaults,
        /// environment and flags only).
        file: Option<PathBuf>,
    },
}

/// The global flags given on the command line (not their defaults), as the top layer.
/// Without the matches only the flags that have no default can be told apart.
pub fn flags(cli: &Cli, matches: Option<&ArgMatches>) -> Layer {
    let given = |id: &str| matches.is_some_and(|m| m.value_source(id) == Some(ValueSource::CommandLine));
    let mut entries: Vec<(&str, Value, &str)> = Vec::new();
    if given("database_url") {
        entries.push(("database.url", Value::from(cli.database_url.clone()), "--database-url"));
    }
    if given("plugin_store") {
        entries.push(("plugin.store", Value::from(cli.plugin_store.display().to_string()), "--plugin-store"));
    }
    if given("callbacks_allow_private") {
        entries.push((
            "callbacks.allow_private",
            Value::from(cli.callbacks_allow_private),
            "--callbacks-allow-private",
        ));
    }
    if let Some(url) = cli.smtp_url.as_ref().filter(|_| given("smtp_url")) {
        entries.push(("smtp.url", Value::from(url.clone()), "--smtp-url"));
    }
    if given("smtp_from") {
        entries.push(("smtp.from", Value::from(cli.smtp_from.clone()), "--smtp-from"));
    }
    if let Some(dir) = cli.notify_templates.as_ref().filter(|_| given("notify_templates")) {
        entries.push(("notify.templates", Value::from(dir.display().to_string()), "--notify-templates"));
    }
    if let Some(format) = cli.log_format {
        let word = match format {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        };
        entries.push(("log.format", Value::from(word.to_string()), "--log-format"));
    }
    if let Command::Serve { listen: Some(addr) } = &cli.command {
        entries.push(("http.listen", Value::from(addr.to_string()), "--listen"));
    }
    Layer::flags(entries)
}

/// Loads the settings for `cli` and puts them in it: the global options' fields hold the
/// values in effect, `cli.settings` every setting.
pub fn resolve(cli: &mut Cli, matches: &ArgMatches) -> Result<Loaded, ConfigError> {
    let loaded = config::load(cli.config.as_deref(), flags(cli, Some(matches)))?;
    apply(cli, &loaded.settings);
    Ok(loaded)
}

fn apply(cli: &mut Cli, s: &Settings) {
    cli.database_url = s.database.url.clone();
    cli.plugin_store = s.plugin.store.clone();
    cli.callbacks_allow_private = s.callbacks.allow_private;
    cli.smtp_url = s.smtp.url.clone();
    cli.smtp_from = s.smtp.from.clone();
    cli.notify_templates = s.notify.templates.clone();
    cli.log_format = Some(s.log.format);
    cli.settings = s.clone();
}

/// Runs `config default` or `config check`.
pub fn run(cli: &Cli, matches: Option<&ArgMatches>, command: &ConfigCommand) -> anyhow::Result<ExitCode> {
    match command {
        ConfigCommand::Default => print!("{}", config::DEFAULTS),
        ConfigCommand::Check { file } => {
            let file = file.as_deref().or(cli.config.as_deref());
            let loaded = config::load(file, flags(cli, matches))?;
            print!("{}", effective(&loaded, file.map(|f| f.display().to_string())));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The settings in effect as TOML, secrets masked, each value not a default followed by
/// where it came from.
fn effective(loaded: &Loaded, file: Option<String>) -> String {
    let mut out = format!(
        "# configuration OK: defaults < {} < environment < flags; secrets masked\n",
        file.unwrap_or_else(|| "no config file".into())
    );
    for name in &loaded.unknown_env {
        let _ = writeln!(out, "# note: {name} is not a setting (ignored)");
    }
    match toml::Value::try_from(loaded.settings.masked()) {
        Ok(toml::Value::Table(table)) => table_lines("", &table, loaded, &mut out),
        Ok(_) | Err(_) => out.push_str("# (cannot print the settings)\n"),
    }
    out
}

fn table_lines(prefix: &str, table: &toml::Table, loaded: &Loaded, out: &mut String) {
    let leaves: Vec<_> = table.iter().filter(|(_, v)| !v.is_table()).collect();
    if !prefix.is_empty() && (!leaves.is_empty() || table.is_empty()) {
        let _ = writeln!(out, "\n[{prefix}]");
    }
    for (name, value) in leaves {
        let key = join(prefix, name);
        let origin = loaded.origin(&key);
        let secret = if config::is_secret(&key) { " (masked)" } else { "" };
        if origin == "default" {
            let _ = writeln!(out, "{} = {value}", bare(name));
        } else {
            let _ = writeln!(out, "{} = {value}  # {origin}{secret}", bare(name));
        }
    }
    for (name, value) in table.iter().filter(|(_, v)| v.is_table()) {
        if let toml::Value::Table(inner) = value {
            table_lines(&join(prefix, &bare(name)), inner, loaded, out);
        }
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() { name.to_string() } else { format!("{prefix}.{name}") }
}

/// A key as TOML writes it: bare if it can be, quoted otherwise (plugin names).
fn bare(name: &str) -> String {
    if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        name.to_string()
    } else {
        format!("{name:?}")
    }
}
