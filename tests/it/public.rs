//! Driving cashbackd the way its users do: the `cashbackd` binary's commands, a real
//! `cashbackd serve` process, and HTTP (the ingress and `/api/v1`). Tests built on this
//! start from an empty database (only its migrations) and call nothing inside the
//! crate: whatever they need must be reachable from the outside.

use crate::backends::TestDb;
use crate::common::*;
use serde_json::Value;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const CASHBACKD: &str = env!("CARGO_BIN_EXE_cashbackd");

/// A component built by scripts/build-plugins.sh.
pub fn component(crate_name: &str) -> PathBuf {
    plugin_path(WASIP2, crate_name)
}

/// One install: a database, and a directory for the processes' logs.
pub struct Install {
    pub url: String,
    pub dir: tempfile::TempDir,
    pub env: Vec<(String, String)>,
}

impl Install {
    /// A fresh install on `t` (nothing in it but the migrations, which `migrate` applies).
    pub fn new(t: &TestDb) -> Install {
        let install = Install { url: t.url().to_string(), dir: tempfile::tempdir().expect("tempdir"), env: Vec::new() };
        install.ok(&["migrate"]);
        install
    }

    /// Runs `cashbackd ARGS` against this install; (success, stdout, stderr).
    pub fn run(&self, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
        let mut c = Command::new(CASHBACKD);
        c.arg("--database-url").arg(&self.url).arg("--plugin-store").arg(shared_store()).args(args);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.stdin(Stdio::null()).output().expect("run cashbackd");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs a command that must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        self.ok_env(args, &[])
    }

    /// [`Install::ok`] with environment variables (secrets, say).
    pub fn ok_env(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let (ok, out, err) = self.run(args, env);
        assert!(ok, "cashbackd {}: failed\nstdout: {out}\nstderr: {err}", args.join(" "));
        out
    }

    /// Runs a command that must fail; its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args, &[]);
        assert!(!ok, "cashbackd {}: succeeded, should have failed\nstdout: {out}", args.join(" "));
        err
    }

    /// A new admin token.
    pub fn admin_token(&self) -> String {
        self.ok(&["token", "create", "ops", "--scope", "admin"]).trim().to_string()
    }

    /// Starts `cashbackd serve` on a free port with `env` on top of the install's.
    pub fn serve(&self, name: &str, env: &[(&str, &str)]) -> Serve {
        let log = self.dir.path().join(format!("{name}.log"));
        let stderr = std::fs::File::create(&log).expect("log file");
        let mut c = Command::new(CASHBACKD);
        c.arg("--database-url")
            .arg(&self.url)
            .arg("--plugin-store")
            .arg(shared_store())
            .args(["serve", "--listen", "127.0.0.1:0"])
            // One test client: the per-address ingress limits would throttle it.
            .env("CASHBACKD_INGRESS_RATE_LIMIT", "false")
            // The partner's test server is on 127.0.0.1.
            .env("CASHBACKD_CALLBACKS_ALLOW_PRIVATE", "true");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child =
            c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(stderr).spawn().expect("start cashbackd serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = std::io::BufReader::new(stdout).lines();
        let base = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(url) = line.strip_prefix("cashbackd listening on ") {
                        break url.trim().to_string();
                    }
                }
                _ => panic!(
                    "cashbackd serve exited before listening:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ),
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Serve { child, base, log }
    }
}

/// A running `cashbackd serve`.
pub struct Serve {
    child: Child,
    pub base: String,
    pub log: PathBuf,
}

impl Serve {
    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP client of the API and the ingress; never follows redirects (a click's 302 is
/// the answer).
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
    pub token: String,
}

impl Client {
    pub fn new(base: &str, token: &str) -> Client {
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
        Client { http, base: base.to_string(), token: token.to_string() }
    }

    /// `GET path` without a token (the ingress): status, Location, body.
    pub async fn public(&self, path: &str) -> (u16, Option<String>, String) {
        let r = self.http.get(format!("{}{path}", self.base)).send().await.expect("request");
        let status = r.status().as_u16();
        let location = r.headers().get("location").and_then(|v| v.to_str().ok()).map(str::to_string);
        (status, location, r.text().await.unwrap_or_default())
    }

    /// A click: the click id the redirect carries in `param`.
    pub async fn click(&self, path: &str, param: &str) -> String {
        let (status, location, body) = self.public(path).await;
        assert_eq!(status, 302, "{path}: {body}");
        let location = url::Url::parse(&location.expect("location")).expect("url");
        location.query_pairs().find(|(k, _)| k == param).map(|(_, v)| v.into_owned()).expect("click id")
    }

    /// An admin API call with the token: status and JSON body.
    pub async fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(m, url).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        let r = req.send().await.expect("request");
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// An API call that must answer `expected`.
    pub async fn expect(&self, expected: u16, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.api(method, path, body).await;
        assert_eq!(status, expected, "{method} {path}: {v}");
        v
    }
}

/// `balances` of a user as the API shows them: the amount of (currency, kind), 0 if none.
pub fn balance(user: &Value, currency: &str, kind: &str) -> i64 {
    user["balances"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|b| b["currency"] == currency && b["kind"] == kind)
        .and_then(|b| b["amount"].as_i64())
        .unwrap_or(0)
}

/// Polls `check` every 50 ms until it returns `Some`, for at most `secs` seconds.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A path as a string for command arguments.
pub fn arg(p: &Path) -> String {
    p.display().to_string()
}
