//! Group commit. Every write goes through one writer task per process, which takes all
//! the commands waiting at that moment (up to `max_batch`) and applies them as one batch
//! in one database transaction (`conversions::store::apply_batch`: prefetch, decide in
//! memory, write): a refused command contributes nothing and does not fail its
//! neighbours. Each caller is answered only after the transaction commits, so an
//! acknowledged write is durable (SQLite runs with `synchronous=FULL`), and one fsync
//! serves the whole batch: throughput grows with load instead of being capped by disk
//! flushes per write.

use crate::clock::Clock;
use crate::conversions::{ApplyError, Command, Outcome};
use crate::db::Db;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

struct Job {
    command: Command,
    expected_version: Option<i64>,
    reply: oneshot::Sender<Result<Outcome, ApplyError>>,
    /// When it was submitted: its wait for a batch is in the metrics.
    queued: std::time::Instant,
}

/// Settings of the writer.
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    /// Most commands per transaction; 1 disables group commit (one commit per write).
    pub max_batch: usize,
    /// Commands that may wait in the queue before callers are slowed down.
    pub queue: usize,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig { max_batch: 256, queue: 4096 }
    }
}

/// A handle to the writer task. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").finish_non_exhaustive()
    }
}

impl Writer {
    /// Starts the writer on a thread of its own, with a connection of its own to `db`'s
    /// database (`Db::dedicated`), opened there.
    ///
    /// Why a thread: a batch is about fifteen round trips to the database, each an
    /// `await` after which the writer must be scheduled again. On the server's runtime it
    /// was queued behind every request's task (64 clients' postbacks, each with plugin
    /// calls): on 2 cores each round trip took a millisecond or more of waiting, and a
    /// batch of 32 postbacks spent most of its 28 ms that way (BEGIN alone 4 ms,
    /// `docs/PERFORMANCE.md`). On its own current-thread runtime the writer is the only
    /// task, and the OS scheduler wakes it as soon as its answer is in.
    pub fn spawn(db: Db, clock: Arc<dyn Clock>, config: WriterConfig) -> Writer {
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let max_batch = config.max_batch.max(1);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
        match runtime {
            Ok(runtime) => {
                let started = std::thread::Builder::new().name("cashbackd-writer".into()).spawn(move || {
                    // The pool is made here so that its connections (and sqlx's upkeep of
                    // them) belong to this runtime.
                    runtime.block_on(async move { run(db.dedicated(1), clock, max_batch, rx).await });
                });
                if let Err(e) = started {
                    // Without a thread there is no writer: every submit answers `Stopped`.
                    tracing::error!(error = %e, "cannot start the writer thread");
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot build the writer's runtime"),
        }
        Writer { tx }
    }

    /// Applies a command; returns once it is committed (or refused).
    pub async fn submit(&self, command: Command, expected_version: Option<i64>) -> Result<Outcome, ApplyError> {
        let (reply, answer) = oneshot::channel();
        let queued = std::time::Instant::now();
        self.tx.send(Job { command, expected_version, reply, queued }).await.map_err(|_| ApplyError::Stopped)?;
        answer.await.map_err(|_| ApplyError::Stopped)?
    }
}

async fn run(db: Db, clock: Arc<dyn Clock>, max_batch: usize, mut rx: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(max_batch);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        for job in &batch {
            crate::metrics::write_queued(job.queued.elapsed());
        }
        match apply_batch(&db, clock.as_ref(), &batch).await {
            Ok(results) => {
                for (job, result) in batch.drain(..).zip(results) {
                    let _ = job.reply.send(result);
                }
            }
            Err(e) if batch.len() > 1 && refused_by_database(&e) => {
                // The database answered a statement of the batch with an error (a
                // constraint, a trigger, a value it cannot store): the transaction is
                // rolled back and nothing of it was committed. One command it refuses must
                // not fail its neighbours, so each is applied again on its own, and only
                // the refused one is answered with the error. (Which commands share a batch
                // is a matter of timing; a file import's page would otherwise lose every
                // event that happened to be batched with the one refused.)
                tracing::warn!(error = %e, jobs = batch.len(), "write batch refused by the database; applying its commands one by one");
                for job in batch.drain(..) {
                    let result = match apply_batch(&db, clock.as_ref(), std::slice::from_ref(&job)).await {
                        Ok(mut results) => results.pop().unwrap_or(Err(ApplyError::Conflict)),
                        Err(e) => Err(ApplyError::Db(unacknowledged(&e))),
                    };
                    let _ = job.reply.send(result);
                }
            }
            Err(e) => {
                // No write of the batch is acknowledged: every caller hears so, and may
                // retry. Nothing of it was committed, except when the connection broke
                // during COMMIT (PostgreSQL restarted, say): then the server may have
                // committed it: a retried network event or adjustment is then recognised
                // as a duplicate, never applied twice. A connection left inside a
                // transaction is not reused (see `Db::connect`).
                tracing::error!(error = %e, jobs = batch.len(), "write batch failed; none of its writes is acknowledged");
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(ApplyError::Db(unacknowledged(&e))));
                }
            }
        }
    }
}

/// Whether the database server answered with an error (as opposed to a broken connection
/// or a timeout): then the transaction did not commit, whatever statement failed.
fn refused_by_database(e: &ApplyError) -> bool {
    matches!(
        e,
        ApplyError::Db(sqlx::Error::Database(_))
            | ApplyError::Ledger(crate::ledger::LedgerError::Db(sqlx::Error::Database(_)))
    )
}

/// The error each caller of a failed batch gets: the batch's database error with its code
/// and kind (`db::fault::duplicate`), so that callers match it by kind, never by text.
fn unacknowledged(e: &ApplyError) -> sqlx::Error {
    match e {
        ApplyError::Db(db) | ApplyError::Ledger(crate::ledger::LedgerError::Db(db)) => crate::db::fault::duplicate(db),
        other => sqlx::Error::Protocol(format!("batch not acknowledged: {other}")),
    }
}

async fn apply_batch(
    db: &Db,
    clock: &dyn Clock,
    batch: &[Job],
) -> Result<Vec<Result<Outcome, ApplyError>>, ApplyError> {
    let jobs: Vec<(&Command, Option<i64>)> = batch.iter().map(|j| (&j.command, j.expected_version)).collect();
    crate::conversions::store::apply_batch(db, clock, &jobs).await
}
