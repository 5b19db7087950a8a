//! Schemas of fields whose Rust type is wider than what they take (a configuration that
//! is any JSON, a status kept as text): the handlers' request types name them in their
//! `#[schema(schema_with = ...)]` attributes, and the OpenAPI document (`openapi.rs`)
//! uses them too. A leaf: it knows no handler.

use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};

/// A string schema of one of `values`.
pub fn strings(values: &[&str]) -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String).enum_values(Some(values.iter().copied()))
}

/// Any JSON value (a plugin's configuration: its own schema checks it).
pub fn any_json() -> Schema {
    Schema::Object(
        ObjectBuilder::new().description(Some("Any JSON value (checked against the plugin's own schema)")).build(),
    )
}

/// `approve`, `reject` or `hold`.
pub fn review_action() -> Schema {
    Schema::Object(strings(&["approve", "reject", "hold"]).build())
}

/// How a network's postbacks authenticate.
pub fn inbound_auth() -> Schema {
    Schema::Object(strings(&["none", "token", "hmac", "ip"]).build())
}

/// Which conversions to reprocess.
pub fn reprocess_status() -> Schema {
    Schema::Object(strings(&["failed", "parked"]).build())
}

/// A time: UTC milliseconds, or RFC 3339 text.
pub fn ms_or_rfc3339() -> Schema {
    Schema::OneOf(
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::Int64))),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::DateTime))),
            )
            .item(ObjectBuilder::new().schema_type(Type::Null))
            .build(),
    )
}

/// A conversion status.
pub fn conversion_status() -> Schema {
    Schema::Object(
        strings(&["processed", "pending_review", "held", "rejected", "reversed", "failed", "parked"]).build(),
    )
}

/// A payout status.
pub fn payout_status() -> Schema {
    Schema::Object(strings(&["requested", "approved", "rejected", "paid", "failed"]).build())
}

/// The order of a payouts page.
pub fn payout_order() -> Schema {
    Schema::Object(strings(&["oldest", "newest"]).build())
}

/// A callback endpoint's HTTP method.
pub fn http_method() -> Schema {
    Schema::Object(strings(&["GET", "POST"]).build())
}

/// A callback endpoint's retry backoff.
pub fn backoff() -> Schema {
    Schema::Object(strings(&["fixed", "exponential"]).build())
}

/// What a callback endpoint receives: one or both kinds, each once.
pub fn callback_events() -> Schema {
    Schema::Array(
        utoipa::openapi::schema::ArrayBuilder::new()
            .items(strings(&["conversions", "payouts"]))
            .min_items(Some(1))
            .max_items(Some(2))
            .unique_items(true)
            .build(),
    )
}

/// What [`crate::registry::resolve`] takes: `name@version`, or 8 to 64 hex digits of a
/// digest (optionally `sha256:`).
pub const PLUGIN_REFERENCE: &str = "^([^@]+@[^@]+|(sha256:)?[0-9a-fA-F]{8,64})$";

/// A stored plugin version.
pub fn plugin_reference() -> Schema {
    Schema::Object(ObjectBuilder::new().schema_type(Type::String).pattern(Some(PLUGIN_REFERENCE)).build())
}
