//! Admin API tokens: random bearer tokens shown once at creation, stored as SHA-256
//! hashes, each with a scope (read < write < admin), an optional expiry, revocable.

use crate::db::Db;
use sha2::{Digest as _, Sha256};
use sqlx::Row;

/// What a token may do. Each scope includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Read anything.
    Read,
    /// Read, and change conversions, imports, reviews.
    Write,
    /// Everything, including plugins and tokens.
    Admin,
}

impl Scope {
    /// Parses `read`, `write` or `admin`.
    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "read" => Some(Scope::Read),
            "write" => Some(Scope::Write),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }

    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }
}

/// Why a request was refused. Messages never repeat the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("missing bearer token: send `Authorization: Bearer <token>`")]
    Missing,
    /// Not a token we issued.
    #[error("invalid token")]
    Invalid,
    /// Past its expiry.
    #[error("token expired")]
    Expired,
    /// Revoked by an operator.
    #[error("token revoked")]
    Revoked,
    /// Valid, but its scope is too small.
    #[error("this needs the {needed} scope; the token has {has}")]
    Scope {
        /// Required.
        needed: &'static str,
        /// Held.
        has: &'static str,
    },
    /// The database failed.
    #[error("cannot check the token")]
    Unavailable,
}

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Creates a token and returns it; it is not stored and cannot be shown again.
pub async fn create_token(
    db: &Db,
    name: &str,
    scope: Scope,
    now: i64,
    expires_at: Option<i64>,
) -> Result<String, sqlx::Error> {
    let token = format!("cbk_{:032x}{:032x}", rand::random::<u128>(), rand::random::<u128>());
    let id = format!("tok_{}", &hash(&token)[..12]);
    sqlx::query(
        "INSERT INTO api_tokens (id, name, token_hash, scope, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&id)
    .bind(name)
    .bind(hash(&token))
    .bind(scope.as_str())
    .bind(now)
    .bind(expires_at)
    .execute(&db.pool)
    .await?;
    Ok(token)
}

/// Revokes a token by id.
pub async fn revoke(db: &Db, id: &str, now: i64) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
        .bind(now)
        .bind(id)
        .execute(&db.pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Checks an `Authorization` header value against `needed`.
pub async fn authorize(db: &Db, header: Option<&str>, needed: Scope, now: i64) -> Result<Scope, AuthError> {
    let token = header.and_then(|h| h.strip_prefix("Bearer ")).ok_or(AuthError::Missing)?;
    caller(db, token, needed, now).await.map(|c| c.scope)
}

/// Who a valid token is: the dashboard records its name as the operator of an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's id (`tok_...`).
    pub id: String,
    /// The name it was created with.
    pub name: String,
    /// What it may do.
    pub scope: Scope,
}

/// Checks a bare token (the dashboard's session cookie holds one) against `needed`.
pub async fn caller(db: &Db, token: &str, needed: Scope, now: i64) -> Result<Caller, AuthError> {
    let token = Some(token.trim()).filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;
    // Looked up by hash: equal hashes mean equal tokens, and the comparison happens in
    // the database's index, not byte by byte here.
    let row = sqlx::query("SELECT id, scope, expires_at, revoked_at, name FROM api_tokens WHERE token_hash = $1")
        .bind(hash(token))
        .fetch_optional(&db.pool)
        .await
        .map_err(|_| AuthError::Unavailable)?
        .ok_or(AuthError::Invalid)?;
    let id: String = row.try_get(0).map_err(|_| AuthError::Unavailable)?;
    let scope: String = row.try_get(1).map_err(|_| AuthError::Unavailable)?;
    let expires: Option<i64> = row.try_get(2).map_err(|_| AuthError::Unavailable)?;
    let revoked: Option<i64> = row.try_get(3).map_err(|_| AuthError::Unavailable)?;
    let name: String = row.try_get(4).map_err(|_| AuthError::Unavailable)?;
    if revoked.is_some() {
        return Err(AuthError::Revoked);
    }
    if expires.is_some_and(|e| e <= now) {
        return Err(AuthError::Expired);
    }
    let has = Scope::parse(&scope).ok_or(AuthError::Invalid)?;
    if has < needed {
        return Err(AuthError::Scope { needed: needed.as_str(), has: has.as_str() });
    }
    let _ = sqlx::query("UPDATE api_tokens SET last_used_at = $1 WHERE id = $2")
        .bind(now)
        .bind(&id)
        .execute(&db.pool)
        .await;
    Ok(Caller { id, name, scope: has })
}

// ---- dashboard sessions ------------------------------------------------------------------

/// A dashboard session: who signed in, with which scope, until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Its public id (`ses_...`, from the hash: never the cookie's value).
    pub id: String,
    /// The token it was opened with, its name, and the scope it had then.
    pub caller: Caller,
    /// When it was opened (ms).
    pub created_at: i64,
    /// When it stops being valid (ms).
    pub expires_at: i64,
    /// When it was signed out or revoked.
    pub revoked_at: Option<i64>,
}

/// Opens a session for a checked token; returns the cookie's value (a random 256-bit id,
/// not stored: only its hash is) and the session.
pub async fn open_session(db: &Db, caller: &Caller, now: i64, ttl_ms: i64) -> Result<(String, Session), sqlx::Error> {
    let secret = format!("{:032x}{:032x}", rand::random::<u128>(), rand::random::<u128>());
    let id_hash = hash(&secret);
    let id = format!("ses_{}", &id_hash[..16]);
    sqlx::query(
        "INSERT INTO dashboard_sessions (id, id_hash, token_id, scope, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&id)
    .bind(&id_hash)
    .bind(&caller.id)
    .bind(caller.scope.as_str())
    .bind(now)
    .bind(now + ttl_ms)
    .execute(&db.pool)
    .await?;
    let session = Session { id, caller: caller.clone(), created_at: now, expires_at: now + ttl_ms, revoked_at: None };
    Ok((secret, session))
}

/// Checks a session cookie's value: the session must exist, be neither revoked nor expired,
/// and its token too (revoking a token signs its sessions out at once).
pub async fn session(db: &Db, secret: &str, now: i64) -> Result<Session, AuthError> {
    // Session ids we issue are 64 hex digits; anything else is not one (and is not hashed
    // into a lookup).
    if secret.len() != 64 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(if secret.is_empty() { AuthError::Missing } else { AuthError::Invalid });
    }
    let row = sqlx::query(
        "SELECT s.id, s.scope, s.created_at, s.expires_at, s.revoked_at, t.id, t.name, t.expires_at, t.revoked_at \
         FROM dashboard_sessions s JOIN api_tokens t ON t.id = s.token_id WHERE s.id_hash = $1",
    )
    .bind(hash(secret))
    .fetch_optional(&db.pool)
    .await
    .map_err(|_| AuthError::Unavailable)?
    .ok_or(AuthError::Invalid)?;
    let get = |e: sqlx::Error| {
        tracing::warn!(error = %e, "dashboard session row");
        AuthError::Unavailable
    };
    let session = Session {
        id: row.try_get(0).map_err(get)?,
        caller: Caller {
            id: row.try_get(5).map_err(get)?,
            name: row.try_get(6).map_err(get)?,
            scope: Scope::parse(&row.try_get::<String, _>(1).map_err(get)?).ok_or(AuthError::Invalid)?,
        },
        created_at: row.try_get(2).map_err(get)?,
        expires_at: row.try_get(3).map_err(get)?,
        revoked_at: row.try_get(4).map_err(get)?,
    };
    let token_expires: Option<i64> = row.try_get(7).map_err(get)?;
    let token_revoked: Option<i64> = row.try_get(8).map_err(get)?;
    if session.revoked_at.is_some() || token_revoked.is_some() {
        return Err(AuthError::Revoked);
    }
    if session.expires_at <= now || token_expires.is_some_and(|e| e <= now) {
        return Err(AuthError::Expired);
    }
    Ok(session)
}

/// Signs a session out by its cookie's value. Returns whether it was open.
pub async fn close_session(db: &Db, secret: &str, now: i64) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("UPDATE dashboard_sessions SET revoked_at = $1 WHERE id_hash = $2 AND revoked_at IS NULL")
        .bind(now)
        .bind(hash(secret))
        .execute(&db.pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Revokes a session by its public id (`ses_...`), or every open session of a token
/// (`tok_...`). Returns how many were revoked.
pub async fn revoke_sessions(db: &Db, id: &str, now: i64) -> Result<u64, sqlx::Error> {
    let column = if id.starts_with("tok_") { "token_id" } else { "id" };
    let done = sqlx::query(&format!(
        "UPDATE dashboard_sessions SET revoked_at = $1 WHERE {column} = $2 AND revoked_at IS NULL"
    ))
    .bind(now)
    .bind(id)
    .execute(&db.pool)
    .await?;
    Ok(done.rows_affected())
}

/// The sessions open at `now`, newest first.
pub async fn open_sessions(db: &Db, now: i64) -> Result<Vec<Session>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT s.id, s.scope, s.created_at, s.expires_at, s.revoked_at, t.id, t.name \
         FROM dashboard_sessions s JOIN api_tokens t ON t.id = s.token_id \
         WHERE s.revoked_at IS NULL AND s.expires_at > $1 AND t.revoked_at IS NULL \
         ORDER BY s.created_at DESC, s.id",
    )
    .bind(now)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Session {
                id: r.try_get(0)?,
                caller: Caller {
                    id: r.try_get(5)?,
                    name: r.try_get(6)?,
                    scope: Scope::parse(&r.try_get::<String, _>(1)?).unwrap_or(Scope::Read),
                },
                created_at: r.try_get(2)?,
                expires_at: r.try_get(3)?,
                revoked_at: r.try_get(4)?,
            })
        })
        .collect()
}
