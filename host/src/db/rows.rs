//! Many rows in one statement, on both backends: the rows are bound as ONE parameter, a
//! JSON array of objects, and the statement reads them as a table (`jsonb_to_recordset`
//! on PostgreSQL, `json_each` on SQLite).
//!
//! Why JSON rather than `VALUES ($1, $2, ...), (...)`:
//! - the statement's text does not depend on how many rows there are, so each connection
//!   prepares it once and reuses it (a text per batch size would churn sqlx's statement
//!   cache and re-plan every time);
//! - there is no parameter limit to chunk around (SQLite 32,766, PostgreSQL 65,535), so a
//!   batch costs one statement per table whatever its size;
//! - SQLite resolves `$N` parameters by name in a list, so thousands of them cost time
//!   quadratic in their number (see `id_in`); one parameter costs nothing.
//!
//! Serializing the rows costs microseconds; every statement saved is a round trip.

use super::Backend;
use sqlx::AnyConnection;

/// A column's SQL type, as the JSON is read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    /// TEXT (JSON string or null).
    Text,
    /// BIGINT / INTEGER (JSON number or null).
    Int,
}

/// The backend behind a connection.
pub fn backend(conn: &AnyConnection) -> Backend {
    if conn.backend_name() == "PostgreSQL" { Backend::Postgres } else { Backend::Sqlite }
}

/// A table expression, aliased `v`, of the rows in the JSON array bound as parameter
/// `$n`, with the columns `cols` (each row a JSON object keyed by column name; a missing
/// key reads as NULL). Use it as `... FROM {json_rows(..)}`; `INSERT ... SELECT` from it
/// needs `WHERE true` before an `ON CONFLICT` clause (SQLite's parser requires it).
pub fn json_rows(backend: Backend, n: usize, cols: &[(&str, Ty)]) -> String {
    match backend {
        Backend::Postgres => {
            let defs: Vec<String> =
                cols.iter().map(|(c, t)| format!("{c} {}", if *t == Ty::Int { "bigint" } else { "text" })).collect();
            format!("jsonb_to_recordset(${n}::jsonb) AS v({})", defs.join(", "))
        }
        Backend::Sqlite => {
            let picks: Vec<String> = cols.iter().map(|(c, _)| format!("value ->> '{c}' AS {c}")).collect();
            format!("(SELECT {} FROM json_each(${n})) AS v", picks.join(", "))
        }
    }
}

/// The rows as the JSON parameter [`json_rows`] reads.
pub fn to_json<T: serde::Serialize>(rows: &[T]) -> Result<String, sqlx::Error> {
    serde_json::to_string(rows).map_err(|e| sqlx::Error::Encode(Box::new(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_expression_names_every_column_with_its_type() {
        let cols = [("id", Ty::Text), ("amount", Ty::Int)];
        assert_eq!(
            json_rows(Backend::Postgres, 2, &cols),
            "jsonb_to_recordset($2::jsonb) AS v(id text, amount bigint)"
        );
        assert_eq!(
            json_rows(Backend::Sqlite, 1, &cols),
            "(SELECT value ->> 'id' AS id, value ->> 'amount' AS amount FROM json_each($1)) AS v"
        );
    }
}
