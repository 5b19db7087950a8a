//! `cashbackd plugin ...`: inspect and test a component, the author's workflow (`author`,
//! `author_ts`), the registry (`registry`) and a conversion's decision (`decision`).

use super::*;

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

/// Runs the command (`cli::run` dispatches here).
pub(super) fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Plugin { command: PluginCommand::Registry(ref command) } => registry::run(cli, command),
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
            decision::run(cli, conversion, json)
        }
        Command::Plugin { ref command } => {
            let runtime = PluginRuntime::new(cli.settings.runtime_config(&cli.plugin_store))?;
            match command {
                PluginCommand::Inspect { file, manifest, json } => {
                    let plugin = load(&runtime, file, manifest.as_deref())?;
                    print_inspect(&plugin, *json)?;
                    Ok(ExitCode::SUCCESS)
                }
                PluginCommand::Test { file, fixtures, manifest } if author_ts::is_project(file) => {
                    author_ts::test(&runtime, file, fixtures.as_deref(), manifest.as_deref())
                }
                PluginCommand::Test { file, fixtures, manifest } if file.is_dir() => {
                    author::test(&runtime, file, fixtures.as_deref(), manifest.as_deref())
                }
                PluginCommand::Test { file, fixtures, manifest } => {
                    let plugin = load(&runtime, file, manifest.as_deref())?;
                    test_plugin(&runtime, &plugin, fixtures.as_deref())
                }
                PluginCommand::Registry(_)
                | PluginCommand::New { .. }
                | PluginCommand::Build { .. }
                | PluginCommand::Decision { .. } => unreachable!("matched above"),
            }
        }
        _ => unreachable!("cli::run dispatches only this module's commands here"),
    }
}

pub(super) fn load(runtime: &PluginRuntime, file: &Path, manifest: Option<&Path>) -> anyhow::Result<Arc<LoadedPlugin>> {
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
    if let Some(p) = &m.parse_file {
        let delimiter = p.delimiter_config.as_ref().map_or("\",\"".to_string(), |f| format!("from config `{f}`"));
        let split = match p.split {
            crate::plugin::manifest::FileSplit::CsvRecords => "csv-records",
        };
        println!("files       in pieces ({split}), delimiter {delimiter}");
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

pub(super) fn test_plugin(
    runtime: &PluginRuntime,
    plugin: &LoadedPlugin,
    extra: Option<&Path>,
) -> anyhow::Result<ExitCode> {
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
