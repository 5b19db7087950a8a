//! Several writes as one round trip.
//!
//! On PostgreSQL, writes that touch disjoint rows are sent as ONE statement, each a
//! data-modifying `WITH` of it: they run on one snapshot, all or none, and cost one round
//! trip instead of one each (and, alone, no `BEGIN` and `COMMIT` either: a statement is a
//! transaction). On a machine whose cores the database shares with the process, every
//! round trip waits for a core to be scheduled; the delivery worker's steps spent about
//! half their time in those waits (docs/PERFORMANCE.md, issue 15). On SQLite, which runs
//! no data-modifying `WITH`, they are run one after the other: each is a call in this
//! process, not a round trip.
//!
//! Each write is written with its own parameters `$1`, `$2`...; they are renumbered when
//! the writes are put together. The writes must not touch the same row (a row is updated
//! once per statement on PostgreSQL: a second update of it would be dropped), nor read
//! what another of them writes (all see the snapshot from before the statement).

use super::Backend;
use sqlx::AnyConnection;

/// A parameter of a write.
#[derive(Debug, Clone)]
pub enum Arg {
    /// A BIGINT.
    Int(i64),
    /// A TEXT (JSON rows and ids are bound as text too).
    Text(String),
}

/// One write: an `INSERT`, `UPDATE` or `DELETE` without `RETURNING`, with its parameters.
#[derive(Debug, Clone)]
pub struct Write {
    sql: String,
    args: Vec<Arg>,
}

impl Write {
    /// A write whose text numbers its parameters from `$1`, in the order of `args`.
    pub fn new(sql: impl Into<String>, args: Vec<Arg>) -> Write {
        Write { sql: sql.into(), args }
    }
}

/// Runs the writes, in order, on `conn` (a transaction, or a connection: on PostgreSQL one
/// statement, which is a transaction of its own). Nothing to write, no statement.
pub async fn run(conn: &mut AnyConnection, backend: Backend, writes: &[Write]) -> Result<(), sqlx::Error> {
    match (backend, writes) {
        (_, []) => Ok(()),
        (Backend::Sqlite, _) | (Backend::Postgres, [_]) => {
            for w in writes {
                bind(sqlx::query(&w.sql), &w.args).execute(&mut *conn).await?;
            }
            Ok(())
        }
        (Backend::Postgres, _) => {
            let sql = together(writes);
            let args: Vec<Arg> = writes.iter().flat_map(|w| w.args.iter().cloned()).collect();
            bind(sqlx::query(&sql), &args).execute(&mut *conn).await?;
            Ok(())
        }
    }
}

fn bind<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    args: &'q [Arg],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    for a in args {
        q = match a {
            Arg::Int(i) => q.bind(*i),
            Arg::Text(t) => q.bind(t.as_str()),
        };
    }
    q
}

/// The writes as one PostgreSQL statement: `WITH w0 AS (...), w1 AS (...) SELECT 1`, the
/// parameters of each shifted past those of the writes before it.
fn together(writes: &[Write]) -> String {
    let mut parts = Vec::with_capacity(writes.len());
    let mut offset = 0;
    for (i, w) in writes.iter().enumerate() {
        parts.push(format!("w{i} AS ({})", shift_params(&w.sql, offset)));
        offset += w.args.len();
    }
    format!("WITH {} SELECT 1", parts.join(", "))
}

/// `sql` with every parameter `$N` made `$(N + by)`. A `$` not followed by a digit (in a
/// JSON path, say) is left as it is; the writes carry no string literal with `$` and a
/// digit.
fn shift_params(sql: &str, by: usize) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        out.push(c);
        if c != '$' {
            continue;
        }
        let mut n = String::new();
        while let Some(&(_, d)) = chars.peek().filter(|(_, d)| d.is_ascii_digit()) {
            n.push(d);
            chars.next();
        }
        match n.parse::<usize>() {
            Ok(n) => out.push_str(&(n + by).to_string()),
            Err(_) => out.push_str(&n),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_shifted_past_the_writes_before() {
        assert_eq!(
            shift_params("a = $1 AND b = $12 AND c = '$[0]' AND d = $", 3),
            "a = $4 AND b = $15 AND c = '$[0]' AND d = $"
        );
        let writes = [
            Write::new("UPDATE t SET a = $1 WHERE id = $2", vec![Arg::Int(1), Arg::Int(2)]),
            Write::new("INSERT INTO u (x) VALUES ($1)", vec![Arg::Text("x".into())]),
        ];
        assert_eq!(
            together(&writes),
            "WITH w0 AS (UPDATE t SET a = $1 WHERE id = $2), w1 AS (INSERT INTO u (x) VALUES ($3)) SELECT 1"
        );
    }
}
