//! Crash safety of the write path. The load binary (`cashbackd-load`) writes manual
//! adjustments through the group-commit writer and logs every acknowledged key; the test
//! kills it with SIGKILL at a random moment, then checks the database: every acknowledged
//! write is there exactly once with both of its entries, nothing is doubled, the journal
//! and the ledger agree, and the ledger's invariants hold. The next cycle restarts the
//! load on the same database, so every cycle also proves that it starts after a crash.
//!
//! `CASHBACKD_CRASH_CYCLES` sets the number of kill cycles per backend (default 5);
//! `CASHBACKD_CRASH_SEED` replays the kill times of a run (the seed is printed).
//!
//! What this proves: no acknowledged write is lost when the *process* dies. It does not
//! cut the power: that is what `synchronous=FULL` (SQLite) and `fsync` (PostgreSQL) are
//! for, and a process kill cannot test them.

use crate::backends::{self, TestDb};
use cashbackd::db::Backend;
use cashbackd::ledger;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use sqlx::Row;
use std::collections::{HashMap, HashSet};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LOAD: &str = env!("CARGO_BIN_EXE_cashbackd-load");

/// What one backend's run verified.
#[derive(Debug, Default)]
struct Totals {
    cycles: usize,
    acknowledged: usize,
    committed: usize,
    cycles_without_acks: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_during_writes_loses_no_acknowledged_write_and_doubles_nothing() {
    let cycles: usize = std::env::var("CASHBACKD_CRASH_CYCLES")
        .ok()
        .map(|v| v.parse().expect("CASHBACKD_CRASH_CYCLES: a number"))
        .unwrap_or(5);
    let seed: u64 = std::env::var("CASHBACKD_CRASH_SEED")
        .ok()
        .map(|v| v.parse().expect("CASHBACKD_CRASH_SEED: a number"))
        .unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
        });
    eprintln!("crash test: {cycles} kill cycles per backend, CASHBACKD_CRASH_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    for db in backends::all().await {
        let started = Instant::now();
        let totals = kill_cycles(&db, cycles, &mut rng).await;
        eprintln!(
            "crash test [{}]: {} kill cycles + 1 clean restart, {} acknowledged writes verified \
             ({} committed in all; {} cycles were killed before their first acknowledgement) in {:.1} s",
            db.name,
            totals.cycles,
            totals.acknowledged,
            totals.committed,
            totals.cycles_without_acks,
            started.elapsed().as_secs_f64()
        );
        assert!(
            totals.acknowledged > 0,
            "[{}] no write was acknowledged in any cycle: the test proved nothing",
            db.name
        );
        db.cleanup().await;
    }
}

async fn kill_cycles(db: &TestDb, cycles: usize, rng: &mut StdRng) -> Totals {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut acked = HashSet::new();
    let mut totals = Totals::default();
    for cycle in 0..cycles {
        // Group commit most of the time (what runs in production), one commit per write
        // every third cycle.
        let max_batch = if cycle % 3 == 2 { "1" } else { "256" };
        let log = dir.path().join(format!("acks-{cycle}.log"));
        let mut child = start(db, dir.path(), cycle, &log, &["--seconds", "120", "--max-batch", max_batch]);
        let delay = rng.random_range(100..=700);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!(
                "[{}] cycle {cycle}: the load exited by itself ({status}) before the kill:\n{}",
                db.name,
                stderr_of(dir.path(), cycle)
            );
        }
        child.kill().expect("SIGKILL the load");
        let status = child.wait().expect("wait for the killed load");
        assert_eq!(status.signal(), Some(9), "[{}] cycle {cycle}: not killed by SIGKILL: {status}", db.name);
        let keys = read_acks(&log);
        let acked_now = keys.len();
        if keys.is_empty() {
            totals.cycles_without_acks += 1;
        }
        for key in keys {
            assert!(acked.insert(key.clone()), "[{}] cycle {cycle}: {key} was acknowledged twice", db.name);
        }
        totals.committed = verify(db, &acked, &format!("after kill {cycle} ({delay} ms)")).await;
        totals.cycles += 1;
        eprintln!(
            "  [{}] cycle {cycle}: max-batch {max_batch}, SIGKILL after {delay} ms, {acked_now} acknowledged; \
             so far {} acknowledged, {} committed (the rest committed without an answer)",
            db.name,
            acked.len(),
            totals.committed
        );
    }

    // The last restart runs to completion: the load starts on the crashed database and
    // every one of its writes is acknowledged and stored.
    let cycle = cycles;
    let log = dir.path().join(format!("acks-{cycle}.log"));
    let mut child = start(db, dir.path(), cycle, &log, &["--writes", "300"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("[{}] the clean run did not finish within 60 s", db.name);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        status.success(),
        "[{}] the clean run after {cycles} crashes failed ({status}):\n{}",
        db.name,
        stderr_of(dir.path(), cycle)
    );
    let report: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(dir.path().join(format!("stdout-{cycle}.log")))
            .expect("stdout of the clean run")
            .trim(),
    )
    .expect("the load prints one JSON line");
    let keys = read_acks(&log);
    assert_eq!(report["writes"], 300, "[{}] {report}", db.name);
    assert_eq!(keys.len(), 300, "[{}] ack log of the clean run", db.name);
    for key in keys {
        assert!(acked.insert(key.clone()), "{key} was acknowledged twice");
    }
    totals.committed = verify(db, &acked, "after the clean run").await;
    totals.acknowledged = acked.len();
    totals
}

/// Starts the load binary on `db` with keys prefixed by the cycle.
fn start(db: &TestDb, dir: &Path, cycle: usize, ack_log: &Path, extra: &[&str]) -> Child {
    let stdout = std::fs::File::create(dir.join(format!("stdout-{cycle}.log"))).expect("stdout");
    let stderr = std::fs::File::create(dir.join(format!("stderr-{cycle}.log"))).expect("stderr");
    Command::new(LOAD)
        .args(["--database-url", db.url(), "--concurrency", "64"])
        .arg("--prefix")
        .arg(format!("c{cycle}"))
        .arg("--ack-log")
        .arg(ack_log)
        .args(extra)
        .env("CASHBACKD_PLUGIN_STORE", dir.join("plugins"))
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .expect("start cashbackd-load")
}

fn stderr_of(dir: &Path, cycle: usize) -> String {
    std::fs::read_to_string(dir.join(format!("stderr-{cycle}.log"))).unwrap_or_default()
}

/// The acknowledged keys: whole lines only (a kill may, in principle, cut the last one).
fn read_acks(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let whole = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    whole.lines().filter(|l| !l.is_empty()).map(str::to_string).collect()
}

/// Checks the database against the acknowledged keys; returns the number of committed
/// adjustments (acknowledged or not: the kill may land between commit and answer).
///
/// The checks read one snapshot: on PostgreSQL the server may still finish a dead client's
/// COMMIT after the client is gone (an unacknowledged write that lands late, which is
/// allowed), and reads spread over several snapshots would see half of such a change.
async fn verify(db: &TestDb, acked: &HashSet<String>, when: &str) -> usize {
    let name = db.name;
    let mut snapshot = db.db.pool.begin().await.expect("begin");
    if db.db.backend == Backend::Postgres {
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .execute(&mut *snapshot)
            .await
            .expect("repeatable read");
    }
    let rows = sqlx::query(
        "SELECT t.idempotency_key, t.journal_seq, COUNT(e.id) FROM ledger_transactions t \
         LEFT JOIN ledger_entries e ON e.transaction_id = t.id \
         GROUP BY t.id, t.idempotency_key, t.journal_seq",
    )
    .fetch_all(&mut *snapshot)
    .await
    .expect("ledger transactions");
    let journaled: HashSet<i64> = sqlx::query("SELECT seq FROM journal WHERE kind = 'adjustment'")
        .fetch_all(&mut *snapshot)
        .await
        .expect("journal")
        .iter()
        .map(|r| r.try_get(0).expect("seq"))
        .collect();
    let mut stored: HashMap<String, Vec<i64>> = HashMap::with_capacity(rows.len());
    let mut posted_seqs = HashSet::with_capacity(rows.len());
    for row in &rows {
        let key: String = row.try_get(0).expect("key");
        let seq: Option<i64> = row.try_get(1).expect("journal seq");
        let entries: i64 = row.try_get(2).expect("entries");
        if key.starts_with("adjustment:") {
            posted_seqs.extend(seq);
        }
        stored.entry(key).or_default().push(entries);
    }
    let mut problems = Vec::new();
    for (key, entries) in &stored {
        if entries.len() != 1 {
            problems.push(format!("{key} is stored {} times", entries.len()));
        }
        for n in entries.iter().filter(|n| **n != 2) {
            problems.push(format!("{key} has {n} entries, not 2"));
        }
    }
    let mut missing = 0;
    for key in acked {
        if !stored.contains_key(&format!("adjustment:{key}")) {
            missing += 1;
            if missing <= 10 {
                problems.push(format!("acknowledged {key} is missing"));
            }
        }
    }
    if missing > 10 {
        problems.push(format!("... {missing} acknowledged writes missing in all"));
    }
    let committed = stored.keys().filter(|k| k.starts_with("adjustment:")).count();
    // The journal and the ledger are written in one transaction: neither without the other.
    for seq in journaled.difference(&posted_seqs) {
        problems.push(format!("journal seq {seq}: an adjustment journaled without its posting"));
    }
    for seq in posted_seqs.difference(&journaled) {
        problems.push(format!("journal seq {seq}: an adjustment posted without its journal entry"));
    }
    if posted_seqs.len() != committed {
        problems.push(format!("{committed} adjustments posted from {} journal entries", posted_seqs.len()));
    }
    snapshot.rollback().await.expect("end the snapshot");
    // Each invariant is one statement over committed data: any later snapshot will do.
    problems.extend(ledger::check_invariants(&db.db.pool).await.expect("check invariants"));
    assert!(
        problems.is_empty(),
        "[{name}] {when}: {} acknowledged, {committed} committed:\n{}",
        acked.len(),
        problems.join("\n")
    );
    committed
}
