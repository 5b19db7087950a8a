//! Cursor pages for the admin API's lists (issue 16, point 5): every list takes `limit`
//! (1 to [`MAX_LIMIT`], default [`DEFAULT_LIMIT`]; more is refused with 400, not cut
//! silently) and `cursor`, the previous page's `next_cursor`; each answer carries
//! `next_cursor`, null on the last page. A cursor is the sort key of the page's last row,
//! so a page is a range read of an index, however deep, and rows added meanwhile do not
//! shift the pages that follow.

use super::ApiError;
use serde::Deserialize;

/// Most rows a page holds.
pub const MAX_LIMIT: i64 = 500;
/// Rows a page holds when `limit` is left out.
pub const DEFAULT_LIMIT: i64 = 50;

/// `limit` and `cursor`, for lists whose cursor is the last row's id (text).
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct Page {
    /// `next_cursor` of the previous page (left out: the first page).
    pub cursor: Option<String>,
    /// Rows per page: 1 to 500; default 50.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
}

/// The page size asked for, checked.
pub fn limit(asked: Option<i64>) -> Result<i64, ApiError> {
    checked_limit(asked).map_err(|why| ApiError::bad_request("bad_limit", why))
}

/// The page size asked for, checked; the refusal names `limit` (the dashboard's lists
/// take the same sizes as the API's).
pub(crate) fn checked_limit(asked: Option<i64>) -> Result<i64, String> {
    match asked {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(format!("limit: 1 to {MAX_LIMIT}, got {n}")),
    }
}

/// A `reported_at:id` cursor (the conversion lists'), checked; the refusal names `cursor`.
pub(crate) fn at_id_cursor(cursor: Option<&str>) -> Result<Option<(i64, String)>, String> {
    let Some(c) = cursor.filter(|c| !c.is_empty()) else { return Ok(None) };
    let bad = || format!("cursor: {c:?} is not one this list gave");
    let (at, id) = c.split_once(':').ok_or_else(bad)?;
    Ok(Some((at.parse().map_err(|_| bad())?, id.to_string())))
}

/// A cursor that is an integer id (`next_cursor` of a list ordered by it).
pub fn int_cursor(cursor: Option<&str>) -> Result<Option<i64>, ApiError> {
    checked_int_cursor(cursor).map_err(|why| ApiError::bad_request("bad_cursor", why))
}

/// [`int_cursor`], the refusal as text (for the dashboard).
pub(crate) fn checked_int_cursor(cursor: Option<&str>) -> Result<Option<i64>, String> {
    match cursor.filter(|c| !c.is_empty()) {
        None => Ok(None),
        Some(c) => c.parse::<i64>().map(Some).map_err(|_| format!("cursor: {c:?} is not one this list gave")),
    }
}

/// Cuts `rows` (read with `limit + 1`) to `limit`, and the cursor of the next page: the
/// key of the last row kept, when there is more.
pub fn cut<T>(mut rows: Vec<T>, limit: i64, key: impl Fn(&T) -> String) -> (Vec<T>, Option<String>) {
    if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        let next = rows.last().map(key);
        (rows, next)
    } else {
        (rows, None)
    }
}

/// A page of a list that is read whole (a handful of configured rows: jobs, partners,
/// endpoints, plugin versions), ordered by `key`: those after the cursor.
pub fn of_sorted<T>(
    mut rows: Vec<T>,
    cursor: Option<&str>,
    limit: i64,
    key: impl Fn(&T) -> String,
) -> (Vec<T>, Option<String>) {
    rows.sort_by_cached_key(|r| key(r));
    if let Some(c) = cursor.filter(|c| !c.is_empty()) {
        rows.retain(|r| key(r).as_str() > c);
    }
    rows.truncate(limit as usize + 1);
    cut(rows, limit, key)
}

/// A page of a list ordered by an integer id: the cursor is the last row's id.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct IdPage {
    /// `next_cursor` of the previous page.
    #[param(pattern = "^(|[0-9]{1,18})$")]
    cursor: Option<String>,
    /// Rows per page: 1 to 500; default 50.
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
}

impl IdPage {
    /// The page size and the id the page starts after, checked.
    pub(crate) fn checked(&self) -> Result<(i64, Option<i64>), ApiError> {
        Ok((limit(self.limit)?, int_cursor(self.cursor.as_deref())?))
    }
}

/// Declares the answer of a list: its rows under `$field` and `next_cursor`. The handler
/// returns this type, and the OpenAPI document takes its schema from it, so the document
/// describes what the server sends.
macro_rules! page_of {
    ($(#[$doc:meta])* $name:ident, $field:ident: $item:ty) => {
        $(#[$doc])*
        #[derive(Debug, serde::Serialize, utoipa::ToSchema)]
        pub(crate) struct $name {
            /// The page's rows.
            pub $field: Vec<$item>,
            /// The next page's cursor (pass it as `cursor`); null on the last page.
            pub next_cursor: Option<String>,
        }
    };
}
pub(crate) use page_of;
