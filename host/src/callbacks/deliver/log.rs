//! The delivery log and replay: what the admin API, the CLI and the dashboard read of
//! the deliveries and their attempts, and an operator's replay.

use super::message_id;
use super::render::RequestView;
use crate::callbacks::CallbackError;
use crate::db::Db;
use crate::outbox::ChangeKind;
use serde::Serialize;
use sqlx::Row;

/// A delivery as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct DeliveryView {
    /// Id.
    pub id: i64,
    /// Its message id (`webhook-id`).
    pub message_id: String,
    /// The endpoint.
    pub endpoint_id: String,
    /// What it tells of: a conversion's change (`conversion`) or a click's CREATED
    /// (`click`, seed 001).
    pub kind: ChangeKind,
    /// The conversion; none for a click's CREATED.
    pub conversion_id: Option<String>,
    /// The click, when known.
    pub click_id: Option<String>,
    /// What the change is about: `conversion` (a conversion's change or a click's
    /// CREATED) or `payout` (then `conversion_id` holds the payout's id).
    pub subject: String,
    /// The conversion's (or payout's) version (order); 1 for a click.
    pub version: i64,
    /// The state it tells.
    pub conversion_state: String,
    /// pending, delivered, failed, skipped.
    pub state: String,
    /// Attempts since created or replayed.
    pub attempts: i64,
    /// When due (pending).
    pub next_attempt_at: i64,
    /// The last status code.
    pub last_status: Option<i64>,
    /// The last error.
    pub last_error: Option<String>,
    /// Created.
    pub created_at: i64,
    /// Delivered.
    pub delivered_at: Option<i64>,
}

impl DeliveryView {
    /// What it tells of, for listings: the conversion id, or `click <click id>`.
    pub fn subject(&self) -> String {
        match (&self.conversion_id, &self.click_id) {
            (Some(conversion), _) => conversion.clone(),
            (None, Some(click)) => format!("click {click}"),
            (None, None) => "click".to_string(),
        }
    }
}

/// One logged attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AttemptView {
    /// Id.
    pub id: i64,
    /// The delivery (none for a tester request).
    pub delivery_id: Option<i64>,
    /// The endpoint.
    pub endpoint_id: String,
    /// Which attempt.
    pub attempt: i64,
    /// When it started.
    pub started_at: i64,
    /// How long it took.
    pub latency_ms: i64,
    /// The request line and headers (signatures masked) and body.
    pub request: RequestView,
    /// The status code, if an answer came.
    pub status: Option<i64>,
    /// The error, if none came.
    pub error: Option<String>,
    /// The start of the answer.
    pub response_excerpt: Option<String>,
    /// delivered, retry, failed, test.
    pub outcome: String,
}

/// Which deliveries to list.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    /// Of one endpoint.
    pub endpoint_id: Option<String>,
    /// In one state.
    pub state: Option<String>,
    /// Of one conversion.
    pub conversion_id: Option<String>,
    /// Of one click's CREATED (seed 001: sent on the click).
    pub click_id: Option<String>,
    /// Created at or after.
    pub from: Option<i64>,
    /// Created before.
    pub to: Option<i64>,
    /// At most (default 100).
    pub limit: Option<i64>,
    /// Older than the delivery with this id (a page's cursor).
    pub before: Option<i64>,
}

const DELIVERY_COLUMNS: &str = "d.id, d.endpoint_id, d.conversion_id, d.version, c.state, d.state, d.attempts, \
    d.next_attempt_at, d.last_status, d.last_error, d.created_at, d.delivered_at, c.kind, c.click_id, c.subject";

fn delivery_from_row(r: &sqlx::any::AnyRow) -> Result<DeliveryView, sqlx::Error> {
    let id: i64 = r.try_get(0)?;
    let kind = match r.try_get::<String, _>(12)?.as_str() {
        "click" => ChangeKind::Click,
        _ => ChangeKind::Conversion,
    };
    Ok(DeliveryView {
        id,
        message_id: message_id(id),
        endpoint_id: r.try_get(1)?,
        kind,
        // A click's row holds its outbox key (`click:...`) there, not a conversion id.
        conversion_id: Some(r.try_get::<String, _>(2)?).filter(|_| kind == ChangeKind::Conversion),
        click_id: r.try_get(13)?,
        subject: r.try_get(14)?,
        version: r.try_get(3)?,
        conversion_state: r.try_get(4)?,
        state: r.try_get(5)?,
        attempts: r.try_get(6)?,
        next_attempt_at: r.try_get(7)?,
        last_status: r.try_get(8)?,
        last_error: r.try_get(9)?,
        created_at: r.try_get(10)?,
        delivered_at: r.try_get(11)?,
    })
}

/// Deliveries, newest first.
pub async fn deliveries(db: &Db, f: &DeliveryFilter) -> Result<Vec<DeliveryView>, CallbackError> {
    if let Some(s) = &f.state
        && !matches!(s.as_str(), "pending" | "delivered" | "failed" | "skipped")
    {
        return Err(CallbackError::Invalid(format!("state: {s:?} is not pending, delivered, failed or skipped")));
    }
    let sql = format!(
        "SELECT {DELIVERY_COLUMNS} FROM callback_deliveries d JOIN conversion_changes c ON c.id = d.change_id \
         WHERE ($1 IS NULL OR d.endpoint_id = $1) AND ($2 IS NULL OR d.state = $2) AND ($3 IS NULL OR d.conversion_id = $3) \
         AND ($4 IS NULL OR d.created_at >= $4) AND ($5 IS NULL OR d.created_at < $5) AND ($7 IS NULL OR d.conversion_id = 'click:' || $7) \
         AND d.id < $8 ORDER BY d.id DESC LIMIT $6"
    );
    let rows = sqlx::query(&sql)
        .bind(&f.endpoint_id)
        .bind(&f.state)
        .bind(&f.conversion_id)
        .bind(f.from)
        .bind(f.to)
        .bind(f.limit.unwrap_or(100).clamp(1, 10_000))
        .bind(&f.click_id)
        .bind(f.before.unwrap_or(i64::MAX))
        .fetch_all(&db.pool)
        .await?;
    Ok(rows.iter().map(delivery_from_row).collect::<Result<_, _>>()?)
}

/// A delivery with every attempt, oldest first.
pub async fn delivery(db: &Db, id: i64) -> Result<(DeliveryView, Vec<AttemptView>), CallbackError> {
    let sql = format!(
        "SELECT {DELIVERY_COLUMNS} FROM callback_deliveries d JOIN conversion_changes c ON c.id = d.change_id WHERE d.id = $1"
    );
    let row = sqlx::query(&sql).bind(id).fetch_optional(&db.pool).await?;
    let view = delivery_from_row(&row.ok_or_else(|| CallbackError::NotFound(format!("no delivery {id}")))?)?;
    Ok((view, attempts(db, Some(id), None, 1000).await?))
}

/// Logged attempts of a delivery, or of an endpoint (tester requests included), oldest first.
pub async fn attempts(
    db: &Db,
    delivery_id: Option<i64>,
    endpoint_id: Option<&str>,
    limit: i64,
) -> Result<Vec<AttemptView>, CallbackError> {
    attempts_after(db, delivery_id, endpoint_id, None, limit).await
}

/// [`attempts`] after the attempt with id `after` (a page's cursor), oldest first.
pub async fn attempts_after(
    db: &Db,
    delivery_id: Option<i64>,
    endpoint_id: Option<&str>,
    after: Option<i64>,
    limit: i64,
) -> Result<Vec<AttemptView>, CallbackError> {
    let rows = sqlx::query(
        "SELECT id, delivery_id, endpoint_id, attempt, started_at, latency_ms, method, url, request_headers, request_body, \
         status, error, response_excerpt, outcome FROM callback_attempts \
         WHERE ($1 IS NULL OR delivery_id = $1) AND ($2 IS NULL OR endpoint_id = $2) AND id > $4 ORDER BY id LIMIT $3",
    )
    .bind(delivery_id)
    .bind(endpoint_id)
    .bind(limit)
    .bind(after.unwrap_or(0))
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            let headers: String = r.try_get(8)?;
            Ok(AttemptView {
                id: r.try_get(0)?,
                delivery_id: r.try_get(1)?,
                endpoint_id: r.try_get(2)?,
                attempt: r.try_get(3)?,
                started_at: r.try_get(4)?,
                latency_ms: r.try_get(5)?,
                request: RequestView {
                    method: r.try_get(6)?,
                    url: r.try_get(7)?,
                    headers: serde_json::from_str(&headers).unwrap_or_default(),
                    body: r.try_get(9)?,
                },
                status: r.try_get(10)?,
                error: r.try_get(11)?,
                response_excerpt: r.try_get(12)?,
                outcome: r.try_get(13)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(CallbackError::from)
}

/// Sends a delivery again (delivered, failed or skipped): it becomes pending, due now,
/// with a fresh count of attempts, and keeps its message id.
pub async fn replay(db: &Db, id: i64, now: i64) -> Result<(), CallbackError> {
    let done = sqlx::query(
        "UPDATE callback_deliveries SET state = 'pending', attempts = 0, next_attempt_at = $1, lease_owner = NULL, \
         lease_until = NULL, updated_at = $1 WHERE id = $2 AND state <> 'pending'",
    )
    .bind(now)
    .bind(id)
    .execute(&db.pool)
    .await?;
    if done.rows_affected() == 0 {
        let exists = sqlx::query("SELECT state FROM callback_deliveries WHERE id = $1")
            .bind(id)
            .fetch_optional(&db.pool)
            .await?;
        return Err(match exists {
            None => CallbackError::NotFound(format!("no delivery {id}")),
            // Well-formed, refused by the delivery's state: a conflict (409), not bad input.
            Some(_) => CallbackError::Conflict(format!("delivery {id} is pending already")),
        });
    }
    Ok(())
}

/// Replays every finished delivery created in `[from, to)`, of one endpoint or all.
/// Returns how many.
pub async fn replay_range(
    db: &Db,
    endpoint_id: Option<&str>,
    from: i64,
    to: i64,
    now: i64,
) -> Result<u64, CallbackError> {
    if to <= from {
        return Err(CallbackError::Invalid("to: must be after from".into()));
    }
    if let Some(e) = endpoint_id {
        crate::callbacks::endpoint(db, e).await?;
    }
    let done = sqlx::query(
        "UPDATE callback_deliveries SET state = 'pending', attempts = 0, next_attempt_at = $1, lease_owner = NULL, \
         lease_until = NULL, updated_at = $1 WHERE state <> 'pending' AND created_at >= $2 AND created_at < $3 \
         AND ($4 IS NULL OR endpoint_id = $4)",
    )
    .bind(now)
    .bind(from)
    .bind(to)
    .bind(endpoint_id)
    .execute(&db.pool)
    .await?;
    Ok(done.rows_affected())
}
