//! User accounts. The site owns its users: it passes its own user id on the tracked link
//! (`/c/{link}?user=ID`), and creates or updates accounts through `PUT /api/v1/users/{id}`,
//! `cashbackd user add|import`, or by a click (`ingress.create_users_on_click`). Creating
//! an account is a journaled command (`Service::put_user`) so that conversions parked
//! for it are processed at once; this module holds what is read, and the checks.

use crate::db::Db;
use serde::Serialize;
use sqlx::Row;

/// Longest user id, in characters (the same bound as `?user=` on a click).
pub const MAX_ID_CHARS: usize = crate::input::USER_ID.max_chars;
/// Longest user id in bytes: 128 characters of up to 4 bytes each.
pub const MAX_ID_BYTES: usize = crate::input::USER_ID.max_bytes();
/// Longest name shown in a digest's greeting.
pub const MAX_NAME_CHARS: usize = 200;

/// What a site says about one of its users.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Profile {
    /// Where the digests go (none: no digest).
    pub email: Option<String>,
    /// The name the digests greet.
    pub name: Option<String>,
    /// Whether the user wants digests.
    pub notify: bool,
}

impl Profile {
    /// Refuses what a digest could not use, naming the field.
    pub fn check(&self) -> Result<(), String> {
        if let Some(email) = &self.email
            && email.parse::<lettre::Address>().is_err()
        {
            return Err(format!("email: {email:?} is not an e-mail address"));
        }
        if let Some(name) = &self.name
            && (name.chars().count() > MAX_NAME_CHARS || name.chars().any(char::is_control))
        {
            return Err(format!("name: at most {MAX_NAME_CHARS} characters, no control characters"));
        }
        Ok(())
    }
}

/// A user id is the site's: any text of 1 to 128 characters (`input::USER_ID`,
/// the same as `?user=` on a click) without control characters or surrounding spaces (it
/// travels in URLs, logs and CSV files). The error names the field `user`.
pub fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err(format!("user: 1 to {MAX_ID_CHARS} characters (at most {MAX_ID_BYTES} bytes)"));
    }
    crate::input::USER_ID.check(id)?;
    if id.trim() != id {
        return Err("user: no spaces around the id".into());
    }
    Ok(())
}

/// One balance of a user: the account kind (`pending`, `available`, ...) in a currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(as = UserBalance)]
pub struct Balance {
    /// Currency.
    pub currency: String,
    /// Account kind.
    pub kind: String,
    /// Minor units.
    pub amount: i64,
}

/// A user account as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct User {
    /// The site's id.
    pub id: String,
    /// E-mail for the digests.
    pub email: Option<String>,
    /// Name for the digests.
    pub name: Option<String>,
    /// Whether digests are sent.
    pub notify: bool,
    /// `api`, `cli`, `import` or `click`.
    pub source: String,
    /// When the account was created (ms).
    pub created_at: i64,
    /// When its profile last changed (ms).
    pub updated_at: Option<i64>,
    /// Every balance the user holds, by currency and kind.
    pub balances: Vec<Balance>,
    /// Conversions parked waiting for something (shown so a site can tell its user).
    pub parked: i64,
}

const USER_COLUMNS: &str = "id, email, name, notify, source, created_at, updated_at";

fn user_of(r: &sqlx::any::AnyRow) -> Result<User, sqlx::Error> {
    Ok(User {
        id: r.try_get(0)?,
        email: r.try_get(1)?,
        name: r.try_get(2)?,
        notify: r.try_get::<i64, _>(3)? != 0,
        source: r.try_get(4)?,
        created_at: r.try_get(5)?,
        updated_at: r.try_get(6)?,
        balances: Vec::new(),
        parked: 0,
    })
}

/// A user with balances, if the account exists.
pub async fn get(db: &Db, id: &str) -> Result<Option<User>, sqlx::Error> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
    let Some(row) = sqlx::query(&sql).bind(id).fetch_optional(&db.pool).await? else { return Ok(None) };
    let mut user = user_of(&row)?;
    user.balances = balances(db, id).await?;
    user.parked = sqlx::query_scalar("SELECT COUNT(*) FROM conversions WHERE user_id = $1 AND status = 'parked'")
        .bind(id)
        .fetch_one(&db.pool)
        .await?;
    Ok(Some(user))
}

/// The user's ledger balances, by currency then kind.
pub async fn balances(db: &Db, id: &str) -> Result<Vec<Balance>, sqlx::Error> {
    let rows = sqlx::query("SELECT currency, kind, balance FROM accounts WHERE owner = $1 ORDER BY currency, kind")
        .bind(id)
        .fetch_all(&db.pool)
        .await?;
    rows.iter().map(|r| Ok(Balance { currency: r.try_get(0)?, kind: r.try_get(1)?, amount: r.try_get(2)? })).collect()
}

/// Users by id, after `after` (the cursor: the last id of the previous page).
pub async fn list(db: &Db, after: Option<&str>, limit: i64) -> Result<Vec<User>, sqlx::Error> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id > $1 ORDER BY id LIMIT $2");
    let rows = sqlx::query(&sql).bind(after.unwrap_or("")).bind(limit).fetch_all(&db.pool).await?;
    rows.iter().map(user_of).collect()
}

/// One of a user's conversions, as the site shows it to its customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct UserConversion {
    /// cashbackd's id.
    pub id: String,
    /// The merchant.
    pub merchant_id: Option<String>,
    /// The merchant's order id.
    pub order_id: Option<String>,
    /// The network's state.
    pub state: String,
    /// Our status.
    pub status: String,
    /// Why, when parked, failed, held or rejected.
    pub status_reason: Option<String>,
    /// Currency.
    pub currency: String,
    /// Order value (minor units).
    pub amount: i64,
    /// The user's cashback (minor units).
    pub cashback: i64,
    /// When the network first reported it (ms).
    pub reported_at: i64,
    /// When the cashback becomes (or became) available (ms).
    pub matures_at: Option<i64>,
}

/// A page of a user's conversions, newest report first, and the cursor of the next page.
/// The cursor is `reported_at:id` of the last row; opaque to callers.
pub async fn conversions(
    db: &Db,
    user: &str,
    cursor: Option<&str>,
    limit: i64,
) -> Result<(Vec<UserConversion>, Option<String>), CursorError> {
    let (before_at, before_id) = match cursor {
        None => (i64::MAX, String::new()),
        Some(c) => {
            let (at, id) = c.split_once(':').ok_or(CursorError::Bad)?;
            (at.parse().map_err(|_| CursorError::Bad)?, id.to_string())
        }
    };
    // Keyset pagination on (reported_at, id) descending, served by conversions_user_reported.
    let rows = sqlx::query(
        "SELECT id, merchant_id, order_id, state, status, status_reason, currency, amount, cashback, reported_at, \
         matures_at FROM conversions WHERE user_id = $1 \
         AND (reported_at < $2 OR (reported_at = $2 AND ($3 = '' OR id < $3))) \
         ORDER BY reported_at DESC, id DESC LIMIT $4",
    )
    .bind(user)
    .bind(before_at)
    .bind(&before_id)
    .bind(limit + 1)
    .fetch_all(&db.pool)
    .await?;
    let mut page = rows
        .iter()
        .map(|r| {
            Ok(UserConversion {
                id: r.try_get(0)?,
                merchant_id: r.try_get(1)?,
                order_id: r.try_get(2)?,
                state: r.try_get(3)?,
                status: r.try_get(4)?,
                status_reason: r.try_get(5)?,
                currency: r.try_get(6)?,
                amount: r.try_get(7)?,
                cashback: r.try_get(8)?,
                reported_at: r.try_get(9)?,
                matures_at: r.try_get(10)?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let next = if page.len() as i64 > limit {
        page.truncate(limit as usize);
        page.last().map(|c| format!("{}:{}", c.reported_at, c.id))
    } else {
        None
    };
    Ok((page, next))
}

/// Why a page could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CursorError {
    /// The cursor is not one this server gave.
    #[error("cursor: not a cursor this server gave")]
    Bad,
    /// The database failed.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// One row of a user CSV file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct CsvUser {
    /// The site's user id.
    pub id: String,
    /// E-mail (empty: none).
    #[serde(default)]
    pub email: Option<String>,
    /// Name (empty: none).
    #[serde(default)]
    pub name: Option<String>,
}

/// Reads a user CSV file (`id,email[,name]`, with that header), checking every row
/// before any is written: an error names the line and the field.
pub fn parse_csv(text: &[u8]) -> Result<Vec<(String, Profile)>, String> {
    let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).from_reader(text);
    let headers = reader.headers().map_err(|e| format!("header: {e}"))?.clone();
    if headers.iter().next() != Some("id") {
        return Err(format!("header: the first column must be \"id\" (then email, name), got {:?}", headers));
    }
    let mut users = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, record) in reader.deserialize::<CsvUser>().enumerate() {
        let line = i + 2;
        let row = record.map_err(|e| format!("line {line}: {e}"))?;
        check_id(&row.id).map_err(|e| format!("line {line}: {e}"))?;
        if !seen.insert(row.id.clone()) {
            return Err(format!("line {line}: user id {:?} appears twice", row.id));
        }
        let profile = Profile {
            email: row.email.filter(|e| !e.is_empty()),
            name: row.name.filter(|n| !n.is_empty()),
            notify: true,
        };
        profile.check().map_err(|e| format!("line {line}: {e}"))?;
        users.push((row.id, profile));
    }
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_csv_is_checked_whole_and_errors_name_the_line_and_field() {
        let ok = parse_csv(b"id,email,name\nu1,u1@example.com,Ann\nu2,,\n").expect("parses");
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[0].1.email.as_deref(), Some("u1@example.com"));
        assert_eq!(ok[1].1, Profile { email: None, name: None, notify: true });
        let e = parse_csv(b"id,email\nu1,not-an-address\n").expect_err("refused");
        assert_eq!(e, "line 2: email: \"not-an-address\" is not an e-mail address");
        let e = parse_csv(b"id,email\nu1,\nu1,\n").expect_err("refused");
        assert!(e.starts_with("line 3: user id \"u1\" appears twice"), "{e}");
        let e = parse_csv(b"email,id\na@b.c,u1\n").expect_err("refused");
        assert!(e.starts_with("header:"), "{e}");
    }

    #[test]
    fn user_ids_are_limited_by_characters() {
        assert!(check_id(&"😀".repeat(128)).is_ok());
        assert!(check_id(&"a".repeat(129)).is_err());
        assert!(check_id("").is_err());
        assert!(check_id(" u1").is_err());
        assert!(check_id("u\n1").is_err());
    }
}
