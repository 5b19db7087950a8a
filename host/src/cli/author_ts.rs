//! `cashbackd plugin new rule NAME --lang ts`, and `plugin build|test` on the project it
//! makes: a merchant rule in TypeScript, built with componentize-js (npm) against the same
//! WIT as a Rust rule, with the same manifest, fixtures, sandbox, registry and limits.
//!
//! The project is self-contained: the frozen WIT of the contract it targets is copied into
//! `wit/`, its types into `src/cashback.d.ts`, and its npm dependencies are pinned by the
//! `package-lock.json` of `examples/flat-rate-ts` (the first-party TypeScript rule, which
//! the tests build). `build.mjs` compiles the TypeScript, makes the component, and embeds
//! the manifest, the fixtures and the contract version as custom sections, exactly what the
//! Rust SDK's export macro embeds, so the host treats both alike.

use super::plugin::{load, test_plugin};
use crate::plugin::PluginRuntime;
use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const TEMPLATES: [(&str, &str); 8] = [
    ("package.json", include_str!("../../templates/plugin-new/rule-ts/package.json.tmpl")),
    ("tsconfig.json", include_str!("../../templates/plugin-new/rule-ts/tsconfig.json")),
    ("build.mjs", include_str!("../../templates/plugin-new/rule-ts/build.mjs")),
    ("src/rule.ts", include_str!("../../templates/plugin-new/rule-ts/rule.ts.tmpl")),
    ("src/cashback.d.ts", include_str!("../../templates/plugin-new/rule-ts/cashback.d.ts")),
    ("cashback-plugin.toml", include_str!("../../templates/plugin-new/rule-ts/cashback-plugin.toml.tmpl")),
    ("README.md", include_str!("../../templates/plugin-new/rule-ts/README.md.tmpl")),
    (".gitignore", include_str!("../../templates/plugin-new/rule-ts/gitignore.tmpl")),
];

/// The same cases as a new Rust rule: the rule does the same.
const FIXTURES: &str = include_str!("../../templates/plugin-new/rule/fixtures.json.tmpl");

/// The contract, frozen: the project builds against its own copy.
const WIT: [(&str, &str); 3] = [
    ("wit/types.wit", include_str!("../../../wit/since_v0.1.0/types.wit")),
    ("wit/host.wit", include_str!("../../../wit/since_v0.1.0/host.wit")),
    ("wit/worlds.wit", include_str!("../../../wit/since_v0.1.0/worlds.wit")),
];

/// The npm dependencies, pinned as the first-party TypeScript rule pins them (its name in
/// the two places npm writes it becomes the new project's).
const LOCK: &str = include_str!("../../../examples/flat-rate-ts/package-lock.json");
const LOCK_NAME: &str = "\"name\": \"flat-rate-ts\"";

const DESCRIPTION: &str = "Cashback at one rate on every line of an order.";

/// The files of a new project: (path in it, contents).
fn scaffold(name: &str) -> Vec<(String, String)> {
    let render =
        |t: &str| t.replace("{{name}}", name).replace("{{description}}", DESCRIPTION).replace("{{wit}}", "wit");
    let mut files: Vec<(String, String)> = TEMPLATES.iter().map(|(p, t)| (p.to_string(), render(t))).collect();
    files.push(("fixtures.json".into(), FIXTURES.to_string()));
    files.extend(WIT.iter().map(|(p, t)| (p.to_string(), t.to_string())));
    files.push(("package-lock.json".into(), LOCK.replace(LOCK_NAME, &format!("\"name\": \"{name}\""))));
    files
}

/// `cashbackd plugin new rule NAME --lang ts [--dir DIR]`.
pub fn new(name: &str, dir: Option<&Path>) -> anyhow::Result<ExitCode> {
    let dir = dir.map_or_else(|| PathBuf::from(name), Path::to_path_buf);
    if dir.exists() {
        bail!("{} exists already: plugin new writes a new directory and never overwrites one", dir.display());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    super::author::write_new_dir(&dir, &scaffold(name))?;
    println!("created rule plugin {name} (TypeScript) in {}", dir.display());
    println!("next:\n  cd {}\n  cashbackd plugin test", dir.display());
    Ok(ExitCode::SUCCESS)
}

/// Whether `dir` is a TypeScript plugin project: a package.json with a `cashback` key.
pub fn is_project(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("package.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|v| v.get("cashback").is_some())
}

fn npm(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("npm").args(args).current_dir(dir).status().with_context(
        || "running npm: TypeScript plugins need Node.js 18 or later and npm (Debian: apt-get install nodejs npm)",
    )?;
    if !status.success() {
        bail!("`npm {}` failed in {} (see above)", args.join(" "), dir.display());
    }
    Ok(())
}

/// Builds the project in `dir`: its npm dependencies when they are missing or older than
/// its lock file, then `npm run build`. Returns the component.
pub fn build(dir: &Path) -> anyhow::Result<PathBuf> {
    let dir = &dir.canonicalize().with_context(|| format!("{}: no such directory", dir.display()))?;
    let package: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("package.json"))
            .with_context(|| format!("reading {}/package.json", dir.display()))?,
    )
    .with_context(|| format!("{}/package.json is not JSON", dir.display()))?;
    let name = package["name"].as_str().with_context(|| format!("{}/package.json has no \"name\"", dir.display()))?;
    let modules = dir.join("node_modules");
    let lock = dir.join("package-lock.json");
    let stale =
        |a: &Path, b: &Path| match (a.metadata().and_then(|m| m.modified()), b.metadata().and_then(|m| m.modified())) {
            (Ok(a), Ok(b)) => a > b,
            _ => true,
        };
    if !modules.is_dir() || (lock.is_file() && stale(&lock, &modules)) {
        let install: &[&str] =
            if lock.is_file() { &["ci", "--no-audit", "--no-fund"] } else { &["install", "--no-audit", "--no-fund"] };
        npm(dir, install)?;
    }
    let wasm = dir.join("dist").join(format!("{name}.wasm"));
    let built = wasm.metadata().and_then(|m| m.modified()).ok();
    if built.is_none_or(|at| newest_input(dir).is_none_or(|input| input > at)) {
        npm(dir, &["run", "build"])?;
    } else {
        println!("{} is up to date", wasm.display());
    }
    if !wasm.is_file() {
        bail!("the build wrote no {}", wasm.display());
    }
    Ok(wasm)
}

/// When the newest of the project's own files (not `node_modules/`, `dist/` or dot
/// files) was changed; `None` if it cannot tell, which rebuilds.
fn newest_input(dir: &Path) -> Option<std::time::SystemTime> {
    let mut newest = std::time::SystemTime::UNIX_EPOCH;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).ok()? {
            let entry = entry.ok()?;
            let name = entry.file_name();
            let skip =
                name.to_str().is_none_or(|n| n.starts_with('.') || (d == dir && matches!(n, "node_modules" | "dist")));
            if skip {
                continue;
            }
            let meta = entry.metadata().ok()?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                newest = newest.max(meta.modified().ok()?);
            }
        }
    }
    Some(newest)
}

/// `cashbackd plugin test DIR` on a TypeScript project: builds it, then runs its fixtures
/// in the sandbox. (Its unit tests, if any, are the project's own `npm test`.)
pub fn test(
    runtime: &PluginRuntime,
    dir: &Path,
    fixtures: Option<&Path>,
    manifest: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    println!("== {}: building the component (TypeScript, componentize-js)", dir.display());
    let wasm = build(dir)?;
    println!("== {}: fixtures in the sandbox", wasm.display());
    let plugin = load(runtime, &wasm, manifest)?;
    test_plugin(runtime, &plugin, fixtures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_project_has_the_frozen_contract_its_name_and_a_lock_that_names_it() {
        let files = scaffold("loyal-bonus");
        let get = |p: &str| files.iter().find(|(path, _)| path == p).map(|(_, c)| c.as_str()).expect(p);
        assert!(get("package.json").contains("\"name\": \"loyal-bonus\""));
        assert!(get("package.json").contains("\"wit\": \"wit\""));
        assert!(get("cashback-plugin.toml").contains("name = \"loyal-bonus\""));
        assert!(get("wit/worlds.wit").contains("package cashback:plugin@0.1.0;"));
        let lock = get("package-lock.json");
        assert_eq!(lock.matches("\"name\": \"loyal-bonus\"").count(), 2, "both of npm's places");
        assert!(!lock.contains("flat-rate-ts"));
        assert!(files.iter().all(|(_, c)| !c.contains("{{")), "a placeholder left");
    }

    #[test]
    fn the_example_uses_the_same_build_and_types_as_a_new_project() {
        // examples/flat-rate-ts is built and tested by CI: it proves the template's build
        // script and types only while it has the same ones.
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for (example, template) in [
            ("examples/flat-rate-ts/build.mjs", "build.mjs"),
            ("examples/flat-rate-ts/src/cashback.d.ts", "src/cashback.d.ts"),
        ] {
            let ours = std::fs::read_to_string(repo.join(example)).expect(example);
            let theirs = TEMPLATES.iter().find(|(p, _)| *p == template).expect(template).1;
            assert_eq!(ours, theirs, "{example} differs from the template's {template}");
        }
        let example: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(repo.join("examples/flat-rate-ts/package.json")).expect("json"),
        )
        .expect("json");
        let template: serde_json::Value =
            serde_json::from_str(&scaffold("x").into_iter().find(|(p, _)| p == "package.json").expect("package").1)
                .expect("json");
        assert_eq!(example["devDependencies"], template["devDependencies"], "the lock file pins the example's");
    }
}
