//! What kind of failure a database error is, read from its type and its code (SQLSTATE on
//! PostgreSQL, the extended result code on SQLite), never from its text: messages change
//! with versions and locales, codes do not.
//!
//! The group-commit writer answers every caller of a failed batch with the batch's error.
//! `sqlx::Error` cannot be cloned, so [`duplicate`] rebuilds an equal one, with the same
//! code and kind, for each caller: a caller matches it exactly as it would the original.

use sqlx::error::{DatabaseError, ErrorKind};
use std::borrow::Cow;

/// The kinds of database failure that callers treat differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The database's disk is full: a retry alone will not cure it, the operator must act
    /// (SQLite `SQLITE_FULL`, PostgreSQL `53100 disk_full`, an I/O error `StorageFull`).
    DiskFull,
    /// A unique key was violated (SQLite `SQLITE_CONSTRAINT_UNIQUE` / `PRIMARYKEY`,
    /// PostgreSQL `23505`).
    UniqueViolation,
    /// Another transaction won: deciding again from fresh state will do (PostgreSQL
    /// `40001` serialization failure, `40P01` deadlock; SQLite `SQLITE_BUSY`,
    /// `SQLITE_LOCKED` and their extended codes).
    Conflict,
    /// The database could not be reached or the connection broke (I/O, TLS, the pool timed
    /// out or closed, a worker crashed): a retry later may succeed.
    Unavailable,
    /// Anything else.
    Other,
}

/// SQLite's primary result codes that matter here (the low byte of an extended code).
const SQLITE_BUSY: i64 = 5;
const SQLITE_LOCKED: i64 = 6;
const SQLITE_FULL: i64 = 13;

impl Fault {
    /// The kind of `error`.
    pub fn of(error: &sqlx::Error) -> Fault {
        match error {
            sqlx::Error::Database(d) => Fault::of_database(d.as_ref()),
            sqlx::Error::Io(e) if e.kind() == std::io::ErrorKind::StorageFull => Fault::DiskFull,
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => Fault::Unavailable,
            _ => Fault::Other,
        }
    }

    fn of_database(d: &dyn DatabaseError) -> Fault {
        if d.kind() == ErrorKind::UniqueViolation {
            return Fault::UniqueViolation;
        }
        let Some(code) = d.code() else { return Fault::Other };
        // PostgreSQL's codes are five-character SQLSTATEs (often all digits: 53100);
        // SQLite's are numbers below 10000 (extended: the primary code in the low byte).
        if let (true, Ok(n)) = (code.len() < 5, code.parse::<i64>()) {
            return match n & 0xff {
                SQLITE_FULL => Fault::DiskFull,
                SQLITE_BUSY | SQLITE_LOCKED => Fault::Conflict,
                _ => Fault::Other,
            };
        }
        match code.as_ref() {
            "53100" => Fault::DiskFull,
            "23505" => Fault::UniqueViolation,
            "40001" | "40P01" => Fault::Conflict,
            // Class 08: connection exceptions; 57P01..03: the server is shutting down.
            c if c.starts_with("08") || matches!(c, "57P01" | "57P02" | "57P03") => Fault::Unavailable,
            _ => Fault::Other,
        }
    }

    /// The first database error in `error`'s chain of sources, by kind: what an HTTP
    /// handler or a command shows for it. None when no database error is in the chain.
    pub fn in_chain(error: &(dyn std::error::Error + 'static)) -> Option<Fault> {
        let mut next = Some(error);
        while let Some(e) = next {
            if let Some(db) = e.downcast_ref::<sqlx::Error>() {
                return Some(Fault::of(db));
            }
            // A wrapper marked `#[error(transparent)]` hands on its inner error's source,
            // skipping the `sqlx::Error` itself: the drivers' own errors are read too.
            if let Some(d) = e.downcast_ref::<sqlx::sqlite::SqliteError>() {
                return Some(Fault::of_database(d));
            }
            if let Some(d) = e.downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                return Some(Fault::of_database(d));
            }
            if let Some(d) = e.downcast_ref::<Replayed>() {
                return Some(Fault::of_database(d));
            }
            next = e.source();
        }
        None
    }

    /// What the operator must do, for a fault that a retry alone will not cure.
    pub fn operator_action(self) -> Option<&'static str> {
        match self {
            Fault::DiskFull => Some("the database's disk is full"),
            _ => None,
        }
    }
}

/// An error equal to `error` (same code, kind and message), for the second and later
/// callers of a failed write batch; its message says the batch was not acknowledged.
pub fn duplicate(error: &sqlx::Error) -> sqlx::Error {
    let message = format!("batch not acknowledged: {error}");
    match error {
        sqlx::Error::Database(d) => sqlx::Error::Database(Box::new(Replayed {
            message,
            code: d.code().map(Cow::into_owned),
            kind: copy_kind(&d.kind()),
        })),
        sqlx::Error::Io(e) => sqlx::Error::Io(std::io::Error::new(e.kind(), message)),
        sqlx::Error::PoolTimedOut => sqlx::Error::PoolTimedOut,
        sqlx::Error::PoolClosed => sqlx::Error::PoolClosed,
        sqlx::Error::WorkerCrashed => sqlx::Error::WorkerCrashed,
        _ => sqlx::Error::Protocol(message),
    }
}

fn copy_kind(kind: &ErrorKind) -> ErrorKind {
    match kind {
        ErrorKind::UniqueViolation => ErrorKind::UniqueViolation,
        ErrorKind::ForeignKeyViolation => ErrorKind::ForeignKeyViolation,
        ErrorKind::NotNullViolation => ErrorKind::NotNullViolation,
        ErrorKind::CheckViolation => ErrorKind::CheckViolation,
        _ => ErrorKind::Other,
    }
}

/// A database error handed on by [`duplicate`]: the original's code, kind and message.
#[derive(Debug)]
struct Replayed {
    message: String,
    code: Option<String>,
    kind: ErrorKind,
}

impl std::fmt::Display for Replayed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Replayed {}

impl DatabaseError for Replayed {
    fn message(&self) -> &str {
        &self.message
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        self.code.as_deref().map(Cow::Borrowed)
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> ErrorKind {
        copy_kind(&self.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database(code: &str, kind: ErrorKind) -> sqlx::Error {
        sqlx::Error::Database(Box::new(Replayed { message: "m".into(), code: Some(code.into()), kind }))
    }

    #[test]
    fn faults_are_read_from_codes_on_both_backends() {
        assert_eq!(Fault::of(&database("13", ErrorKind::Other)), Fault::DiskFull, "SQLITE_FULL");
        assert_eq!(Fault::of(&database("53100", ErrorKind::Other)), Fault::DiskFull, "disk_full");
        assert_eq!(Fault::of(&database("2067", ErrorKind::UniqueViolation)), Fault::UniqueViolation);
        assert_eq!(Fault::of(&database("23505", ErrorKind::Other)), Fault::UniqueViolation);
        assert_eq!(Fault::of(&database("517", ErrorKind::Other)), Fault::Conflict, "SQLITE_BUSY_SNAPSHOT");
        assert_eq!(Fault::of(&database("40P01", ErrorKind::Other)), Fault::Conflict, "deadlock");
        assert_eq!(Fault::of(&database("57P01", ErrorKind::Other)), Fault::Unavailable, "admin shutdown");
        assert_eq!(Fault::of(&database("1", ErrorKind::Other)), Fault::Other);
        assert_eq!(Fault::of(&sqlx::Error::PoolTimedOut), Fault::Unavailable);
        let full = std::io::Error::new(std::io::ErrorKind::StorageFull, "ENOSPC");
        assert_eq!(Fault::of(&sqlx::Error::Io(full)), Fault::DiskFull);
        // The text alone says nothing: a message that reads like a full disk is not one.
        assert_eq!(Fault::of(&sqlx::Error::Protocol("database or disk is full".into())), Fault::Other);
    }

    #[test]
    fn a_duplicate_keeps_the_code_and_the_kind() {
        for original in [database("13", ErrorKind::Other), database("23505", ErrorKind::UniqueViolation)] {
            let copy = duplicate(&original);
            assert_eq!(Fault::of(&copy), Fault::of(&original));
            let (sqlx::Error::Database(a), sqlx::Error::Database(b)) = (&original, &copy) else { panic!("database") };
            assert_eq!(a.code(), b.code());
            assert!(b.message().starts_with("batch not acknowledged"), "{}", b.message());
        }
    }

    #[test]
    fn the_fault_is_found_through_wrapping_errors() {
        #[derive(Debug, thiserror::Error)]
        #[error("service: {0}")]
        struct Wrapper(#[source] sqlx::Error);
        let wrapped = Wrapper(database("53100", ErrorKind::Other));
        assert_eq!(Fault::in_chain(&wrapped), Some(Fault::DiskFull));
        assert_eq!(Fault::in_chain(&std::fmt::Error), None);
    }
}
