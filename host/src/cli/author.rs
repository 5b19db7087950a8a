//! `cashbackd plugin new|build|test`: the plugin author's workflow on a crate.
//!
//! `new` writes a crate that uses the SDK from the templates under
//! `host/templates/plugin-new/` (embedded in the binary), in one of two forms:
//!
//! - a **member** of the cashbackd workspace it lands in (`examples/NAME`,
//!   `plugins/NAME`): dependencies, lints and the `plugin` profile come from the
//!   workspace;
//! - a **crate of its own** anywhere else: its own `[workspace]` table, the `plugin`
//!   profile copied from cashbackd's, and `cashback-sdk` as a path dependency on the SDK
//!   of the cashbackd repository the binary was built from (the SDK is not on crates.io
//!   yet; `--sdk` names another). It starts from that repository's `Cargo.lock`, so it
//!   builds with the dependency versions cashbackd is tested with, without a registry
//!   lookup when they are in cargo's cache.
//!
//! `build` runs `scripts/build-plugins.sh --crate DIR` of that repository, so a plugin
//! author's crate gets exactly the toolchain choice of cashbackd's own plugins (installed
//! target, `rustup target add`, Debian's `rustc-web`); `test` runs the crate's native tests,
//! builds it and runs its fixtures inside the sandbox.

use super::plugin::{load, test_plugin};
use crate::plugin::PluginRuntime;
use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// The language of a new plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust, with cashbackd's SDK.
    Rust,
    /// TypeScript, built with componentize-js (rules only).
    Ts,
}

/// Which world `plugin new` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// A merchant's cashback rule (world `merchant-rules`).
    Rule,
    /// A network's import adapter (world `network-adapter`).
    Adapter,
}

impl Kind {
    fn feature(self) -> &'static str {
        match self {
            Kind::Rule => "rules",
            Kind::Adapter => "adapter",
        }
    }

    fn description(self) -> &'static str {
        match self {
            Kind::Rule => "Cashback at one rate on every line of an order.",
            Kind::Adapter => "S2S postbacks of one affiliate network as conversion events.",
        }
    }

    /// The files of the crate besides `Cargo.toml`: (path in the crate, template).
    fn files(self) -> [(&'static str, &'static str); 4] {
        match self {
            Kind::Rule => [
                ("cashback-plugin.toml", include_str!("../../templates/plugin-new/rule/cashback-plugin.toml.tmpl")),
                ("src/lib.rs", include_str!("../../templates/plugin-new/rule/lib.rs.tmpl")),
                ("fixtures.json", include_str!("../../templates/plugin-new/rule/fixtures.json.tmpl")),
                ("README.md", include_str!("../../templates/plugin-new/rule/README.md.tmpl")),
            ],
            Kind::Adapter => [
                ("cashback-plugin.toml", include_str!("../../templates/plugin-new/adapter/cashback-plugin.toml.tmpl")),
                ("src/lib.rs", include_str!("../../templates/plugin-new/adapter/lib.rs.tmpl")),
                ("fixtures.json", include_str!("../../templates/plugin-new/adapter/fixtures.json.tmpl")),
                ("README.md", include_str!("../../templates/plugin-new/adapter/README.md.tmpl")),
            ],
        }
    }
}

const CARGO_MEMBER: &str = include_str!("../../templates/plugin-new/Cargo.member.toml.tmpl");
const CARGO_STANDALONE: &str = include_str!("../../templates/plugin-new/Cargo.standalone.toml.tmpl");
const GITIGNORE: &str = include_str!("../../templates/plugin-new/gitignore.tmpl");
const RUSTFMT: &str = include_str!("../../templates/plugin-new/rustfmt.toml.tmpl");

/// The cashbackd repository this binary was built from: its SDK is the default SDK of a
/// crate of its own, its build script the last place `build` looks for one.
fn build_repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Checks a plugin name for `plugin new` (a clap value parser, so the error names the
/// argument). It becomes the package name, the manifest's `name` and, with `_` for `-`, the
/// library's name, so it must satisfy all three: 1-64 of `a-z`, `0-9` and `-`, starting with
/// a letter; not a Rust keyword; not a name cargo or the crate's own dependencies reserve.
pub fn plugin_name(name: &str) -> Result<String, String> {
    const KEYWORDS: &[&str] = &[
        "as", "async", "await", "break", "const", "continue", "crate", "dyn", "else", "enum", "extern", "false", "fn",
        "for", "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub", "ref", "return", "self",
        "static", "struct", "super", "trait", "true", "type", "unsafe", "use", "where", "while", "abstract", "become",
        "box", "do", "final", "gen", "macro", "override", "priv", "try", "typeof", "unsized", "virtual", "yield",
    ];
    let rules = "a plugin name is 1-64 of a-z, 0-9 and -, starting with a letter (e.g. new-customer-bonus)";
    if name.is_empty() {
        return Err(format!("empty; {rules}"));
    }
    if name.len() > 64 {
        return Err(format!("{} characters; {rules}", name.len()));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')) {
        let hint = match c {
            '_' => "use - instead of _ (the library's name gets the _)".to_string(),
            c if c.is_ascii_uppercase() => "use lower case".to_string(),
            c => format!("{c:?} is not allowed"),
        };
        return Err(format!("{hint}; {rules}"));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(format!("must start with a letter; {rules}"));
    }
    if name.ends_with('-') {
        return Err(format!("must not end with -; {rules}"));
    }
    if KEYWORDS.contains(&name) {
        return Err(format!("{name} is a Rust keyword, which cannot name a crate"));
    }
    // The standard library and libtest, cargo's own directories in a target dir, the
    // scaffold's dependencies (a package may not depend on its own name), and the file
    // names Windows reserves.
    let windows_device =
        |prefix: &str| name.strip_prefix(prefix).is_some_and(|n| matches!(n.as_bytes(), [b'1'..=b'9']));
    let reserved = matches!(
        name,
        "std" | "core" | "alloc" | "proc-macro" | "test" | "build" | "deps" | "examples" | "incremental"
    ) || matches!(name, "cashback-sdk" | "serde" | "wit-bindgen" | "con" | "prn" | "aux" | "nul")
        || windows_device("com")
        || windows_device("lpt");
    if reserved {
        return Err(format!("{name} is reserved (the standard library, cargo or a dependency of the crate uses it)"));
    }
    Ok(name.to_string())
}

/// The name of the plugin's type: `new-customer-bonus` → `NewCustomerBonus`, suffixed
/// when that would hide a name the template uses (`order` → `OrderPlugin`, not `Order`).
fn type_name(name: &str) -> String {
    // The prelude's names, the template's own (`Config`, `Deserialize`) and std's prelude.
    const TAKEN: &str = "Adapter Bps Config ConversionEvent ConversionState Deserialize Exclusion FileResult \
        ImportRequest LineCashback LineItem Money Order Page PluginError PostbackRequest \
        RejectedItem RejectedRow Rounding Rule RuleContext RuleDecision Timestamp Box Err None Ok \
        Option Result Some String Vec";
    let camel: String = name
        .split('-')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map(|c| c.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
        })
        .collect();
    if TAKEN.split_whitespace().any(|t| t == camel) { format!("{camel}Plugin") } else { camel }
}

/// How the new crate relates to the workspace around it.
#[derive(Debug, PartialEq)]
enum Form {
    /// A member of the cashbackd workspace rooted here.
    Member { root: PathBuf },
    /// A crate of its own, using the SDK at this path.
    Standalone { sdk: PathBuf },
}

/// The first `Cargo.toml` with a `[workspace]` table above `dir` (where cargo looks), and
/// that table's document.
fn enclosing_workspace(dir: &Path) -> anyhow::Result<Option<(PathBuf, toml::Table)>> {
    for ancestor in dir.ancestors().skip(1) {
        let manifest = ancestor.join("Cargo.toml");
        if !manifest.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&manifest).with_context(|| format!("reading {}", manifest.display()))?;
        let doc: toml::Table = text.parse().with_context(|| format!("{} is not valid TOML", manifest.display()))?;
        if doc.contains_key("workspace") {
            return Ok(Some((ancestor.to_path_buf(), doc)));
        }
    }
    Ok(None)
}

/// Whether the workspace `root` (its manifest `doc`) takes `dir` as a member: a `members`
/// pattern matches it and no `exclude` path contains it (cargo's rules, for the glob
/// patterns `*`, `?` and `**` workspaces use).
fn is_member(root: &Path, doc: &toml::Table, dir: &Path) -> bool {
    let Ok(relative) = dir.strip_prefix(root) else { return false };
    let parts: Vec<&str> = relative.iter().filter_map(|p| p.to_str()).collect();
    let list = |key: &str| -> Vec<String> {
        doc.get("workspace")
            .and_then(|w| w.get(key))
            .and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(|v| v.as_str()).map(|s| s.trim_end_matches('/').to_string()).collect())
            .unwrap_or_default()
    };
    let excluded = list("exclude").iter().any(|e| relative.starts_with(e));
    let matched = list("members").iter().any(|m| {
        let pattern: Vec<&str> = m.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
        glob_path(&pattern, &parts)
    });
    matched && !excluded
}

fn glob_path(pattern: &[&str], path: &[&str]) -> bool {
    match (pattern.split_first(), path.split_first()) {
        (None, None) => true,
        (Some((&"**", rest)), _) => glob_path(rest, path) || (!path.is_empty() && glob_path(pattern, &path[1..])),
        (Some((p, prest)), Some((c, crest))) => glob_component(p.as_bytes(), c.as_bytes()) && glob_path(prest, crest),
        _ => false,
    }
}

fn glob_component(pattern: &[u8], text: &[u8]) -> bool {
    match (pattern.split_first(), text.split_first()) {
        (None, None) => true,
        (Some((b'*', rest)), _) => {
            glob_component(rest, text) || (!text.is_empty() && glob_component(pattern, &text[1..]))
        }
        (Some((b'?', prest)), Some((_, trest))) => glob_component(prest, trest),
        (Some((p, prest)), Some((t, trest))) => p == t && glob_component(prest, trest),
        _ => false,
    }
}

/// Decides the form of a crate at `dir` (absolute, its parent existing).
fn form(dir: &Path, sdk: Option<&Path>) -> anyhow::Result<Form> {
    if let Some((root, doc)) = enclosing_workspace(dir)?
        && is_member(&root, &doc, dir)
    {
        let defines_sdk =
            doc.get("workspace").and_then(|w| w.get("dependencies")).and_then(|d| d.get("cashback-sdk")).is_some();
        if !defines_sdk {
            bail!(
                "{} would be a member of the workspace at {}, which has no cashback-sdk in \
                 [workspace.dependencies]: add it there, or choose a --dir outside that workspace",
                dir.display(),
                root.display()
            );
        }
        if sdk.is_some() {
            eprintln!("note: --sdk is ignored: a member of the workspace uses the workspace's cashback-sdk");
        }
        return Ok(Form::Member { root });
    }
    let given = sdk.is_some();
    let sdk = sdk.map_or_else(|| build_repo().join("sdk"), Path::to_path_buf);
    let is_sdk =
        std::fs::read_to_string(sdk.join("Cargo.toml")).ok().and_then(|t| t.parse::<toml::Table>().ok()).is_some_and(
            |doc| doc.get("package").and_then(|p| p.get("name")).and_then(|n| n.as_str()) == Some("cashback-sdk"),
        );
    if !is_sdk {
        bail!(
            "{} is not cashbackd's SDK (no Cargo.toml of package cashback-sdk){}: pass --sdk PATH, the sdk/ \
             folder of a cashbackd clone",
            sdk.display(),
            if given { "" } else { " — the repository this cashbackd was built from has moved" }
        );
    }
    let sdk = sdk.canonicalize().with_context(|| format!("resolving {}", sdk.display()))?;
    Ok(Form::Standalone { sdk })
}

/// Fills `{{key}}` placeholders.
fn render(template: &str, values: &[(&str, &str)]) -> String {
    values.iter().fold(template.to_string(), |text, (key, value)| text.replace(&format!("{{{{{key}}}}}"), value))
}

/// The files of a new crate: (path in the crate, contents).
fn scaffold(kind: Kind, name: &str, dir: &Path, form: &Form) -> Vec<(String, String)> {
    let lib = name.replace('-', "_");
    let ty = type_name(name);
    let (cargo, sdk_path, wasm) = match form {
        Form::Member { root } => {
            let up = dir.strip_prefix(root).map_or(0, |r| r.iter().count());
            (CARGO_MEMBER, String::new(), format!("{}target/plugins/wasm32-wasip2/{lib}.wasm", "../".repeat(up)))
        }
        Form::Standalone { sdk } => (
            CARGO_STANDALONE,
            // A TOML string, quoted and escaped whatever the path holds.
            toml::Value::String(sdk.display().to_string()).to_string(),
            format!("target/plugins/wasm32-wasip2/{lib}.wasm"),
        ),
    };
    let values = [
        ("name", name),
        ("type", ty.as_str()),
        ("feature", kind.feature()),
        ("description", kind.description()),
        ("sdk_path", sdk_path.as_str()),
        ("wasm", wasm.as_str()),
    ];
    let mut files = vec![("Cargo.toml".to_string(), render(cargo, &values))];
    files.extend(kind.files().iter().map(|(path, template)| (path.to_string(), render(template, &values))));
    files.push((".gitignore".to_string(), GITIGNORE.to_string()));
    if let Form::Standalone { sdk } = form {
        // In the workspace, the workspace's rustfmt.toml and Cargo.lock apply.
        files.push(("rustfmt.toml".to_string(), RUSTFMT.to_string()));
        if let Some(parent) = sdk.parent()
            && let Ok(lock) = std::fs::read_to_string(parent.join("Cargo.lock"))
        {
            files.push(("Cargo.lock".to_string(), lock));
        }
    }
    files
}

/// `cashbackd plugin new rule|adapter NAME [--dir DIR] [--sdk PATH]`.
pub fn new(kind: Kind, name: &str, dir: Option<&Path>, sdk: Option<&Path>) -> anyhow::Result<ExitCode> {
    let dir = dir.map_or_else(|| PathBuf::from(name), Path::to_path_buf);
    if dir.exists() {
        bail!("{} exists already: plugin new writes a new directory and never overwrites one", dir.display());
    }
    let leaf = dir.file_name().with_context(|| format!("--dir {}: not a directory name", dir.display()))?.to_owned();
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let dir = parent.canonicalize().with_context(|| format!("resolving {}", parent.display()))?.join(leaf);
    let form = form(&dir, sdk)?;
    let files = scaffold(kind, name, &dir, &form);
    write_new_dir(&dir, &files)?;
    let what = match kind {
        Kind::Rule => "rule",
        Kind::Adapter => "adapter",
    };
    println!("created {what} plugin {name} in {}", dir.display());
    match &form {
        Form::Member { root } => println!("  a member of the workspace at {}", root.display()),
        Form::Standalone { sdk } => println!("  a crate of its own, using the SDK at {}", sdk.display()),
    }
    println!("next:\n  cd {}\n  cashbackd plugin test", dir.display());
    Ok(ExitCode::SUCCESS)
}

/// Creates `dir` (which must not exist) with `files` (path in it, contents); on an error,
/// removes what it wrote, so a failed `plugin new` leaves nothing half-made behind.
pub(super) fn write_new_dir(dir: &Path, files: &[(String, String)]) -> anyhow::Result<()> {
    std::fs::create_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
    let written = files.iter().try_for_each(|(path, contents)| {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))
    });
    if written.is_err() {
        let _ = std::fs::remove_dir_all(dir);
    }
    written
}

/// A plugin crate, as cargo describes it.
#[derive(Debug)]
struct PluginCrate {
    dir: PathBuf,
    manifest: PathBuf,
    package: String,
    lib: String,
    targets: Vec<String>,
    workspace_root: PathBuf,
    target_dir: PathBuf,
}

impl PluginCrate {
    /// Asks `cargo metadata` about the crate at `path` (a directory or its Cargo.toml).
    fn at(path: &Path) -> anyhow::Result<PluginCrate> {
        let dir =
            if path.file_name().is_some_and(|f| f == "Cargo.toml") { path.parent().unwrap_or(path) } else { path };
        let dir = dir.canonicalize().with_context(|| format!("{}: no such directory", path.display()))?;
        let manifest = dir.join("Cargo.toml");
        if !manifest.is_file() {
            bail!("{} is neither a component (.wasm) nor a plugin crate (no Cargo.toml)", path.display());
        }
        let out = Command::new("cargo")
            .args(["metadata", "--no-deps", "--format-version", "1", "--manifest-path"])
            .arg(&manifest)
            .output()
            .context("running cargo metadata (is cargo on PATH?)")?;
        if !out.status.success() {
            bail!("cargo metadata failed for {}:\n{}", manifest.display(), String::from_utf8_lossy(&out.stderr).trim());
        }
        let meta: serde_json::Value = serde_json::from_slice(&out.stdout).context("reading cargo metadata's output")?;
        let package = meta["packages"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["manifest_path"].as_str().map(Path::new) == Some(manifest.as_path()))
            .with_context(|| format!("{} has no [package]: not a plugin crate", manifest.display()))?;
        let lib = package["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["crate_types"].as_array().is_some_and(|c| c.iter().any(|c| c == "cdylib")))
            .and_then(|t| t["name"].as_str())
            .with_context(|| {
                format!("{} is not a plugin crate: its [lib] crate-type does not list \"cdylib\"", manifest.display())
            })?;
        let targets: Vec<String> = package["metadata"]["cashback"]["targets"]
            .as_array()
            .map(|a| a.iter().filter_map(|t| t.as_str()).map(str::to_string).collect())
            .unwrap_or_else(|| vec!["wasm32-wasip2".to_string()]);
        let string = |v: &serde_json::Value, what: &str| {
            v.as_str().map(PathBuf::from).with_context(|| format!("cargo metadata gave no {what}"))
        };
        Ok(PluginCrate {
            manifest,
            package: package["name"].as_str().unwrap_or_default().to_string(),
            lib: lib.to_string(),
            targets,
            workspace_root: string(&meta["workspace_root"], "workspace_root")?,
            target_dir: string(&meta["target_directory"], "target_directory")?,
            dir,
        })
    }

    /// The cashbackd build script to build it with: the workspace's, else the one beside
    /// the SDK it depends on by path, else the one of the repository this binary was
    /// built from.
    fn build_script(&self) -> anyhow::Result<PathBuf> {
        let script = |repo: &Path| repo.join("scripts/build-plugins.sh");
        let sdk_repo =
            std::fs::read_to_string(&self.manifest).ok().and_then(|t| t.parse::<toml::Table>().ok()).and_then(|doc| {
                doc.get("dependencies")?.get("cashback-sdk")?.get("path")?.as_str().map(|p| self.dir.join(p).join(".."))
            });
        let candidates = [Some(self.workspace_root.clone()), sdk_repo, Some(build_repo())];
        candidates.into_iter().flatten().map(|repo| script(&repo)).find(|s| s.is_file()).with_context(|| {
            format!(
                "no cashbackd scripts/build-plugins.sh found for {} (looked in its workspace, beside its \
                 cashback-sdk and in {}); build it with `cargo build --target wasm32-wasip2 --profile plugin`",
                self.dir.display(),
                build_repo().display()
            )
        })
    }

    /// Builds the components; returns their paths, one per target.
    fn build(&self) -> anyhow::Result<Vec<PathBuf>> {
        let script = self.build_script()?;
        let status = Command::new("bash")
            .arg(&script)
            .arg("--crate")
            .arg(&self.dir)
            // The target dir cargo metadata named (CARGO_TARGET_DIR, configuration or the
            // default), said explicitly so the script copies the components there too.
            .env("CARGO_TARGET_DIR", &self.target_dir)
            .status()
            .with_context(|| format!("running {}", script.display()))?;
        if !status.success() {
            bail!("building {} failed (see above)", self.package);
        }
        self.targets
            .iter()
            .map(|t| {
                let wasm = self.target_dir.join("plugins").join(t).join(format!("{}.wasm", self.lib));
                if wasm.is_file() { Ok(wasm) } else { bail!("the build wrote no {}", wasm.display()) }
            })
            .collect()
    }
}

/// `cashbackd plugin build [PATH]`.
pub fn build(path: &Path) -> anyhow::Result<ExitCode> {
    let krate = PluginCrate::at(path)?;
    for wasm in krate.build()? {
        println!("component {}", wasm.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `cashbackd plugin test DIR`: the crate's native tests, then its components' fixtures
/// in the sandbox. `fixtures` is an extra fixture file; without it, `fixtures.json` of
/// the crate is used when the component embeds none.
pub fn test(
    runtime: &PluginRuntime,
    path: &Path,
    fixtures: Option<&Path>,
    manifest: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let krate = PluginCrate::at(path)?;
    println!("== {}: native tests (cargo test)", krate.package);
    let status = Command::new("cargo")
        .args(["test", "--manifest-path"])
        .arg(&krate.manifest)
        .args(["-p", &krate.package])
        .status()
        .context("running cargo test")?;
    if !status.success() {
        println!("native tests of {} failed: fix them before running the fixtures in the sandbox", krate.package);
        return Ok(ExitCode::FAILURE);
    }
    println!("== {}: building the component", krate.package);
    let components = krate.build()?;
    let mut code = ExitCode::SUCCESS;
    for wasm in components {
        println!("== {}: fixtures in the sandbox", wasm.display());
        let plugin = load(runtime, &wasm, manifest)?;
        let own = krate.dir.join("fixtures.json");
        let extra =
            fixtures.map(Path::to_path_buf).or_else(|| (plugin.fixtures.is_none() && own.is_file()).then_some(own));
        if test_plugin(runtime, &plugin, extra.as_deref())? != ExitCode::SUCCESS {
            code = ExitCode::FAILURE;
        }
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_names_pass_and_become_crate_and_type_names() {
        for name in ["new-customer-bonus", "rule2", "a", "weekend-bonus-v2"] {
            assert_eq!(plugin_name(name).as_deref(), Ok(name));
        }
        assert_eq!(type_name("new-customer-bonus"), "NewCustomerBonus");
        assert_eq!(type_name("rule2"), "Rule2");
        assert_eq!(type_name("order"), "OrderPlugin", "a type named Order would hide the SDK's");
        assert_eq!(type_name("config"), "ConfigPlugin");
    }

    #[test]
    fn bad_names_are_refused_with_the_reason() {
        let refused = |name: &str| plugin_name(name).expect_err(name);
        assert!(refused("").starts_with("empty"));
        assert!(refused("New-Bonus").starts_with("use lower case"));
        assert!(refused("new_bonus").starts_with("use - instead of _"));
        assert!(refused("new bonus").starts_with("' ' is not allowed"));
        assert!(refused("2x-bonus").starts_with("must start with a letter"));
        assert!(refused("-bonus").starts_with("must start with a letter"));
        assert!(refused("bonus-").starts_with("must not end with -"));
        assert!(refused(&"a".repeat(65)).starts_with("65 characters"));
        assert!(refused("café").contains("not allowed"));
        assert!(refused("match").contains("Rust keyword"));
        assert!(refused("test").contains("reserved"));
        assert!(refused("cashback-sdk").contains("reserved"));
        assert!(refused("nul").contains("reserved"));
        assert!(refused("com7").contains("reserved"));
        assert_eq!(plugin_name("com10").as_deref(), Ok("com10"));
        assert!(refused("x_y").contains("a-z, 0-9 and -"), "every refusal says what is allowed");
    }

    #[test]
    fn workspace_member_patterns_match_like_cargo() {
        let doc: toml::Table = r#"
            [workspace]
            members = ["host", "plugins/*", "deep/**", "ex?mples/*"]
            exclude = ["plugins/old"]
        "#
        .parse()
        .expect("toml");
        let root = Path::new("/repo");
        let member = |p: &str| is_member(root, &doc, &root.join(p));
        assert!(member("plugins/new-bonus"));
        assert!(member("host"));
        assert!(member("deep/a/b"));
        assert!(member("examples/x"));
        assert!(!member("plugins/old"), "excluded");
        assert!(!member("plugins/a/b"), "* is one component");
        assert!(!member("target/tmp/x"));
        assert!(!is_member(root, &doc, Path::new("/elsewhere/plugins/x")));
    }

    /// The scaffold's files in a fresh directory, as `plugin new` would write them.
    fn scaffold_in(workspace: Option<&str>, at: &str) -> (tempfile::TempDir, PathBuf, Form) {
        let tmp = tempfile::tempdir().expect("tempdir");
        if let Some(manifest) = workspace {
            std::fs::write(tmp.path().join("Cargo.toml"), manifest).expect("write");
        }
        let dir = tmp.path().canonicalize().expect("canonical").join(at);
        std::fs::create_dir_all(dir.parent().expect("parent")).expect("mkdir");
        let form = form(&dir, None).expect("form");
        (tmp, dir, form)
    }

    fn file<'a>(files: &'a [(String, String)], path: &str) -> &'a str {
        &files.iter().find(|(p, _)| p == path).unwrap_or_else(|| panic!("no {path}")).1
    }

    #[test]
    fn inside_the_workspace_the_crate_is_a_member_using_workspace_dependencies() {
        let workspace =
            "[workspace]\nmembers = [\"examples/*\"]\n[workspace.dependencies]\ncashback-sdk = { path = \"sdk\" }\n";
        let (_tmp, dir, form) = scaffold_in(Some(workspace), "examples/loyal-bonus");
        assert!(matches!(form, Form::Member { .. }), "{form:?}");
        let files = scaffold(Kind::Rule, "loyal-bonus", &dir, &form);
        let cargo: toml::Table = file(&files, "Cargo.toml").parse().expect("Cargo.toml is TOML");
        assert!(!cargo.contains_key("workspace"), "a member has no [workspace] of its own");
        assert_eq!(cargo["dependencies"]["cashback-sdk"]["workspace"].as_bool(), Some(true));
        assert_eq!(cargo["dependencies"]["cashback-sdk"]["features"][0].as_str(), Some("rules"));
        assert_eq!(cargo["lib"]["crate-type"].as_array().map(Vec::len), Some(2));
        assert!(file(&files, "src/lib.rs").contains("pub struct LoyalBonus;"));
        assert!(file(&files, "README.md").contains("upload ../../target/plugins/wasm32-wasip2/loyal_bonus.wasm"));
        assert!(files.iter().all(|(p, _)| p != "Cargo.lock" && p != "rustfmt.toml"), "the workspace's apply");
        for (path, contents) in &files {
            assert!(!contents.contains("{{"), "{path} has a placeholder left:\n{contents}");
        }
    }

    #[test]
    fn a_member_of_another_workspace_is_refused_with_what_to_do() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::write(tmp.path().join("Cargo.toml"), "[workspace]\nmembers = [\"crates/*\"]\n").expect("write");
        let dir = tmp.path().join("crates/bonus");
        let err = form(&dir, None).expect_err("no cashback-sdk in that workspace").to_string();
        assert!(err.contains("no cashback-sdk in [workspace.dependencies]"), "{err}");
    }

    #[test]
    fn elsewhere_the_crate_is_its_own_workspace_with_the_hosts_plugin_profile() {
        // Inside a workspace directory but not a member of it, like a crate in target/.
        let workspace = "[workspace]\nmembers = [\"plugins/*\"]\n";
        for kind in [Kind::Rule, Kind::Adapter] {
            let (_tmp, dir, form) = scaffold_in(Some(workspace), "target/tmp/my-plugin");
            let Form::Standalone { sdk } = &form else { panic!("{form:?}") };
            let files = scaffold(kind, "my-plugin", &dir, &form);
            let cargo: toml::Table = file(&files, "Cargo.toml").parse().expect("Cargo.toml is TOML");
            assert!(cargo.contains_key("workspace"), "its own workspace");
            let dep = &cargo["dependencies"]["cashback-sdk"];
            assert_eq!(dep["path"].as_str().map(PathBuf::from).as_ref(), Some(sdk));
            assert_eq!(dep["features"][0].as_str(), Some(kind.feature()));
            // The profiles must be the host's: `plugin build` uses `--profile plugin`, and a
            // target dir shared with the workspace reuses its builds only if they match.
            let host: toml::Table = include_str!("../../../Cargo.toml").parse().expect("workspace Cargo.toml");
            for profile in ["plugin", "dev", "test"] {
                assert_eq!(cargo["profile"][profile], host["profile"][profile], "[profile.{profile}]");
            }
            assert_eq!(file(&files, "rustfmt.toml"), include_str!("../../../rustfmt.toml"));
            assert!(file(&files, "Cargo.lock").contains("name = \"cashback-sdk\""), "seeded from the SDK's repository");
            for (path, contents) in &files {
                assert!(!contents.contains("{{"), "{path} has a placeholder left:\n{contents}");
            }
        }
    }

    #[test]
    fn the_sdk_must_be_an_sdk() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let err = form(&tmp.path().join("x"), Some(tmp.path())).expect_err("not an SDK").to_string();
        assert!(err.contains("is not cashbackd's SDK") && err.contains("--sdk PATH"), "{err}");
    }
}
