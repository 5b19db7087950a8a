//! Dependency faults (issue 8, point 2): what callers see and what is guaranteed when a
//! dependency fails. PostgreSQL restarted under load (a private cluster, `-m fast` and
//! `-m immediate`), SQLite's disk full (a tiny tmpfs), the SMTP server refusing
//! connections or never answering, partner endpoints down or slow, a network's API
//! hanging or answering garbage, the database refusing the writes of an imported page.
//! Each fault is injected into real components: `cashbackd serve` processes, a real
//! PostgreSQL, a real filesystem, lettre against a TCP server, reqwest against a local
//! partner, the json-api plugin in the sandbox.
//!
//! The figures each test prints (`faults [...]: ...`) are the ones `docs/RELIABILITY.md`
//! quotes.

use crate::backends;
use crate::common::*;
use crate::ledger::{World, world};
use cashbackd::db::Db;
use serde_json::json;
use sqlx::Row;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The token the test network's postbacks carry.
const TOKEN: &str = "faults-token";

/// Fails in CI, skips with the reason elsewhere, recorded for the end of the run.
fn skip_or_fail(what: &str, why: &str) {
    crate::common::skip(what, why);
}

/// Polls `condition` every 20 ms until it holds or `limit` passes.
async fn wait_for(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- a `cashbackd serve` process --------------------------------------------------------

/// `cashbackd serve` on a free port, its stderr in a file; killed when dropped.
struct Server {
    child: Child,
    base: String,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(url: &str, dir: &Path, name: &str) -> Server {
        use std::io::BufRead;
        let log = dir.join(format!("{name}.stderr"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_cashbackd"))
            .args(["--database-url", url, "--plugin-store"])
            .arg(shared_store())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("CASHBACKD_LOG", "warn")
            // The clients here send far more postbacks from one address than a network
            // does: the ingress rate limit would answer 429s, which are not this test's.
            .env("CASHBACKD_INGRESS_RATE_LIMIT", "false")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("server log"))
            .spawn()
            .expect("start cashbackd serve");
        let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        let base = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(url) = line.strip_prefix("cashbackd listening on ") {
                        break url.trim().to_string();
                    }
                }
                _ => panic!(
                    "cashbackd {name} exited before listening:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ),
            }
        };
        // Keep draining stdout so the process never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server { child, base, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn postback_url(&self, tx: &str) -> String {
        format!("{}/postback/net?tid={tx}&clickref=c1&sale=100.00&comm=8.00&status=pending&token={TOKEN}", self.base)
    }
}

/// The world of the ledger tests, plus network `net` (generic-s2s, token auth) whose
/// postbacks credit u1 10.00 for a 100.00 order, and a disabled callback endpoint, so every
/// change also writes a delivery row that waits in the outbox (checked: nothing half-written).
async fn postback_world(db: Db) -> World {
    let w = world(db).await;
    let adapter =
        cashbackd::registry::upload(&w.service, &plugin_bytes(WASIP2, "generic_s2s")).await.expect("adapter").plugin;
    let network = cashbackd::ingest::Network {
        id: "net".into(),
        name: "Net".into(),
        adapter_digest: Some(adapter.digest.to_string()),
        adapter_config: json!({"params": {"transaction_id": "tid", "click_id": "clickref", "amount": "sale",
                                          "commission": "comm", "state": "status"},
                               "states": {"pending": "PENDING"}, "default_currency": "EUR"}),
        auth: cashbackd::ingest::InboundAuth::Token(TOKEN.into()),
    };
    cashbackd::ingest::upsert_network(w.service.db(), &network, w.service.now()).await.expect("network");
    let db = w.service.db();
    let now = w.service.now();
    cashbackd::callbacks::upsert_partner(db, "p1", "Partner", now).await.expect("partner");
    let spec = cashbackd::callbacks::EndpointSpec::new("held", "p1", "https://partner.example/pb?tx={transaction_id}");
    cashbackd::callbacks::save_endpoint(db, &spec, now).await.expect("endpoint");
    cashbackd::callbacks::disable(db, "held", "faults test: deliveries wait in the outbox", now)
        .await
        .expect("disable");
    w
}

/// Checks, in one snapshot, that every one of `events` (transaction ids of `net`) is stored
/// exactly once and whole: its conversion, one journal entry, one balanced posting of four
/// entries, one outbox change and its delivery row; and that nothing else is there. Returns
/// the number of conversions checked.
async fn verify_postbacks(db: &Db, events: &HashSet<String>, label: &str) -> usize {
    let mut snapshot = db.pool.begin().await.expect("begin");
    if db.backend == cashbackd::db::Backend::Postgres {
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ").execute(&mut *snapshot).await.expect("snapshot");
    }
    let mut problems = Vec::new();
    let mut tally: BTreeMap<String, [i64; 5]> = BTreeMap::new();
    let queries = [
        "SELECT transaction_id, COUNT(*) FROM conversions WHERE network_id = 'net' GROUP BY transaction_id",
        "SELECT c.transaction_id, COUNT(*) FROM journal j JOIN conversions c ON j.kind = 'event' \
             AND j.payload LIKE '%\"transaction_id\":\"' || c.transaction_id || '\"%' \
             WHERE c.network_id = 'net' GROUP BY c.transaction_id",
        "SELECT c.transaction_id, COUNT(*) FROM ledger_transactions t JOIN conversions c ON c.id = t.conversion_id \
             WHERE (SELECT COUNT(*) FROM ledger_entries e WHERE e.transaction_id = t.id) = 4 GROUP BY c.transaction_id",
        "SELECT c.transaction_id, COUNT(*) FROM conversion_changes x JOIN conversions c ON c.id = x.conversion_id \
             GROUP BY c.transaction_id",
        "SELECT c.transaction_id, COUNT(*) FROM callback_deliveries d JOIN conversions c ON c.id = d.conversion_id \
             GROUP BY c.transaction_id",
    ];
    for (i, sql) in queries.iter().enumerate() {
        for row in sqlx::query(sql).fetch_all(&mut *snapshot).await.expect("count") {
            let tx: String = row.try_get(0).expect("tx");
            let n: i64 = row.try_get(1).expect("count");
            tally.entry(tx).or_default()[i] = n;
        }
    }
    // Rows of the tables above that belong to no conversion of `net` (half-written).
    for (what, sql) in [
        (
            "ledger transactions without a conversion",
            "SELECT COUNT(*) FROM ledger_transactions t WHERE t.conversion_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM conversions c WHERE c.id = t.conversion_id)",
        ),
        (
            "outbox changes without a conversion",
            "SELECT COUNT(*) FROM conversion_changes x WHERE NOT EXISTS (SELECT 1 FROM conversions c WHERE c.id = x.conversion_id)",
        ),
        (
            "deliveries without a change",
            "SELECT COUNT(*) FROM callback_deliveries d WHERE NOT EXISTS (SELECT 1 FROM conversion_changes x WHERE x.id = d.change_id)",
        ),
        (
            "ledger entries without a transaction",
            "SELECT COUNT(*) FROM ledger_entries e WHERE NOT EXISTS (SELECT 1 FROM ledger_transactions t WHERE t.id = e.transaction_id)",
        ),
    ] {
        let n: i64 = sqlx::query(sql).fetch_one(&mut *snapshot).await.expect("orphans").try_get(0).expect("n");
        if n != 0 {
            problems.push(format!("{n} {what}"));
        }
    }
    let balance: i64 = sqlx::query(
        "SELECT COALESCE(CAST(SUM(balance) AS BIGINT), 0) FROM accounts WHERE owner = 'u1' AND kind = 'pending'",
    )
    .fetch_one(&mut *snapshot)
    .await
    .expect("balance")
    .try_get(0)
    .expect("balance");
    snapshot.rollback().await.expect("end snapshot");
    for tx in events {
        match tally.get(tx) {
            None => problems.push(format!("{tx}: acknowledged but not stored")),
            Some(n) if *n != [1, 1, 1, 1, 1] => problems.push(format!(
                "{tx}: conversion, journal, posting of 4 entries, outbox change, delivery = {n:?}, not once each"
            )),
            Some(_) => {}
        }
    }
    for tx in tally.keys().filter(|tx| !events.contains(*tx)) {
        problems.push(format!("{tx}: stored but never sent"));
    }
    if balance != 1_000 * events.len() as i64 {
        problems.push(format!("u1's pending balance is {balance}, not {} x 10.00", events.len()));
    }
    problems.extend(cashbackd::ledger::check_invariants(&db.pool).await.expect("invariants"));
    assert!(problems.is_empty(), "{label}: {} problems:\n{}", problems.len(), problems.join("\n"));
    tally.len()
}

// ---- PostgreSQL restarted under load ----------------------------------------------------

/// A PostgreSQL cluster of this test's own on a free port (the shared server on 5432 is
/// never touched): initdb'd in a temporary directory, stopped and removed when dropped,
/// panics included.
struct PrivatePostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

impl PrivatePostgres {
    /// None (after saying why) when the binaries are missing outside CI.
    fn start() -> Option<PrivatePostgres> {
        // Debian's layout (the newest version installed), else whatever is on PATH.
        let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).collect())
            .unwrap_or_default();
        versions.sort_by_key(|p| {
            p.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()).and_then(|v| v.parse::<u32>().ok())
        });
        let on_path =
            std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default();
        let Some(bin) =
            versions.into_iter().rev().chain(on_path).find(|b| b.join("initdb").exists() && b.join("pg_ctl").exists())
        else {
            skip_or_fail(
                "the PostgreSQL restart test",
                "no initdb and pg_ctl in /usr/lib/postgresql/*/bin nor on PATH",
            );
            return None;
        };
        let dir = tempfile::Builder::new().prefix("cbt-pg-").tempdir().expect("tempdir");
        // initdb refuses to run as root: the cluster belongs to the `postgres` user then.
        if is_root() {
            let status = Command::new("chown").arg("postgres:").arg(dir.path()).status().expect("chown");
            assert!(status.success(), "chown {} to postgres", dir.path().display());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
        let pg = PrivatePostgres { bin, dir, port };
        pg.run("initdb", &["-D", &pg.data(), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]);
        pg.ctl(&["start"]);
        Some(pg)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Runs a PostgreSQL program as the cluster's owner; panics with its output on failure.
    fn run(&self, program: &str, args: &[&str]) {
        let exe = self.bin.join(program);
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = command.args(args).current_dir(self.dir.path()).output().expect("run a PostgreSQL program");
        assert!(
            out.status.success(),
            "{program} {args:?}: {}\n{}{}\nserver log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
        );
    }

    /// `pg_ctl ACTION [args]` on the cluster, waiting for it to finish.
    fn ctl(&self, args: &[&str]) {
        let data = self.data();
        let log = self.dir.path().join("server.log").display().to_string();
        let options = format!("-p {} -k {} -c listen_addresses=127.0.0.1", self.port, self.dir.path().display());
        let mut all = vec!["-D", &data, "-l", &log, "-o", &options, "-w", "-t", "60"];
        all.extend_from_slice(args);
        self.run("pg_ctl", &all);
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.data();
        let exe = self.bin.join("pg_ctl");
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        let _ = command.args(["-D", &data, "stop", "-m", "immediate", "-w"]).output();
    }
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false)
}

/// The longest a postback may take to be answered while its database is away.
const ANSWER_BOUND: Duration = Duration::from_secs(30);

/// What the postback clients saw.
#[derive(Default)]
struct Load {
    /// Every transaction a client sent (and retried until a 200).
    sent: Mutex<HashSet<String>>,
    /// Transactions answered 200.
    acked: Mutex<HashSet<String>>,
    /// 503 answers, each with its Retry-After.
    unavailable: AtomicUsize,
    /// Requests sent, retries included.
    requests: AtomicUsize,
    slowest: Mutex<Duration>,
    problems: Mutex<Vec<String>>,
}

impl Load {
    fn acked(&self) -> usize {
        self.acked.lock().expect("lock").len()
    }

    /// Waits until `more` postbacks more are acknowledged.
    async fn more_acks(&self, more: usize) {
        let target = self.acked() + more;
        wait_for("postbacks to be acknowledged", Duration::from_secs(90), || self.acked() >= target).await
    }

    /// What the clients saw since `mark` (acknowledged, 503s), as a figure; moves the mark.
    fn since(&self, mark: &mut (usize, usize), phase: &str) -> String {
        let now = (self.acked(), self.unavailable.load(Ordering::SeqCst));
        let figure = format!("{phase}: {} acknowledged, {} answered 503", now.0 - mark.0, now.1 - mark.1);
        *mark = now;
        figure
    }

    fn problem(&self, p: String) {
        self.problems.lock().expect("lock").push(p);
    }

    /// Sends new transactions one after another until `stop`, retrying each 503 (as a
    /// network does) until the answer is 200.
    async fn client(self: Arc<Self>, id: usize, bases: Vec<String>, stop: Arc<AtomicBool>) {
        let http = reqwest::Client::builder().timeout(ANSWER_BOUND * 2).build().expect("client");
        let mut n = 0;
        while !stop.load(Ordering::SeqCst) {
            let tx = format!("k{id}-{n}");
            let base = &bases[n % bases.len()];
            n += 1;
            self.sent.lock().expect("lock").insert(tx.clone());
            let given_up = Instant::now() + Duration::from_secs(120);
            loop {
                let url = format!(
                    "{base}/postback/net?tid={tx}&clickref=c1&sale=100.00&comm=8.00&status=pending&token={TOKEN}"
                );
                let started = Instant::now();
                self.requests.fetch_add(1, Ordering::SeqCst);
                let answer = http.get(url).send().await;
                let took = started.elapsed();
                {
                    let mut slowest = self.slowest.lock().expect("lock");
                    *slowest = (*slowest).max(took);
                }
                if took > ANSWER_BOUND {
                    self.problem(format!("{tx}: answered after {took:?}, over the bound of {ANSWER_BOUND:?}"));
                }
                match answer {
                    Ok(r) if r.status() == 200 => {
                        let body = r.text().await.unwrap_or_default();
                        if !body.contains("\"applied\"") && !body.contains("\"duplicate\"") {
                            self.problem(format!("{tx}: 200 with {body}"));
                        }
                        self.acked.lock().expect("lock").insert(tx);
                        break;
                    }
                    Ok(r) if r.status() == 503 => {
                        self.unavailable.fetch_add(1, Ordering::SeqCst);
                        if r.headers().get("retry-after").is_none() {
                            self.problem(format!("{tx}: a 503 without Retry-After"));
                        }
                        let body = r.text().await.unwrap_or_default();
                        if !body.contains("retry later") {
                            self.problem(format!("{tx}: 503 with {body}"));
                        }
                    }
                    Ok(r) => {
                        let status = r.status();
                        self.problem(format!("{tx}: {status} {}", r.text().await.unwrap_or_default()));
                        break;
                    }
                    Err(e) => {
                        self.problem(format!("{tx}: no answer: {e}"));
                        break;
                    }
                }
                if Instant::now() > given_up {
                    self.problem(format!("{tx}: still 503 after two minutes of retries"));
                    break;
                }
                // A network retries later; the test, a little later.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_restarted_under_load_answers_200_or_503_and_loses_or_doubles_nothing() {
    let Some(pg) = tokio::task::spawn_blocking(PrivatePostgres::start).await.expect("start cluster") else { return };
    let pg = Arc::new(pg);
    {
        use sqlx::{Connection, Executor};
        let mut admin = sqlx::PgConnection::connect(&pg.url("postgres")).await.expect("admin connection");
        admin.execute("CREATE DATABASE cashbackd").await.expect("create database");
    }
    let url = pg.url("cashbackd");
    let db = Db::connect(&url).await.expect("connect");
    let _w = postback_world(db.clone()).await;
    let dir = tempfile::tempdir().expect("dir");
    let servers: Vec<Server> = (0..2).map(|i| Server::start(&url, dir.path(), &format!("replica-{i}"))).collect();
    let bases: Vec<String> = servers.iter().map(|s| s.base.clone()).collect();

    let load = Arc::new(Load::default());
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..12).map(|i| tokio::spawn(load.clone().client(i, bases.clone(), stop.clone()))).collect();
    let (mut figures, mut mark) = (Vec::new(), (0, 0));
    load.more_acks(100).await;
    figures.push(load.since(&mut mark, "before"));

    // A fast restart: sessions are terminated, the server is back within a second.
    let cluster = pg.clone();
    tokio::task::spawn_blocking(move || cluster.ctl(&["restart", "-m", "fast"])).await.expect("restart");
    load.more_acks(100).await;
    figures.push(load.since(&mut mark, "restart -m fast"));

    // A crash (immediate: no checkpoint, recovery on start), and the server stays away for
    // longer than a request waits for a connection.
    let cluster = pg.clone();
    tokio::task::spawn_blocking(move || cluster.ctl(&["stop", "-m", "immediate"])).await.expect("stop");
    tokio::time::sleep(Duration::from_secs(12)).await;
    let cluster = pg.clone();
    tokio::task::spawn_blocking(move || cluster.ctl(&["start"])).await.expect("start");
    load.more_acks(100).await;
    figures.push(load.since(&mut mark, "stop -m immediate, 12 s down, start"));

    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.expect("client");
    }
    let problems = load.problems.lock().expect("lock").clone();
    let logs: Vec<String> = servers.iter().map(Server::log).collect();
    assert!(
        problems.is_empty(),
        "{} problems:\n{}\n\nserver logs:\n{}",
        problems.len(),
        problems.join("\n"),
        logs.join("\n")
    );
    let sent = load.sent.lock().expect("lock").clone();
    let acked = load.acked.lock().expect("lock").clone();
    assert_eq!(sent, acked, "every postback was answered 200 in the end");
    let unavailable = load.unavailable.load(Ordering::SeqCst);
    assert!(unavailable > 0, "the restarts were never seen by a client: the test proved nothing");
    for (server, log) in servers.iter().zip(&logs) {
        assert!(!log.contains("panicked"), "{}: {log}", server.base);
    }
    let checked = verify_postbacks(&db, &sent, "after two restarts").await;
    eprintln!(
        "faults [postgres restart]: {} postbacks ({} requests) to 2 replicas, {unavailable} answered 503 and retried, \
         slowest answer {:?}; {}; {checked} conversions checked whole and once",
        sent.len(),
        load.requests.load(Ordering::SeqCst),
        *load.slowest.lock().expect("lock"),
        figures.join("; ")
    );
    drop(servers);
    db.pool.close().await;
}

// ---- SQLite's disk full -----------------------------------------------------------------

/// A small tmpfs mounted on a temporary directory, unmounted when dropped (panics
/// included). Needs root (CI runs as root); elsewhere the test says why it skips.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::Builder::new().prefix("cbt-tmpfs-").tempdir().expect("tempdir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { dir }),
            Ok(o) => {
                skip_or_fail("the disk-full test (a tmpfs mount)", String::from_utf8_lossy(&o.stderr).trim());
                None
            }
            Err(e) => {
                skip_or_fail("the disk-full test (a tmpfs mount)", &e.to_string());
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount").arg(self.dir.path()).status().is_ok_and(|s| s.success());
        if !unmounted {
            // Busy (a process still holds a file): detach it now, freed when released.
            let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
        }
    }
}

/// Writes zeros to `path` until the filesystem refuses; returns the bytes written.
fn fill_disk(path: &Path) -> u64 {
    use std::io::Write;
    let mut file = std::fs::File::create(path).expect("ballast");
    let chunk = vec![0u8; 64 << 10];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
    written
}

async fn integrity(db: &Db) -> String {
    sqlx::query("PRAGMA integrity_check").fetch_one(&db.pool).await.expect("integrity_check").try_get(0).expect("text")
}

/// Sends a postback; returns the status and the body.
async fn postback(http: &reqwest::Client, server: &Server, tx: &str) -> (u16, String, Option<String>) {
    let r = http.get(server.postback_url(tx)).send().await.expect("an answer");
    let retry_after = r.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
    (r.status().as_u16(), r.text().await.unwrap_or_default(), retry_after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_on_a_full_disk_answers_503_saying_so_stays_intact_and_writes_again_once_space_returns() {
    let Some(disk) = Tmpfs::mount("8m") else { return };
    let url = format!("sqlite://{}", disk.path().join("cashbackd.db").display());
    let db = Db::connect(&url).await.expect("connect");
    let _w = postback_world(db.clone()).await;
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(&url, dir.path(), "sqlite");
    let http = reqwest::Client::builder().timeout(ANSWER_BOUND).build().expect("client");
    let mut sent = HashSet::new();
    for i in 0..20 {
        let tx = format!("before-{i}");
        let (status, body, _) = postback(&http, &server, &tx).await;
        assert_eq!(status, 200, "{tx}: {body}");
        sent.insert(tx);
    }

    // Fill the disk. The WAL is checkpointed and truncated first, so the next commit must
    // grow a file: SQLite's main file and its WAL (and -shm) all live on this disk.
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&db.pool).await.expect("checkpoint");
    let ballast = disk.path().join("ballast");
    let filled = fill_disk(&ballast);
    let mut refused = Vec::new();
    let mut accepted_while_full = 0;
    for i in 0..200 {
        let tx = format!("full-{i}");
        let started = Instant::now();
        let (status, body, retry_after) = postback(&http, &server, &tx).await;
        assert!(started.elapsed() < ANSWER_BOUND, "{tx}: answered after {:?}", started.elapsed());
        sent.insert(tx.clone());
        match status {
            200 => accepted_while_full += 1,
            503 => {
                assert!(
                    body.contains("disk is full") && body.contains("retry later"),
                    "{tx}: {body}\n{}",
                    server.log()
                );
                assert!(retry_after.is_some(), "{tx}: a 503 says when to retry");
                refused.push(tx);
                if refused.len() == 5 {
                    break;
                }
            }
            _ => panic!("{tx}: {status} {body}\n{}", server.log()),
        }
    }
    assert!(!refused.is_empty(), "the full disk refused nothing after {accepted_while_full} postbacks");
    let log = server.log();
    assert!(log.contains("disk is full"), "the server logs why:\n{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(server_alive(&server), "the server keeps running:\n{log}");
    assert_eq!(integrity(&db).await, "ok", "the database is intact on the full disk");

    // Space returns: the same process writes again, no restart. The refused postbacks are
    // retried, as a network does, and new ones go through.
    std::fs::remove_file(&ballast).expect("remove ballast");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut retries = 0;
    for tx in refused.iter().cloned().chain((0..20).map(|i| format!("after-{i}"))) {
        loop {
            let (status, body, _) = postback(&http, &server, &tx).await;
            if status == 200 {
                break;
            }
            retries += 1;
            assert!(
                status == 503 && Instant::now() < deadline,
                "{tx} after space returned: {status} {body}\n{}",
                server.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        sent.insert(tx);
    }
    // What is durable: the server is killed first, so nothing it holds open counts.
    drop(server);
    assert_eq!(integrity(&db).await, "ok");
    let checked = verify_postbacks(&db, &sent, "after the disk was full").await;
    eprintln!(
        "faults [sqlite disk full]: a {} KiB ballast filled the 8 MiB disk; {accepted_while_full} postbacks still fit, \
         {} answered 503 \"disk is full\" with Retry-After; integrity_check ok; after the ballast went, the same \
         process took the refused ones again ({retries} more 503s on the way) and 20 new ones; {checked} conversions \
         checked whole and once",
        filled >> 10,
        refused.len()
    );
    db.pool.close().await;
}

fn server_alive(server: &Server) -> bool {
    // `try_wait` needs `&mut`; /proc says whether the pid still runs (and is not a zombie).
    std::fs::read_to_string(format!("/proc/{}/stat", server.child.id()))
        .is_ok_and(|s| s.split_whitespace().nth(2).is_none_or(|state| state != "Z"))
}

// ---- partner endpoints down or slow -----------------------------------------------------

/// A partner's callback server on a port of its own: answers 200 at once, or, while
/// `hang` is set, holds every request without answering. Every request is recorded with
/// its delivery id and when it arrived.
#[derive(Clone, Default)]
struct Partner {
    hang: Arc<AtomicBool>,
    received: Arc<Mutex<Vec<(String, Instant)>>>,
}

impl Partner {
    /// Serves on `addr` (a port reserved earlier: a partner coming back up).
    async fn serve_on(&self, addr: std::net::SocketAddr) {
        let this = self.clone();
        let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
            let this = this.clone();
            async move {
                let id = url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
                    .find(|(k, _)| k == "d")
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default();
                this.received.lock().expect("lock").push((id, Instant::now()));
                while this.hang.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                "ok"
            }
        });
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind the partner's port");
        tokio::spawn(async move { axum::serve(listener, app).await });
    }

    fn received(&self) -> Vec<(String, Instant)> {
        self.received.lock().expect("lock").clone()
    }
}

/// An address nothing listens on (yet).
fn reserved_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr")
}

fn partner_endpoint(id: &str, addr: std::net::SocketAddr, timeout_ms: i64) -> cashbackd::callbacks::EndpointSpec {
    use cashbackd::callbacks::{Backoff, EndpointSpec, RetryPolicy};
    let mut spec = EndpointSpec::new(id, "p1", &format!("http://{addr}/pb?d={{delivery_id}}&s=[%CASHBACK:STATE%]"));
    spec.timeout_ms = timeout_ms;
    // Seed 003's schedule; never disabled during the test.
    spec.retry = RetryPolicy {
        max_attempts: 3,
        backoff: Backoff::Fixed,
        delay_ms: 5 * 60_000,
        max_delay_ms: 3_600_000,
        jitter_pct: 0,
    };
    spec.disable_after = 1_000;
    spec
}

/// Per endpoint: (delivery id, state, attempts) of each delivery.
async fn deliveries_of(db: &Db, endpoint: &str) -> Vec<(i64, String, i64, Option<String>)> {
    sqlx::query("SELECT id, state, attempts, last_error FROM callback_deliveries WHERE endpoint_id = $1 ORDER BY id")
        .bind(endpoint)
        .fetch_all(&db.pool)
        .await
        .expect("deliveries")
        .iter()
        .map(|r| {
            (
                r.try_get(0).expect("id"),
                r.try_get(1).expect("state"),
                r.try_get(2).expect("n"),
                r.try_get(3).expect("e"),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partner_endpoints_down_or_hanging_are_retried_and_counted_delivered_once() {
    use cashbackd::plugin::wit::latest::ConversionState::Pending;
    const CONVERSIONS: usize = 40;
    const SLOW_TIMEOUT: Duration = Duration::from_millis(2_000);
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        let db = w.service.db().clone();
        let now = w.service.now();
        cashbackd::callbacks::upsert_partner(&db, "p1", "Partner", now).await.expect("partner");
        let (healthy, down, slow) = (Partner::default(), Partner::default(), Partner::default());
        let (healthy_addr, down_addr, slow_addr) = (reserved_addr(), reserved_addr(), reserved_addr());
        healthy.serve_on(healthy_addr).await;
        slow.hang.store(true, Ordering::SeqCst);
        slow.serve_on(slow_addr).await;
        for spec in [
            partner_endpoint("healthy", healthy_addr, 10_000),
            partner_endpoint("down", down_addr, 10_000),
            partner_endpoint("slow", slow_addr, SLOW_TIMEOUT.as_millis() as i64),
        ] {
            cashbackd::callbacks::save_endpoint(&db, &spec, now).await.expect("endpoint");
        }
        for i in 0..CONVERSIONS {
            w.service.ingest(crate::ledger::event(&format!("P{i}"), Pending, 10_000, 500)).await.expect("ingest");
        }
        let deliverer = crate::callbacks::deliverer(&w, "r1");

        // First pass: the healthy partner gets everything, the one that is down refuses
        // the connection, the one that hangs holds each request until its timeout.
        let started = Instant::now();
        let first = deliverer.run_due().await.expect("first pass");
        let took = started.elapsed();
        let healthy_last =
            healthy.received().iter().map(|(_, at)| at.duration_since(started)).max().expect("healthy got callbacks");
        assert_eq!(
            (first.delivered, first.retrying, first.failed),
            (CONVERSIONS, 2 * CONVERSIONS, 0),
            "{}: {first:?}",
            t.name
        );
        for (id, state, attempts, error) in deliveries_of(&db, "down").await {
            assert_eq!((state.as_str(), attempts), ("pending", 1), "{}: down {id}", t.name);
            let error = error.unwrap_or_default();
            assert!(error.contains("connect"), "{}: the reason names the connection: {error}", t.name);
        }
        for (id, state, attempts, error) in deliveries_of(&db, "slow").await {
            assert_eq!((state.as_str(), attempts), ("pending", 1), "{}: slow {id}", t.name);
            let error = error.unwrap_or_default();
            assert!(
                error.contains("timed out") || error.contains("timeout"),
                "{}: the reason names the timeout: {error}",
                t.name
            );
        }
        assert_eq!(slow.received().len(), CONVERSIONS, "each hanging request reached the slow partner once");
        // The healthy partner is not held up by the slow one: that one has 8 requests in
        // flight at most, the healthy one keeps its own room (docs/CALLBACKS.md, "A slow
        // partner costs the others nothing"). The bound is loose for a loaded machine;
        // tests/it/callbacks.rs proves the order from the attempt log.
        assert!(healthy_last < SLOW_TIMEOUT + Duration::from_millis(1_500), "{}: {healthy_last:?}", t.name);
        eprintln!(
            "  [{}] first pass {took:?}: {first:?}; the healthy partner had all {CONVERSIONS} callbacks after {healthy_last:?} \
             (the slow partner's timeout: {SLOW_TIMEOUT:?})",
            t.name
        );

        // Five minutes later both are back: every delivery goes, once.
        slow.hang.store(false, Ordering::SeqCst);
        down.serve_on(down_addr).await;
        w.clock.advance(5 * 60_000);
        let second = deliverer.run_due().await.expect("second pass");
        assert_eq!((second.delivered, second.retrying), (2 * CONVERSIONS, 0), "{}: {second:?}", t.name);
        w.clock.advance(60 * 60_000);
        let third = deliverer.run_due().await.expect("third pass");
        assert_eq!(third.claimed, 0, "{}: nothing is sent again: {third:?}", t.name);
        for (endpoint, partner, sends) in [("healthy", &healthy, 1), ("down", &down, 1), ("slow", &slow, 2)] {
            let rows = deliveries_of(&db, endpoint).await;
            assert_eq!(rows.len(), CONVERSIONS);
            let wanted = if endpoint == "healthy" { 1 } else { 2 };
            let got = partner.received();
            for (id, state, attempts, _) in &rows {
                assert_eq!((state.as_str(), *attempts), ("delivered", wanted), "{}: {endpoint} {id}", t.name);
                let message = cashbackd::callbacks::deliver::message_id(*id);
                let arrived = got.iter().filter(|(d, _)| *d == message).count();
                assert_eq!(arrived, sends, "{}: {endpoint} got {message} {arrived} times", t.name);
            }
            let delivered_attempts: i64 =
                sqlx::query("SELECT COUNT(*) FROM callback_attempts WHERE endpoint_id = $1 AND outcome = 'delivered'")
                    .bind(endpoint)
                    .fetch_one(&db.pool)
                    .await
                    .expect("attempts")
                    .try_get(0)
                    .expect("n");
            assert_eq!(delivered_attempts, CONVERSIONS as i64, "{}: {endpoint}: each counted delivered once", t.name);
        }
        eprintln!(
            "faults [callbacks, {}]: {CONVERSIONS} conversions x 3 endpoints; first pass {took:?} ({} delivered, {} to \
             retry: {CONVERSIONS} refused connections, {CONVERSIONS} timeouts of {SLOW_TIMEOUT:?}); the healthy partner \
             had all of its callbacks {healthy_last:?} after the pass began; 5 minutes later {} delivered; each delivery \
             counted delivered once, the slow partner received each twice (the timed-out try, then the retry, same id)",
            t.name, first.delivered, first.retrying, second.delivered
        );
        t.cleanup().await;
    }
}

/// Makes every insert into the attempt log fail while `test_fault` holds a row: the
/// delivery worker's record fails in the middle of a run (the database refusing a write),
/// while the claims go on. A trigger, on both backends.
async fn arm_record_fault(db: &Db) {
    let statements: &[&str] = match db.backend {
        cashbackd::db::Backend::Postgres => &[
            "CREATE TABLE test_fault (armed BIGINT)",
            "CREATE FUNCTION test_fault() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
             IF EXISTS (SELECT 1 FROM test_fault) THEN RAISE EXCEPTION 'injected: the attempt log refuses writes'; \
             END IF; RETURN NULL; END $$",
            "CREATE TRIGGER test_fault BEFORE INSERT ON callback_attempts FOR EACH STATEMENT EXECUTE FUNCTION test_fault()",
        ],
        cashbackd::db::Backend::Sqlite => &[
            "CREATE TABLE test_fault (armed INTEGER)",
            "CREATE TRIGGER test_fault BEFORE INSERT ON callback_attempts WHEN EXISTS (SELECT 1 FROM test_fault) \
             BEGIN SELECT RAISE(ABORT, 'injected: the attempt log refuses writes'); END",
        ],
    };
    for sql in statements {
        sqlx::query(sql).execute(&db.pool).await.expect("the fault's trigger");
    }
    set_record_fault(db, true).await;
}

async fn set_record_fault(db: &Db, armed: bool) {
    let sql = if armed { "INSERT INTO test_fault (armed) VALUES (1)" } else { "DELETE FROM test_fault" };
    sqlx::query(sql).execute(&db.pool).await.expect("arm or disarm the fault");
}

/// The scheduler's `deliver` job (`run_due`) meets a database error after its partners
/// answered: it records those answers once the database takes writes again, before it
/// returns the error, so no partner gets the same callback twice from the same process.
/// (It used to return at the first error and drop the answers: they went out again when
/// their lease ran out. The crash loop caught it only by chance.) A record that keeps
/// failing ends the run after three tries; then the lease sends them again, at least once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_run_whose_record_fails_records_the_answers_once_the_database_is_back_before_it_returns() {
    use cashbackd::callbacks::{DeliveryConfig, deliver::message_id};
    use cashbackd::plugin::wit::latest::ConversionState::Pending;
    const CONVERSIONS: usize = 24;
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        let db = w.service.db().clone();
        let now = w.service.now();
        cashbackd::callbacks::upsert_partner(&db, "p1", "Partner", now).await.expect("partner");
        let (partner, addr) = (Partner::default(), reserved_addr());
        partner.serve_on(addr).await;
        cashbackd::callbacks::save_endpoint(&db, &partner_endpoint("partner", addr, 10_000), now)
            .await
            .expect("endpoint");
        for i in 0..CONVERSIONS {
            w.service.ingest(crate::ledger::event(&format!("R{i}"), Pending, 10_000, 500)).await.expect("ingest");
        }
        let config = |poll_ms| DeliveryConfig {
            allow_private: true,
            poll: Duration::from_millis(poll_ms),
            ..Default::default()
        };
        let lease_ms = DeliveryConfig::default().lease_ms;

        // 1. The first record fails; the database takes writes again well before the next
        //    try (a poll later, 3 s): the run records every answer, then returns the error.
        arm_record_fault(&db).await;
        let deliverer =
            cashbackd::callbacks::Deliverer::new(db.clone(), w.clock.clone(), config(3_000), "r1").expect("deliverer");
        let run = tokio::spawn({
            let d = deliverer.clone();
            async move { d.run_due().await }
        });
        let started = Instant::now();
        while partner.received().len() < CONVERSIONS {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{}: the partner got {:?}",
                t.name,
                partner.received().len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Every answer is in; the record of them fails at once (within the worker's 20 ms).
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        set_record_fault(&db, false).await;
        let outcome = run.await.expect("the run's task");
        let error = outcome.expect_err("the run tells the error it met").to_string();
        assert!(error.contains("injected"), "{}: the error is the database's: {error}", t.name);
        for (id, state, attempts, _) in deliveries_of(&db, "partner").await {
            assert_eq!(
                (state.as_str(), attempts),
                ("delivered", 1),
                "{}: delivery {id} recorded before the run returned",
                t.name
            );
        }
        // Nothing goes out again, not even once the leases would have run out.
        w.clock.advance(lease_ms + 60_000);
        let again = deliverer.run_due().await.expect("a later run");
        assert_eq!(again.claimed, 0, "{}: {again:?}", t.name);
        let got = partner.received();
        assert_eq!(got.len(), CONVERSIONS, "{}: each callback reached the partner once", t.name);
        let ids: HashSet<&str> = got.iter().map(|(d, _)| d.as_str()).collect();
        assert_eq!(ids.len(), CONVERSIONS, "{}: no delivery id twice", t.name);

        // 2. A record that keeps failing ends the run after three tries (a poll apart), with
        //    the error; its deliveries go out again once their lease runs out: at least once.
        for i in 0..CONVERSIONS {
            w.service.ingest(crate::ledger::event(&format!("S{i}"), Pending, 10_000, 500)).await.expect("ingest");
        }
        let first_round: HashSet<String> = partner.received().into_iter().map(|(d, _)| d).collect();
        set_record_fault(&db, true).await;
        let deliverer =
            cashbackd::callbacks::Deliverer::new(db.clone(), w.clock.clone(), config(100), "r2").expect("deliverer");
        let started = Instant::now();
        let error = deliverer.run_due().await.expect_err("a record that keeps failing ends the run").to_string();
        assert!(error.contains("injected"), "{}: {error}", t.name);
        assert!(started.elapsed() < Duration::from_secs(20), "{}: the run ended after its tries", t.name);
        let pending = deliveries_of(&db, "partner").await.into_iter().filter(|(_, s, _, _)| s == "pending").count();
        assert_eq!(pending, CONVERSIONS, "{}: the unrecorded deliveries stay pending under their lease", t.name);
        set_record_fault(&db, false).await;
        let early = deliverer.run_due().await.expect("a run inside the lease");
        assert_eq!(early.claimed, 0, "{}: leased deliveries wait for their lease: {early:?}", t.name);
        w.clock.advance(lease_ms + 1_000);
        let after = deliverer.run_due().await.expect("a run after the lease");
        assert_eq!(after.delivered, CONVERSIONS, "{}: {after:?}", t.name);
        for (id, state, attempts, _) in deliveries_of(&db, "partner").await {
            // The first send of a second-round delivery was never recorded: one attempt.
            assert_eq!((state.as_str(), attempts), ("delivered", 1), "{}: delivery {id}", t.name);
            let sent = partner.received().iter().filter(|(d, _)| *d == message_id(id)).count();
            let wanted = if first_round.contains(&message_id(id)) { 1 } else { 2 };
            assert_eq!(sent, wanted, "{}: delivery {id}", t.name);
        }
        assert_eq!(partner.received().len(), 3 * CONVERSIONS, "{}: the second round twice each", t.name);
        eprintln!(
            "faults [callbacks, {}]: a record refused once: the run recorded all {CONVERSIONS} answers before returning \
             the error, nothing sent twice; refused three times: the run ended, the {CONVERSIONS} went out again after \
             their lease",
            t.name
        );
        t.cleanup().await;
    }
}

// ---- the SMTP server down or silent -----------------------------------------------------

/// A server that accepts connections and never says a word (not even SMTP's greeting),
/// holding each connection until dropped. Returns how many connections it took.
async fn silent_server(addr: std::net::SocketAddr) -> (tokio::task::JoinHandle<()>, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind the silent server");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(socket);
        }
    });
    (task, accepted)
}

/// The reasons recorded on the digests that failed.
async fn last_errors(db: &Db) -> Vec<String> {
    sqlx::query("SELECT last_error FROM notifications WHERE last_error IS NOT NULL")
        .fetch_all(&db.pool)
        .await
        .expect("errors")
        .iter()
        .map(|r| r.try_get(0).expect("error"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digests_wait_while_smtp_is_down_or_silent_and_each_is_sent_once_when_it_is_back() {
    use crate::smtp::SmtpSink;
    use cashbackd::notify::{Notifier, NotifyConfig};
    use cashbackd::plugin::wit::latest::ConversionState::Pending;
    const SMTP_TIMEOUT: Duration = Duration::from_millis(1_500);
    const USERS: usize = 4;
    for t in backends::all().await {
        let w = world(t.db.clone()).await;
        let db = w.service.db().clone();
        for u in 0..USERS {
            let (user, click) = (format!("mail-{u}"), format!("mail-click-{u}"));
            w.service.register_user(&user, Some(&format!("{user}@example.com"))).await.expect("user");
            w.service
                .register_click(cashbackd::conversions::NewClick {
                    click_id: click.clone(),
                    user_id: user,
                    merchant_id: Some("shop".into()),
                    network_id: Some("net".into()),
                    ..Default::default()
                })
                .await
                .expect("click");
            let mut e = crate::ledger::event(&format!("M{u}"), Pending, 10_000, 500);
            e.click_id = Some(click);
            w.service.ingest(e).await.expect("ingest");
        }
        let addr = reserved_addr();
        let config = NotifyConfig {
            smtp_url: Some(format!("smtp://{addr}")),
            from: "Cashback <cashback@shop.test>".into(),
            timeout: SMTP_TIMEOUT,
            ..NotifyConfig::default()
        };
        let notifier = Notifier::new(db.clone(), w.clock.clone(), config).expect("notifier");
        let scheduler = cashbackd::scheduler::Scheduler::new(w.service.clone(), runtime().clone(), "r1")
            .with_notifier(notifier.clone());
        cashbackd::scheduler::ensure_system_jobs(&w.service).await.expect("system jobs");

        // Down: the connection is refused. The batch is formed (the digests are stored),
        // the first send fails at once, the others wait untouched.
        let started = Instant::now();
        let down = notifier.run().await.expect("run while down");
        let down_took = started.elapsed();
        assert_eq!(
            (down.users, down.sent, down.retrying, down.deferred),
            (USERS as i64, 0, 1, USERS as i64 - 1),
            "{}: {down:?}",
            t.name
        );
        assert!(down_took < SMTP_TIMEOUT, "{}: a refused connection fails at once: {down_took:?}", t.name);
        let errors = last_errors(&db).await;
        assert!(errors.iter().any(|e| e.contains("refused")), "{}: the reason: {errors:?}", t.name);

        // Silent: it accepts and never answers. The scheduled job's run ends after the
        // timeout (the scheduler is not held), recorded ok with the digests still to send.
        let (silent, accepted) = silent_server(addr).await;
        w.clock.advance(10 * 60_000);
        let started = Instant::now();
        let run = tokio::time::timeout(SMTP_TIMEOUT * 10, scheduler.run_now("notify"))
            .await
            .expect("the notify job must not hang on an SMTP server that never answers")
            .expect("notify job");
        let silent_took = started.elapsed();
        assert_eq!(run.outcome, "ok", "{}: {run:?}", t.name);
        assert_eq!((run.counts["sent"].as_i64(), run.counts["retrying"].as_i64()), (Some(0), Some(1)), "{run:?}");
        assert!(
            silent_took >= SMTP_TIMEOUT && silent_took < SMTP_TIMEOUT * 3,
            "{}: bounded by the SMTP timeout: {silent_took:?}",
            t.name
        );
        assert!(accepted.load(Ordering::SeqCst) >= 1);
        let states: Vec<(String, i64)> =
            sqlx::query("SELECT state, attempts FROM notifications WHERE state <> 'skipped' ORDER BY id")
                .fetch_all(&db.pool)
                .await
                .expect("notifications")
                .iter()
                .map(|r| (r.try_get(0).expect("state"), r.try_get(1).expect("attempts")))
                .collect();
        assert!(states.iter().all(|(s, _)| s == "pending"), "{}: nothing lost or stuck: {states:?}", t.name);
        // One try per run, and not the same digest twice: those deferred go first next time.
        assert_eq!(states.iter().map(|(_, n)| *n).collect::<Vec<_>>(), [1, 1, 0, 0], "{}", t.name);
        let errors = last_errors(&db).await;
        assert!(errors.iter().any(|e| e.contains("did not answer")), "{}: {errors:?}", t.name);

        // Back: every digest goes out, once each; later runs send nothing again.
        silent.abort();
        let _ = silent.await;
        let smtp = SmtpSink::start_on(addr).await;
        w.clock.advance(30 * 60_000);
        let back = notifier.run().await.expect("run when back");
        assert_eq!((back.sent, back.retrying, back.deferred), (USERS as i64, 0, 0), "{}: {back:?}", t.name);
        w.clock.advance(24 * 3_600_000);
        let later = notifier.run().await.expect("later run");
        assert_eq!(later.sent, 0, "{}: {later:?}", t.name);
        let mut to: Vec<String> = smtp.accepted().iter().flat_map(|m| m.to.clone()).collect();
        to.sort();
        let wanted: Vec<String> = (0..USERS).map(|u| format!("<mail-{u}@example.com>")).collect();
        assert_eq!(to, wanted, "{}: one digest per user, none lost, none twice", t.name);
        let unsent: i64 = sqlx::query("SELECT COUNT(*) FROM notifications WHERE state NOT IN ('sent', 'skipped')")
            .fetch_one(&db.pool)
            .await
            .expect("count")
            .try_get(0)
            .expect("n");
        assert_eq!(unsent, 0);
        eprintln!(
            "faults [smtp, {}]: {} digests; refused: run ended in {down_took:?} (1 failed, {} deferred); silent server: \
             the notify job ended in {silent_took:?} (timeout {SMTP_TIMEOUT:?}, 1 failed, the rest deferred); back: {} \
             sent, each once, none later",
            t.name, USERS, down.deferred, back.sent
        );
        t.cleanup().await;
    }
}

// ---- a network's API hanging or answering garbage ---------------------------------------

/// How the fake network API answers the request for page 2 (page 1 is always good).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Good,
    /// Accepts the request and never answers.
    Hangs,
    /// A maintenance page, 200, text/html.
    Html,
    /// JSON cut off in the middle.
    Truncated,
    /// `transactions` is an object, not a list.
    WrongTypes,
    /// 200 with an error object instead of a page.
    ErrorBody,
    /// A page of 1 MiB, over the 256 KiB cap the operator set.
    Huge,
}

/// A network's reporting API: two pages of two transactions (G1, G2; then G3, G4), page 2
/// answered as `mode` says. Counts requests.
async fn network_api(mode: Arc<Mutex<Api>>, calls: Arc<AtomicUsize>) -> String {
    use axum::response::IntoResponse;
    let app = axum::Router::new().route(
        "/v1/transactions",
        axum::routing::get(move |q: axum::extract::Query<BTreeMap<String, String>>| {
            let (mode, calls) = (mode.clone(), calls.clone());
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                let tx = |id: &str| {
                    json!({"id": id, "click_id": "c1", "status": "pending", "amount": "10.00", "commission": "1.00",
                           "currency": "EUR", "date": "2026-01-01T10:00:00Z"})
                };
                if q.get("cursor").is_none() {
                    return axum::Json(json!({"transactions": [tx("G1"), tx("G2")], "next_cursor": "p2"}))
                        .into_response();
                }
                let good = json!({"transactions": [tx("G3"), tx("G4")], "next_cursor": null});
                let mode = *mode.lock().expect("lock");
                match mode {
                    Api::Good => axum::Json(good).into_response(),
                    Api::Hangs => {
                        tokio::time::sleep(Duration::from_secs(3_600)).await;
                        axum::Json(good).into_response()
                    }
                    Api::Html => {
                        ([("content-type", "text/html")], "<html><body><h1>Down for maintenance</h1></body></html>")
                            .into_response()
                    }
                    Api::Truncated => {
                        let text = good.to_string();
                        ([("content-type", "application/json")], text[..text.len() / 2].to_string()).into_response()
                    }
                    Api::WrongTypes => {
                        axum::Json(json!({"transactions": {"G3": tx("G3")}, "next_cursor": null})).into_response()
                    }
                    Api::ErrorBody => {
                        axum::Json(json!({"error": {"code": 42, "message": "report not ready, try later"}}))
                            .into_response()
                    }
                    Api::Huge => {
                        let pad = "x".repeat(1 << 20);
                        axum::Json(json!({"transactions": [tx("G3"), tx("G4")], "next_cursor": null, "pad": pad}))
                            .into_response()
                    }
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}/v1", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

/// A runtime whose operator lowered json-api's HTTP timeout (manifest: 20 s) to 500 ms and
/// its response cap (16 MiB) to 256 KiB: the tests reach both limits quickly.
fn impatient_runtime() -> &'static Arc<cashbackd::plugin::PluginRuntime> {
    use cashbackd::plugin::{PluginRuntime, RuntimeConfig};
    static RUNTIME: std::sync::OnceLock<Arc<PluginRuntime>> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        let over = cashbackd::plugin::LimitsOverride {
            http_timeout_ms: Some(500),
            max_http_response_bytes: Some(256 << 10),
            ..Default::default()
        };
        let config = RuntimeConfig {
            overrides: [("json-api".to_string(), over)].into(),
            // The fake network listens on 127.0.0.1.
            http_allow_private: true,
            ..RuntimeConfig::new(shared_store())
        };
        Arc::new(PluginRuntime::new(config).expect("runtime"))
    })
}

/// `world`'s merchant, rule, user and click, on a service of the impatient runtime; and the
/// network `api-net` on json-api with an hourly import job.
async fn import_world(db: Db, base: &str) -> (cashbackd::conversions::Service, Arc<cashbackd::clock::ManualClock>) {
    use cashbackd::conversions::{NewClick, Service, ServiceConfig};
    let clock = cashbackd::clock::ManualClock::at(crate::ledger::T0);
    let service = Service::new(db, impatient_runtime().clone(), clock.clone(), ServiceConfig::default());
    let rule = cashbackd::registry::upload(&service, &plugin_bytes(WASIP2, "flat_rate"))
        .await
        .expect("rule")
        .plugin
        .digest
        .to_string();
    service.upsert_merchant("shop", "Shop", false, 30).await.expect("merchant");
    service.set_rules("shop", &[(rule, json!({"rate_bps": 1000}))]).await.expect("rules");
    service.register_user("u1", Some("u1@example.com")).await.expect("user");
    let click = NewClick {
        click_id: "c1".into(),
        user_id: "u1".into(),
        merchant_id: Some("shop".into()),
        network_id: Some("api-net".into()),
        ..Default::default()
    };
    service.register_click(click).await.expect("click");
    let adapter =
        cashbackd::registry::upload(&service, &plugin_bytes(WASIP2, "json_api")).await.expect("adapter").plugin;
    let network = cashbackd::ingest::Network {
        id: "api-net".into(),
        name: "API network".into(),
        adapter_digest: Some(adapter.digest.to_string()),
        adapter_config: json!({"base_url": base, "api_key": "k3y", "page_size": 2}),
        auth: cashbackd::ingest::InboundAuth::None,
    };
    cashbackd::ingest::upsert_network(service.db(), &network, service.now()).await.expect("network");
    let job = cashbackd::scheduler::JobKind::Import { network: "api-net".into() };
    cashbackd::scheduler::upsert_job(&service, "import-api-net", "@hourly", &job).await.expect("job");
    (service, clock)
}

/// Per transaction of `api-net`: (journal entries, postings) — each must be (1, 1).
async fn imported(service: &cashbackd::conversions::Service) -> BTreeMap<String, (i64, i64)> {
    let mut out = BTreeMap::new();
    for row in sqlx::query(
        "SELECT c.transaction_id, \
         (SELECT COUNT(*) FROM journal j WHERE j.kind = 'event' AND j.payload LIKE '%\"transaction_id\":\"' || c.transaction_id || '\"%'), \
         (SELECT COUNT(*) FROM ledger_transactions t WHERE t.conversion_id = c.id) \
         FROM conversions c WHERE c.network_id = 'api-net'",
    )
    .fetch_all(&service.db().pool)
    .await
    .expect("imported")
    {
        out.insert(row.try_get(0).expect("tx"), (row.try_get(1).expect("journal"), row.try_get(2).expect("postings")));
    }
    out
}

fn once_each(ids: &[&str]) -> BTreeMap<String, (i64, i64)> {
    ids.iter().map(|id| (id.to_string(), (1, 1))).collect()
}

async fn cursor(service: &cashbackd::conversions::Service) -> Option<String> {
    cashbackd::imports::import_state(service, "api-net").await.expect("state").and_then(|(_, _, c)| c)
}

/// Runs the import job now and returns its recorded run.
async fn run_import(scheduler: &cashbackd::scheduler::Scheduler) -> (cashbackd::scheduler::RunInfo, Duration) {
    let started = Instant::now();
    let run = scheduler.run_now("import-api-net").await.expect("run");
    (run, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_api_that_hangs_fails_the_run_naming_the_timeout_and_the_next_run_imports_everything_once() {
    for t in backends::all().await {
        let (mode, calls) = (Arc::new(Mutex::new(Api::Hangs)), Arc::new(AtomicUsize::new(0)));
        let base = network_api(mode.clone(), calls.clone()).await;
        let (service, clock) = import_world(t.db.clone(), &base).await;
        let retry = cashbackd::imports::Retry { attempts: 2, first_backoff: Duration::from_millis(10) };
        let scheduler =
            cashbackd::scheduler::Scheduler::new(service.clone(), impatient_runtime().clone(), "r1").with_retry(retry);

        let (run, took) = run_import(&scheduler).await;
        assert_eq!(run.outcome, "failed", "{}: {run:?}", t.name);
        let detail = run.detail.clone().unwrap_or_default();
        assert!(
            detail.contains("the page at cursor \"p2\"") && detail.contains("Timeout"),
            "{}: the reason names the timeout: {detail}",
            t.name
        );
        assert!(took < Duration::from_secs(10), "{}: bounded by the HTTP timeout and the retries: {took:?}", t.name);
        assert_eq!(calls.load(Ordering::SeqCst), 3, "page 1, then page 2 tried twice");
        assert_eq!(
            cursor(&service).await.as_deref(),
            Some("p2"),
            "{}: the cursor stays before the page that failed",
            t.name
        );
        assert_eq!(imported(&service).await, once_each(&["G1", "G2"]), "{}: page 1 is in, once", t.name);

        // The API answers again: the next run resumes at page 2; later runs re-read the
        // overlap and change nothing.
        *mode.lock().expect("lock") = Api::Good;
        clock.advance(3_600_000);
        let (next, _) = run_import(&scheduler).await;
        assert_eq!(next.outcome, "ok", "{}: {next:?}", t.name);
        assert_eq!(next.counts["tally"]["created"], 2, "{}: {next:?}", t.name);
        clock.advance(3_600_000);
        let (again, _) = run_import(&scheduler).await;
        assert_eq!(
            (again.counts["tally"]["created"].as_u64(), again.counts["tally"]["duplicates"].as_u64()),
            (Some(0), Some(4)),
            "{again:?}"
        );
        assert_eq!(imported(&service).await, once_each(&["G1", "G2", "G3", "G4"]), "{}", t.name);
        assert!(cashbackd::ledger::check_invariants(&service.db().pool).await.expect("invariants").is_empty());
        eprintln!(
            "faults [api hangs, {}]: the run failed after {took:?} (500 ms HTTP timeout, 2 tries) with \"{detail}\"; \
             cursor kept at page 2; the next run created the 2 missing, the one after found 4 duplicates",
            t.name
        );
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_a_network_api_fails_the_run_with_a_clear_reason_and_nothing_is_imported_twice() {
    let cases = [
        (Api::Html, "unparsable JSON"),
        (Api::Truncated, "unparsable JSON"),
        (Api::WrongTypes, "no `transactions` array"),
        (Api::ErrorBody, "no `transactions` array"),
        (Api::Huge, "TooLarge"),
    ];
    for t in backends::all().await {
        let (mode, calls) = (Arc::new(Mutex::new(Api::Good)), Arc::new(AtomicUsize::new(0)));
        let base = network_api(mode.clone(), calls.clone()).await;
        let (service, clock) = import_world(t.db.clone(), &base).await;
        let retry = cashbackd::imports::Retry { attempts: 2, first_backoff: Duration::from_millis(10) };
        let scheduler =
            cashbackd::scheduler::Scheduler::new(service.clone(), impatient_runtime().clone(), "r1").with_retry(retry);
        let mut reasons = Vec::new();
        for (garbage, reason) in cases {
            *mode.lock().expect("lock") = garbage;
            clock.advance(3_600_000);
            let (run, _) = run_import(&scheduler).await;
            let detail = run.detail.clone().unwrap_or_default();
            assert_eq!(run.outcome, "failed", "{} {garbage:?}: {run:?}", t.name);
            assert!(
                detail.contains("the page at cursor \"p2\"") && detail.contains(reason),
                "{} {garbage:?}: {detail}",
                t.name
            );
            assert!(
                detail.len() < 1_000,
                "{} {garbage:?}: the reason is an excerpt, not the body: {} bytes",
                t.name,
                detail.len()
            );
            assert_eq!(cursor(&service).await.as_deref(), Some("p2"), "{} {garbage:?}", t.name);
            assert_eq!(imported(&service).await, once_each(&["G1", "G2"]), "{} {garbage:?}", t.name);
            reasons.push(format!("{garbage:?}: {detail}"));
        }
        *mode.lock().expect("lock") = Api::Good;
        clock.advance(3_600_000);
        let (good, _) = run_import(&scheduler).await;
        assert_eq!(
            (good.outcome.as_str(), good.counts["tally"]["created"].as_u64()),
            ("ok", Some(2)),
            "{}: {good:?}",
            t.name
        );
        assert_eq!(imported(&service).await, once_each(&["G1", "G2", "G3", "G4"]), "{}", t.name);
        assert!(cashbackd::ledger::check_invariants(&service.db().pool).await.expect("invariants").is_empty());
        eprintln!(
            "faults [api garbage, {}]: {} garbage answers to page 2, each a failed run with its reason, cursor kept, page 1 \
             imported once; then a good run created the 2 missing. Reasons:\n    {}",
            t.name,
            cases.len(),
            reasons.join("\n    ")
        );
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_failure_while_an_imported_page_is_recorded_fails_the_run_and_the_page_is_read_again() {
    for t in backends::all().await {
        let (mode, calls) = (Arc::new(Mutex::new(Api::Good)), Arc::new(AtomicUsize::new(0)));
        let base = network_api(mode, calls).await;
        let (service, clock) = import_world(t.db.clone(), &base).await;
        let scheduler = cashbackd::scheduler::Scheduler::new(service.clone(), impatient_runtime().clone(), "r1");
        // The database refuses the write of G3 (page 2) only: a fault on the write path that
        // leaves the rest of the database working, as a failing disk region or a killed
        // session would.
        let pool = &service.db().pool;
        let inject = match t.db.backend {
            cashbackd::db::Backend::Sqlite => vec![
                "CREATE TRIGGER fault_g3 BEFORE INSERT ON journal WHEN NEW.payload LIKE '%\"transaction_id\":\"G3\"%' \
                 BEGIN SELECT RAISE(ABORT, 'injected fault: the write failed'); END",
            ],
            cashbackd::db::Backend::Postgres => vec![
                "CREATE FUNCTION fault_g3() RETURNS trigger AS $$ BEGIN \
                 IF NEW.payload LIKE '%\"transaction_id\":\"G3\"%' THEN RAISE EXCEPTION 'injected fault: the write failed'; \
                 END IF; RETURN NEW; END $$ LANGUAGE plpgsql",
                "CREATE TRIGGER fault_g3 BEFORE INSERT ON journal FOR EACH ROW EXECUTE FUNCTION fault_g3()",
            ],
        };
        for sql in inject {
            sqlx::query(sql).execute(pool).await.expect("inject the fault");
        }
        let (run, _) = run_import(&scheduler).await;
        let detail = run.detail.clone().unwrap_or_default();
        assert_eq!(run.outcome, "failed", "{}: {run:?}", t.name);
        assert!(
            detail.contains("the page at cursor \"p2\"")
                && detail.contains("1 events not recorded")
                && detail.contains("injected fault"),
            "{}: {detail}",
            t.name
        );
        assert_eq!(cursor(&service).await.as_deref(), Some("p2"), "{}: the cursor stays before the page", t.name);
        assert_eq!(imported(&service).await, once_each(&["G1", "G2", "G4"]), "{}", t.name);

        // The fault is gone: the next run reads page 2 again; G4 is a duplicate, G3 arrives.
        let remove = match t.db.backend {
            cashbackd::db::Backend::Sqlite => "DROP TRIGGER fault_g3",
            cashbackd::db::Backend::Postgres => "DROP TRIGGER fault_g3 ON journal",
        };
        sqlx::query(remove).execute(pool).await.expect("remove the fault");
        clock.advance(3_600_000);
        let (next, _) = run_import(&scheduler).await;
        assert_eq!(next.outcome, "ok", "{}: {next:?}", t.name);
        let tally = &next.counts["tally"];
        assert_eq!(
            (tally["created"].as_u64(), tally["duplicates"].as_u64()),
            (Some(1), Some(1)),
            "{}: {next:?}",
            t.name
        );
        assert_eq!(imported(&service).await, once_each(&["G1", "G2", "G3", "G4"]), "{}", t.name);
        assert!(cashbackd::ledger::check_invariants(pool).await.expect("invariants").is_empty());
        eprintln!(
            "faults [import, database refuses a write, {}]: the run failed with \"{detail}\"; cursor kept; the next run \
             read the page again: G3 created, G4 a duplicate",
            t.name
        );
        t.cleanup().await;
    }
}

/// One poll of `f`, with a waker that wakes no one: the test drives it by hand.
fn poll_once<F: std::future::Future + Unpin>(f: &mut F) -> std::task::Poll<F::Output> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    std::pin::Pin::new(f).poll(&mut cx)
}

/// sqlx 0.8.6's `Pool::begin` is not safe to cancel on PostgreSQL (transact-rs/sqlx issue
/// 4393): a caller dropped after the server ran `BEGIN` and before sqlx read its answer
/// gives the connection back to the pool inside a transaction nothing ends, and the next
/// borrower's writes stay uncommitted in it (the callbacks benchmark lost an endpoint's
/// deliveries that way). `db::begin` finishes the `BEGIN` in a task of its own. The test
/// catches the window for certain: it polls the begin by hand, one step at a time, and
/// drops it once the server shows the pool's one connection `idle in transaction` and
/// before the answer is read. Then a write through the pool must be visible at once from
/// another connection, and the pool's connection must not stay in a transaction. (With
/// `pool.begin()` in place of `db::begin`, the first round fails: the write is not seen.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_begun_by_a_caller_dropped_mid_begin_leaves_no_open_transaction_in_the_pool() {
    use sqlx::Connection as _;
    let Some(t) = backends::postgres().await else { return };
    let url = t.url().to_string();
    let pool = t.db.dedicated(1).pool;
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&pool).await.expect("pid");
    let state = || async {
        let mut admin = sqlx::AnyConnection::connect(&url).await.expect("admin");
        let s: Option<String> = sqlx::query_scalar("SELECT state FROM pg_stat_activity WHERE pid = $1")
            .bind(pid)
            .fetch_optional(&mut admin)
            .await
            .expect("state");
        s.unwrap_or_default()
    };
    let mut caught = 0;
    for round in 0..20 {
        let mut begin = Box::pin(cashbackd::db::begin(&pool));
        let mut cancelled = false;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if poll_once(&mut begin).is_ready() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
            if state().await == "idle in transaction" {
                drop(begin);
                cancelled = true;
                break;
            }
        }
        if !cancelled {
            continue;
        }
        caught += 1;
        // What the next borrower writes, on its own (autocommit), is committed at once.
        let key = format!("cancelled-begin-{round}");
        sqlx::query("INSERT INTO alerts (at, kind, subject, message) VALUES (0, 'test', $1, 'x')")
            .bind(&key)
            .execute(&pool)
            .await
            .expect("insert");
        let mut other = sqlx::AnyConnection::connect(&url).await.expect("other connection");
        let seen: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM alerts WHERE subject = $1")
            .bind(&key)
            .fetch_one(&mut other)
            .await
            .expect("count");
        assert_eq!(seen, 1, "round {round}: a write after a cancelled BEGIN is not committed (open transaction)");
        let s = state().await;
        assert_ne!(s, "idle in transaction", "round {round}: the pool's connection stayed in a transaction");
    }
    println!("faults [cancelled begin]: {caught} of 20 begins dropped mid-BEGIN; no transaction left open");
    assert!(caught >= 10, "the test caught the BEGIN in flight only {caught} times of 20");
    pool.close().await;
    t.cleanup().await;
}
