//! Layered configuration (`config::load_from`, figment): built-in defaults, an arbitrary
//! config file (well-formed TOML with any keys and values, or any text), `CASHBACKD_*`
//! variables and command-line flags.
//!
//! Properties:
//! - never a panic;
//! - a refusal names a key: its `key` is a setting's path (its first part is a section of
//!   the configuration) or an unknown key as it was written; when no key applies (the
//!   file is not TOML), it names the file;
//!   a variable it says the value came from is one that was set;
//! - a password in `database.url` or `smtp.url` appears in no error message and not in
//!   the masked settings `config check` prints;
//! - settings that load, written back as a file, load again to the same settings.
//!
//! An input starting with `#` is a config file's text (the seed corpus: the built-in
//! defaults and variations of it).
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use cashbackd::config::{self, Layer, load_from};
use cashbackd_fuzz::tricky_string;
use figment::value::Value as FigValue;
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::LazyLock;

/// Marks a password: it must never be shown.
const PASSWORD: &str = "pw0SECRET0pw";

/// Every key of the built-in defaults, and the optional ones they leave commented out.
static KEYS: LazyLock<Vec<String>> = LazyLock::new(|| {
    fn walk(prefix: &str, table: &toml::Table, out: &mut Vec<String>) {
        for (k, v) in table {
            let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
            match v {
                toml::Value::Table(t) => walk(&key, t, out),
                _ => out.push(key),
            }
        }
    }
    let defaults: toml::Table = toml::from_str(config::DEFAULTS).expect("the defaults are TOML");
    let mut keys = Vec::new();
    walk("", &defaults, &mut keys);
    keys.extend(["smtp.url", "notify.templates", "plugin.overrides.p.deadline_ms"].map(String::from));
    keys
});

static SECTIONS: LazyLock<Vec<String>> = LazyLock::new(|| {
    let mut s: Vec<String> = KEYS.iter().map(|k| k.split('.').next().unwrap_or_default().to_string()).collect();
    s.dedup();
    s
});

/// This process's config file (several fuzzing processes may run at once).
static FILE: LazyLock<PathBuf> =
    LazyLock::new(|| std::env::temp_dir().join(format!("cashbackd-fuzz-config-{}.toml", std::process::id())));

#[derive(Debug, Clone)]
enum V {
    Str(String),
    Int(i64),
    Bool(bool),
    Float(f64),
    List(Vec<String>),
    Url { scheme: String, rest: String },
}

impl V {
    fn arbitrary(u: &mut Unstructured<'_>) -> arbitrary::Result<V> {
        Ok(match u.int_in_range(0..=9)? {
            0 => V::Int(i64::arbitrary(u)?),
            1 => V::Int(u.int_in_range(-2..=100_000)?),
            2 => V::Bool(u.arbitrary()?),
            3 => V::Float(f64::arbitrary(u)?),
            4 => V::List((0..u.int_in_range(0..=3)?).map(|_| tricky_string(u)).collect::<arbitrary::Result<_>>()?),
            5 | 6 => V::Url {
                scheme: u.choose(&["postgres", "sqlite", "smtp", "smtps", "mysql", "postgres:"])?.to_string(),
                rest: tricky_string(u)?,
            },
            _ => V::Str(if u.arbitrary()? {
                u.choose(&["", "x", "text", "json", "info", "0 */4 * * *", "127.0.0.1:0", "fixed", "a <b@c>"])?
                    .to_string()
            } else {
                tricky_string(u)?
            }),
        })
    }

    /// The URL forms hold the password when they are the value of a secret key; anywhere
    /// else a value is no secret, and an error may quote it.
    fn text(&self, secret: bool) -> Option<String> {
        match self {
            V::Str(s) => Some(s.clone()),
            V::Url { scheme, rest } => Some(format!("{scheme}://user:{}@{rest}", if secret { PASSWORD } else { "pw" })),
            _ => None,
        }
    }

    fn toml(&self, secret: bool) -> toml::Value {
        match self {
            V::Int(n) => toml::Value::Integer(*n),
            V::Bool(b) => toml::Value::Boolean(*b),
            V::Float(f) => toml::Value::Float(*f),
            V::List(l) => toml::Value::Array(l.iter().cloned().map(toml::Value::String).collect()),
            other => toml::Value::String(other.text(secret).unwrap_or_default()),
        }
    }

    fn figment(&self, secret: bool) -> FigValue {
        match self {
            V::Int(n) => FigValue::from(*n),
            V::Bool(b) => FigValue::from(*b),
            V::Float(f) => FigValue::from(*f),
            V::List(l) => FigValue::from(l.clone()),
            other => FigValue::from(other.text(secret).unwrap_or_default()),
        }
    }

    /// As an environment variable's text.
    fn env(&self, secret: bool) -> String {
        match self {
            V::Int(n) => n.to_string(),
            V::Bool(b) => b.to_string(),
            V::Float(f) => f.to_string(),
            V::List(l) => l.join(","),
            other => other.text(secret).unwrap_or_default(),
        }
    }
}

#[derive(Debug)]
enum File {
    None,
    Entries(Vec<(String, V)>),
    Text(String),
}

#[derive(Debug)]
struct Input {
    file: File,
    env: Vec<(String, V)>,
    flags: Vec<(String, V)>,
}

fn key(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
    Ok(match u.int_in_range(0..=9)? {
        0 => tricky_string(u)?,
        1 => format!("{}.{}", u.choose(&SECTIONS)?, tricky_string(u)?),
        _ => u.choose(&KEYS)?.clone(),
    })
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let file = match u.int_in_range(0..=4)? {
            0 => File::None,
            1 => File::Text(if u.arbitrary()? { String::arbitrary(u)? } else { tricky_string(u)? }),
            _ => File::Entries(
                (0..u.int_in_range(0..=5)?)
                    .map(|_| Ok((key(u)?, V::arbitrary(u)?)))
                    .collect::<arbitrary::Result<_>>()?,
            ),
        };
        let mut env = Vec::new();
        for _ in 0..u.int_in_range(0..=4)? {
            let name = match u.int_in_range(0..=5)? {
                0 => u
                    .choose(&[
                        "DATABASE_URL",
                        "CASHBACKD_LISTEN",
                        "CASHBACKD_LOG",
                        "CASHBACKD_CONFIG",
                        "CASHBACKD_NOPE",
                    ])?
                    .to_string(),
                1 => format!("CASHBACKD_{}", tricky_string(u)?),
                _ => config::env_name(u.choose(&KEYS)?),
            };
            env.push((name, V::arbitrary(u)?));
        }
        let flags =
            (0..u.int_in_range(0..=2)?).map(|_| Ok((key(u)?, V::arbitrary(u)?))).collect::<arbitrary::Result<_>>()?;
        Ok(Input { file, env, flags })
    }
}

/// `a.b.c = v` into nested tables; a key that would go through a value replaces it.
fn insert(table: &mut toml::Table, path: &[&str], value: toml::Value) {
    match path {
        [] => {}
        [last] => {
            table.insert(last.to_string(), value);
        }
        [first, rest @ ..] => {
            let entry = table.entry(first.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            if let toml::Value::Table(t) = entry {
                insert(t, rest, value);
            }
        }
    }
}

fn flags(input: &Input) -> Layer {
    Layer::flags(input.flags.iter().map(|(k, v)| (k.as_str(), v.figment(config::is_secret(k)), "--flag")).collect())
}

fuzz_target!(|data: &[u8]| {
    if let Some(text) = data.strip_prefix(b"#") {
        let file = File::Text(String::from_utf8_lossy(text).into_owned());
        check(Input { file, env: Vec::new(), flags: Vec::new() });
    } else if let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) {
        check(input);
    }
});

fn check(input: Input) {
    let file = match &input.file {
        File::None => None,
        File::Text(text) => {
            std::fs::write(&*FILE, text).expect("temporary file");
            Some(FILE.as_path())
        }
        File::Entries(entries) => {
            let mut table = toml::Table::new();
            for (k, v) in entries {
                insert(&mut table, &k.split('.').collect::<Vec<_>>(), v.toml(config::is_secret(k)));
            }
            std::fs::write(&*FILE, toml::to_string(&table).expect("a table serializes")).expect("temporary file");
            Some(FILE.as_path())
        }
    };
    let secret_var =
        |name: &str| name == "DATABASE_URL" || ["database.url", "smtp.url"].iter().any(|k| config::env_name(k) == name);
    let env: Vec<(String, String)> = input.env.iter().map(|(k, v)| (k.clone(), v.env(secret_var(k)))).collect();
    // A password the fuzzer wrote itself somewhere else may legitimately be quoted back.
    let planted_only = !format!("{input:?}").contains("SECRET0");

    match load_from(file, &env, flags(&input)) {
        Err(e) => {
            assert!(!e.message.is_empty(), "{e:?}");
            let first = e.key.split('.').next().unwrap_or_default();
            // When no key applies (the file is not TOML, or is missing), the file is named.
            let names_file = file.is_some_and(|f| {
                let f = f.display().to_string();
                e.key == f || (e.key == "configuration" && e.origin.as_deref() == Some(&format!("in {f}")))
            });
            // An unknown key is named as it was written.
            let written = match &input.file {
                File::Text(t) => t.clone(),
                File::Entries(entries) => entries.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join("\n"),
                File::None => String::new(),
            } + &input.flags.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join("\n");
            // (An empty key, `"" = 1`, is shown as `configuration`.)
            let unknown = e.message.starts_with("unknown key")
                && (e.key == "configuration" || e.key.rsplit('.').next().is_some_and(|last| written.contains(last)));
            assert!(SECTIONS.iter().any(|s| s == first) || names_file || unknown, "the error names no key: {e}");
            if let Some(var) = e.origin.as_deref().and_then(|o| o.strip_prefix("from "))
                && !var.starts_with("the ")
                && !var.starts_with("--")
            {
                assert!(env.iter().any(|(k, _)| k == var), "{e}: {var} was not set");
            }
            if planted_only {
                assert!(!e.to_string().contains(PASSWORD), "the error shows a password: {e}");
            }
        }
        Ok(loaded) => {
            let s = &loaded.settings;
            assert!(s.validate().is_ok());
            let masked = toml::to_string(&s.masked()).expect("settings serialize");
            if planted_only {
                assert!(!masked.contains(PASSWORD), "config check would show a password:\n{masked}");
            }
            // Written back as a file, the same settings.
            let text = toml::to_string(s).expect("settings serialize");
            std::fs::write(&*FILE, &text).expect("temporary file");
            let again = load_from(Some(FILE.as_path()), &[], Layer::flags(Vec::new()))
                .unwrap_or_else(|e| panic!("settings that loaded do not load again: {e}\n{text}"));
            assert_eq!(&again.settings, s, "written back:\n{text}");
        }
    }
}
