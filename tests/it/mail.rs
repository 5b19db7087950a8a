//! The users' digests through a real SMTP server: aiosmtpd (PyPI, `tests/smtp/server.py`)
//! with AUTH, STARTTLS and implicit TLS, under a certificate of a CA of its own, reached
//! by a real `cashbackd serve` configured the way production is (`smtp.url` in each of its
//! forms, `smtp.ca_file`). `smtp.rs` is the small in-process server the fault tests use
//! to refuse or vanish on cue; this one checks what that one cannot: that the password is
//! sent only after TLS, that the certificate is checked, that a failed login loses no mail.
//!
//! On SQLite only: what is tested is the SMTP client; the digests' storage side runs on
//! both backends in `notify.rs`.

use crate::accounts::{configure, postback};
use crate::backends;
use crate::common;
use crate::public::*;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

const USER: &str = "digest-sender";

/// The `smtp.url` of a form, given the server's port.
type UrlOf = fn(u16) -> String;
const PASSWORD: &str = "s3cret-Pa55word";

/// One aiosmtpd server, stopped on drop.
struct RealSmtp {
    child: Child,
    port: u16,
    out: PathBuf,
    ca: PathBuf,
    _dir: tempfile::TempDir,
}

impl RealSmtp {
    /// A server in `mode` (`starttls`, `implicit`, `none`) requiring AUTH as
    /// `USER`/`PASSWORD`; `None` (after a skip, which fails in CI) when Python's aiosmtpd
    /// or openssl is missing. `scripts/test.sh` installs aiosmtpd.
    fn start(mode: &str) -> Option<RealSmtp> {
        let has_aiosmtpd =
            Command::new("python3").args(["-c", "import aiosmtpd"]).status().map(|s| s.success()).unwrap_or(false);
        if !has_aiosmtpd {
            common::skip("the real SMTP server", "python3 -m pip install aiosmtpd");
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let ca = dir.path().join("ca.pem");
        // A CA of its own, and the server's certificate for `localhost` signed by it: the
        // setup of a company relay, and exactly what `smtp.ca_file` is for.
        let ext = dir.path().join("leaf.ext");
        std::fs::write(
            &ext,
            "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth\n",
        )
        .expect("extensions");
        let openssl = |args: &[&str]| {
            Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        };
        let days = ["-days", "2"];
        let made = openssl(
            &[
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                    "-subj",
                    "/CN=cashbackd test CA",
                ],
                &days[..],
            ]
            .concat(),
        ) && openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=localhost",
        ]) && openssl(
            &[
                &[
                    "x509",
                    "-req",
                    "-in",
                    "leaf.csr",
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    "cert.pem",
                    "-extfile",
                    "leaf.ext",
                ],
                &days[..],
            ]
            .concat(),
        );
        if !made {
            common::skip("the real SMTP server", "openssl could not make the certificates (apt-get install openssl)");
            return None;
        }
        let out = dir.path().join("mails.jsonl");
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/smtp/server.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .args(["--tls", mode, "--user", USER, "--password", PASSWORD, "--cert"])
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .arg("--out")
            .arg(&out)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 tests/smtp/server.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("the server's first line");
        let port = line.trim().strip_prefix("PORT ").and_then(|p| p.parse().ok());
        let Some(port) = port else {
            let _ = child.kill();
            panic!("tests/smtp/server.py did not start: {line:?}");
        };
        Some(RealSmtp { child, port, out, ca, _dir: dir })
    }

    /// What the server accepted, as it recorded it.
    fn mails(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect()
    }

    fn ca(&self) -> String {
        arg(&self.ca)
    }
}

impl Drop for RealSmtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The body of a mail, quoted-printable soft breaks undone.
fn body(mail: &Value) -> String {
    mail["data"].as_str().unwrap_or("").replace("=\r\n", "").replace("\r\n", "\n")
}

/// A user `name` with an e-mail address, a click, and a PENDING postback of `sale` EUR.
async fn pending_sale(c: &Client, name: &str, tx: &str, sale: &str) {
    c.expect(201, "PUT", &format!("/api/v1/users/{name}"), Some(json!({"email": format!("{name}@example.com")}))).await;
    let click = c.click(&format!("/c/sale?user={name}"), "ref").await;
    let (status, _, text) = c.public(&postback(&click, tx, "pending", sale)).await;
    assert_eq!(status, 200, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digests_reach_a_real_smtp_server_in_each_production_url_form() {
    let t = backends::sqlite().await;
    let i = Install::new(&t);
    let token = i.admin_token();
    configure(&i, ("flat_rate", "flat-rate@0.1.0"), r#"{"rate_bps": 100}"#);
    // (server mode, URL, whether the session must be encrypted)
    let forms: [(&str, UrlOf, bool); 3] = [
        ("starttls", |p| format!("smtp://{USER}:{PASSWORD}@localhost:{p}?tls=required"), true),
        ("implicit", |p| format!("smtps://{USER}:{PASSWORD}@localhost:{p}"), true),
        ("none", |p| format!("smtp://{USER}:{PASSWORD}@localhost:{p}"), false),
    ];
    for (n, (mode, url, encrypted)) in forms.into_iter().enumerate() {
        let Some(smtp) = RealSmtp::start(mode) else { return };
        let url = url(smtp.port);
        let ca = smtp.ca();
        let mut env = vec![("CASHBACKD_SMTP_URL", url.as_str()), ("CASHBACKD_SMTP_FROM", "cashback@site.test")];
        if encrypted {
            env.push(("CASHBACKD_SMTP_CA_FILE", ca.as_str()));
        }
        let s = i.serve(mode, &env);
        let c = Client::new(&s.base, &token);
        // 1 % of 12.34 is 12.34 cents, rounded down by the rule: 0.12 EUR.
        pending_sale(&c, &format!("user{n}"), &format!("D-{mode}"), "12.34").await;
        let run = c.expect(200, "POST", "/api/v1/jobs/notify/run", None).await;
        assert_eq!(run["outcome"], "ok", "{mode}: {run}; log: {}", s.log());
        let mails = smtp.mails();
        assert_eq!(mails.len(), 1, "{mode}: {mails:?}; the run: {run}; log: {}", s.log());
        let mail = &mails[0];
        assert_eq!(mail["to"], json!([format!("user{n}@example.com")]), "{mode}");
        assert_eq!(mail["from"], "cashback@site.test", "{mode}");
        assert_eq!(mail["login"], USER, "{mode}: the server saw this login");
        assert_eq!(mail["tls"], encrypted, "{mode}: {mail}");
        assert!(body(mail).contains("Cashback 0.12 EUR"), "{mode}: {}", body(mail));
        assert!(!s.log().contains(PASSWORD), "{mode}: the SMTP password is in the log");
        drop(s);
    }
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_or_a_wrong_password_sends_nothing_loses_nothing_and_leaks_nothing() {
    let t = backends::sqlite().await;
    let i = Install::new(&t);
    let token = i.admin_token();
    configure(&i, ("flat_rate", "flat-rate@0.1.0"), r#"{"rate_bps": 100}"#);
    let Some(smtp) = RealSmtp::start("starttls") else { return };
    let good = format!("smtp://{USER}:{PASSWORD}@localhost:{}?tls=required", smtp.port);
    let wrong = format!("smtp://{USER}:not-{PASSWORD}@localhost:{}?tls=required", smtp.port);
    let ca = smtp.ca();
    // Failed e-mails are retried at once, so that the last run shows nothing was lost.
    let retry_now = ("CASHBACKD_NOTIFY_RETRY_DELAY_SECS", "0");

    // The server's certificate is not from a web root, and no CA file is configured.
    let s = i.serve("untrusted", &[("CASHBACKD_SMTP_URL", &good), retry_now]);
    let c = Client::new(&s.base, &token);
    pending_sale(&c, "ann", "D-1", "10.00").await;
    let run = c.expect(200, "POST", "/api/v1/jobs/notify/run", None).await;
    assert_eq!(smtp.mails().len(), 0, "sent over an unverified TLS session: {run}");
    assert_eq!(run["counts"]["retrying"], 1, "{run}");
    let log = s.log();
    assert!(log.contains("notification e-mail not sent") && log.contains("UnknownIssuer"), "the log says why: {log}");
    assert!(!run.to_string().contains(PASSWORD) && !log.contains(PASSWORD), "the password leaked: {log}");
    drop(s);

    // The CA is trusted now, but the password is wrong.
    let s = i.serve("wrong-password", &[("CASHBACKD_SMTP_URL", &wrong), ("CASHBACKD_SMTP_CA_FILE", &ca), retry_now]);
    let c = Client::new(&s.base, &token);
    let run = c.expect(200, "POST", "/api/v1/jobs/notify/run", None).await;
    assert_eq!(smtp.mails().len(), 0, "{run}");
    assert_eq!(run["counts"]["retrying"], 1, "{run}");
    let log = s.log();
    assert!(log.contains("notification e-mail not sent") && log.contains("535"), "the log says why: {log}");
    assert!(!run.to_string().contains(PASSWORD) && !log.contains(PASSWORD), "the password leaked: {log}");
    drop(s);

    // Set right, the e-mail that waited is sent, once.
    let s = i.serve("right", &[("CASHBACKD_SMTP_URL", &good), ("CASHBACKD_SMTP_CA_FILE", &ca), retry_now]);
    let c = Client::new(&s.base, &token);
    let run = c.expect(200, "POST", "/api/v1/jobs/notify/run", None).await;
    let mails = smtp.mails();
    assert_eq!(mails.len(), 1, "{run}; log: {}", s.log());
    assert_eq!(mails[0]["to"], json!(["ann@example.com"]));
    assert_eq!(mails[0]["tls"], true);
    assert!(body(&mails[0]).contains("Cashback 0.10 EUR"), "{}", body(&mails[0]));
    drop(s);
    t.cleanup().await;
}

#[tokio::test]
async fn a_ca_file_is_checked_and_refused_with_a_url_that_uses_no_tls() {
    let t = backends::sqlite().await;
    let i = Install::new(&t);
    let dir = tempfile::tempdir().expect("tempdir");
    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "not a certificate").expect("write");
    let check = |url: &str, ca: &str| {
        let (ok, out, err) =
            i.run(&["config", "check"], &[("CASHBACKD_SMTP_URL", url), ("CASHBACKD_SMTP_CA_FILE", ca)]);
        assert!(!ok, "accepted: {out}");
        err
    };
    let err = check("smtps://u:p@mail.example", &arg(&not_pem));
    assert!(err.contains("smtp.ca_file") && err.contains("no BEGIN CERTIFICATE"), "{err}");
    let missing = dir.path().join("missing.pem");
    let err = check("smtps://u:p@mail.example", &arg(&missing));
    assert!(err.contains("smtp.ca_file") && err.contains("cannot read"), "{err}");
    let Some(smtp) = RealSmtp::start("none") else { return };
    let err = check("smtp://u:p@mail.example:25", &smtp.ca());
    assert!(err.contains("smtp.ca_file") && err.contains("uses no TLS"), "{err}");
    assert!(!err.contains("u:p@"), "the URL's password is not quoted: {err}");
    t.cleanup().await;
}
