//! The OpenAPI 3.1 document of the admin API, served at `/api/v1/openapi.json`, built with
//! `utoipa`'s model from [`ROUTES`]: every `/api/v1` route with its method, scope,
//! summary and request body. A test reads the routers' source and fails when a route is
//! missing here, and another calls every route listed here without a token and expects a
//! refusal, so the table, the routers and the document cannot drift apart.
//!
//! Request bodies and query parameters are the schemas of the types the handlers
//! deserialize (`utoipa::ToSchema` / `IntoParams` on them), so the document cannot
//! describe a field the server does not take; every success answer is the schema of the
//! type its handler returns in `Json(..)` (`response_of`), so it cannot describe a
//! field the server does not send. Every refusal of the admin API is the [`Error`] body,
//! and each operation lists every status its route can answer with.

use crate::auth::Scope;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, Paths, Ref, RefOr, Required,
};
use utoipa::{IntoParams, ToSchema};

use super::schema::*;

/// A named schema.
pub type Named = (String, RefOr<Schema>);

/// The schema of `T`, named as in `components/schemas`, then the schemas it refers to.
pub fn json<T: ToSchema>() -> Vec<Named> {
    let mut all = vec![(T::name().into_owned(), T::schema())];
    T::schemas(&mut all);
    all
}

/// What a route's request body is.
#[derive(Debug, Clone, Copy)]
pub enum Body {
    /// None.
    None,
    /// JSON, of the type the handler deserializes.
    Json(fn() -> Vec<Named>),
    /// JSON that may be left out (an empty body takes every default).
    OptionalJson(fn() -> Vec<Named>),
    /// Raw bytes: a report file, a plugin component.
    Bytes,
}

/// One admin route.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// `GET`, `POST`, `PUT` or `DELETE`.
    pub method: &'static str,
    /// The axum path (`{param}` segments).
    pub path: &'static str,
    /// The token scope it needs (`None`: public).
    pub scope: Option<Scope>,
    /// Grouping in the document.
    pub tag: &'static str,
    /// What it does.
    pub summary: &'static str,
    /// Its request body.
    pub body: Body,
}

const fn r(
    method: &'static str,
    path: &'static str,
    scope: Scope,
    tag: &'static str,
    summary: &'static str,
    body: Body,
) -> Route {
    Route { method, path, scope: Some(scope), tag, summary, body }
}

use Scope::{Admin, Read, Write};

/// Every `/api/v1` route.
pub const ROUTES: &[Route] = &[
    Route {
        method: "GET",
        path: "/api/v1/openapi.json",
        scope: None,
        tag: "meta",
        summary: "This document",
        body: Body::None,
    },
    r("GET", "/api/v1/merchants", Read, "merchants", "Merchants with their rule chains", Body::None),
    r("GET", "/api/v1/merchants/{merchant}", Read, "merchants", "One merchant", Body::None),
    r(
        "PUT",
        "/api/v1/merchants/{merchant}",
        Admin,
        "merchants",
        "Create or update a merchant",
        Body::Json(json::<super::api::MerchantBody>),
    ),
    r("GET", "/api/v1/networks", Read, "networks", "Networks (inbound secrets masked)", Body::None),
    r("GET", "/api/v1/networks/{network}", Read, "networks", "One network", Body::None),
    r(
        "PUT",
        "/api/v1/networks/{network}",
        Admin,
        "networks",
        "Create or update a network",
        Body::Json(json::<super::api::NetworkBody>),
    ),
    r(
        "POST",
        "/api/v1/networks/{network}/imports",
        Write,
        "imports",
        "Import a report file through the adapter",
        Body::Bytes,
    ),
    r("GET", "/api/v1/networks/{network}/rejects", Read, "imports", "Refused postbacks with reasons", Body::None),
    r("GET", "/api/v1/conversions", Read, "conversions", "Search conversions", Body::None),
    r(
        "GET",
        "/api/v1/conversions/{id}",
        Read,
        "conversions",
        "A conversion's timeline: stages, history, postings",
        Body::None,
    ),
    r(
        "POST",
        "/api/v1/conversions/{id}/review",
        Write,
        "review",
        "Approve, reject or hold a conversion",
        Body::Json(json::<super::api::ReviewBody>),
    ),
    r("GET", "/api/v1/review", Read, "review", "The review queue", Body::None),
    r(
        "POST",
        "/api/v1/conversions/{id}/reprocess",
        Write,
        "conversions",
        "Process a parked or failed conversion again",
        Body::OptionalJson(json::<super::users::ReprocessBody>),
    ),
    r(
        "POST",
        "/api/v1/conversions/{id}/attribute",
        Write,
        "conversions",
        "Attribute a parked conversion by hand",
        Body::Json(json::<super::users::AttributeBody>),
    ),
    r(
        "POST",
        "/api/v1/conversions/reprocess",
        Write,
        "conversions",
        "Process every failed or parked conversion again",
        Body::Json(json::<super::users::ReprocessAllBody>),
    ),
    r("GET", "/api/v1/users", Read, "users", "User accounts, by id (cursor pages)", Body::None),
    r("GET", "/api/v1/users/{user}", Read, "users", "A user account with its balances", Body::None),
    r(
        "PUT",
        "/api/v1/users/{user}",
        Write,
        "users",
        "Create a user account or replace its profile",
        Body::Json(json::<super::users::UserBody>),
    ),
    r(
        "GET",
        "/api/v1/users/{user}/conversions",
        Read,
        "users",
        "A user's conversions, newest first (cursor pages)",
        Body::None,
    ),
    r(
        "GET",
        "/api/v1/networks/{network}/merchant-refs",
        Read,
        "networks",
        "A network's merchant references",
        Body::None,
    ),
    r(
        "PUT",
        "/api/v1/networks/{network}/merchant-refs/{merchant_ref}",
        Admin,
        "networks",
        "Map a merchant reference to a merchant",
        Body::Json(json::<super::users::RefBody>),
    ),
    r("GET", "/api/v1/balances", Read, "ledger", "Account balances", Body::None),
    r("GET", "/api/v1/jobs", Read, "jobs", "Scheduled jobs and their last runs", Body::None),
    r("GET", "/api/v1/jobs/{name}/runs", Read, "jobs", "A job's runs", Body::None),
    r("POST", "/api/v1/jobs/{name}/run", Write, "jobs", "Run a job now", Body::None),
    r("GET", "/api/v1/plugins", Read, "plugins", "Stored plugin versions and where each is used", Body::None),
    r("POST", "/api/v1/plugins", Admin, "plugins", "Upload a plugin component (validated)", Body::Bytes),
    r("DELETE", "/api/v1/plugins/{reference}", Admin, "plugins", "Delete an unused version", Body::None),
    r(
        "POST",
        "/api/v1/merchants/{merchant}/rules/activate",
        Admin,
        "plugins",
        "Activate a rule version",
        Body::Json(json::<super::plugins::ActivateBody>),
    ),
    r(
        "POST",
        "/api/v1/merchants/{merchant}/rules/rollback",
        Admin,
        "plugins",
        "Roll back the last activation",
        Body::OptionalJson(json::<super::plugins::RollbackBody>),
    ),
    r("GET", "/api/v1/merchants/{merchant}/rules/history", Read, "plugins", "Activation history", Body::None),
    r("GET", "/api/v1/merchants/{merchant}/shadow", Read, "plugins", "Shadow candidate's differences", Body::None),
    r(
        "PUT",
        "/api/v1/merchants/{merchant}/shadow",
        Admin,
        "plugins",
        "Run a candidate in shadow",
        Body::Json(json::<super::plugins::ShadowBody>),
    ),
    r("DELETE", "/api/v1/merchants/{merchant}/shadow", Admin, "plugins", "Stop the shadow candidate", Body::None),
    r(
        "POST",
        "/api/v1/merchants/{merchant}/backtest",
        Read,
        "plugins",
        "Queue a backtest of a version over past conversions (a background job)",
        Body::Json(json::<super::backtests::BacktestBody>),
    ),
    r("GET", "/api/v1/backtests", Read, "plugins", "Backtest jobs, newest first (cursor pages)", Body::None),
    r(
        "GET",
        "/api/v1/backtests/{id}",
        Read,
        "plugins",
        "A backtest job: state, progress (processed of total) and the comparison",
        Body::None,
    ),
    r(
        "POST",
        "/api/v1/networks/{network}/adapter/activate",
        Admin,
        "plugins",
        "Activate an adapter version",
        Body::Json(json::<super::plugins::ActivateBody>),
    ),
    r("POST", "/api/v1/networks/{network}/adapter/rollback", Admin, "plugins", "Roll back the adapter", Body::None),
    r(
        "POST",
        "/api/v1/callbacks/endpoints/{id}/plugin/activate",
        Admin,
        "plugins",
        "Activate a partner-callback plugin on an endpoint",
        Body::Json(json::<super::plugins::EndpointActivateBody>),
    ),
    r(
        "POST",
        "/api/v1/callbacks/endpoints/{id}/plugin/rollback",
        Admin,
        "plugins",
        "Roll back the endpoint's plugin (to the built-in template past the first)",
        Body::None,
    ),
    r(
        "GET",
        "/api/v1/callbacks/endpoints/{id}/plugin/history",
        Read,
        "plugins",
        "Endpoint plugin activations",
        Body::None,
    ),
    r("GET", "/api/v1/partners", Read, "callbacks", "Partners who receive callbacks", Body::None),
    r(
        "PUT",
        "/api/v1/partners/{partner}",
        Admin,
        "callbacks",
        "Create or rename a partner",
        Body::Json(json::<super::api::PartnerBody>),
    ),
    r(
        "PUT",
        "/api/v1/callbacks/endpoints/{id}",
        Admin,
        "callbacks",
        "Create or replace a callback endpoint (its URL, signing, retries; merchant, network and states filters)",
        Body::Json(json::<super::api::EndpointBody>),
    ),
    r("GET", "/api/v1/callbacks/endpoints", Read, "callbacks", "Partner callback endpoints", Body::None),
    r(
        "POST",
        "/api/v1/callbacks/endpoints/{id}/enable",
        Write,
        "callbacks",
        "Enable an endpoint and replay its backlog",
        Body::None,
    ),
    r("POST", "/api/v1/callbacks/endpoints/{id}/disable", Write, "callbacks", "Disable an endpoint", Body::None),
    r("POST", "/api/v1/callbacks/endpoints/{id}/test", Write, "callbacks", "Send a sample callback", Body::None),
    r(
        "GET",
        "/api/v1/callbacks/endpoints/{id}/attempts",
        Read,
        "callbacks",
        "An endpoint's delivery attempts",
        Body::None,
    ),
    r(
        "GET",
        "/api/v1/callbacks/deliveries",
        Read,
        "callbacks",
        "Deliveries, by endpoint, state, conversion or click",
        Body::None,
    ),
    r("GET", "/api/v1/callbacks/deliveries/{id}", Read, "callbacks", "One delivery with its attempts", Body::None),
    r("POST", "/api/v1/callbacks/deliveries/{id}/replay", Write, "callbacks", "Replay one delivery", Body::None),
    r(
        "POST",
        "/api/v1/callbacks/replay",
        Write,
        "callbacks",
        "Replay deliveries in a time range",
        Body::Json(json::<ReplayRange>),
    ),
    r("GET", "/api/v1/alerts", Read, "callbacks", "Alerts (endpoints disabled after failures)", Body::None),
    r(
        "POST",
        "/api/v1/users/{id}/payouts",
        Write,
        "payouts",
        "Request a payout of a user's available cashback (all of it without an amount)",
        Body::Json(json::<super::payouts::RequestBody>),
    ),
    r("GET", "/api/v1/payouts", Read, "payouts", "Payouts, by status or user, a page at a time", Body::None),
    r("GET", "/api/v1/payouts/{id}", Read, "payouts", "A payout with its history and ledger postings", Body::None),
    r(
        "POST",
        "/api/v1/payouts/{id}/approve",
        Write,
        "payouts",
        "Approve a requested payout",
        Body::OptionalJson(json::<super::payouts::StepBody>),
    ),
    r(
        "POST",
        "/api/v1/payouts/{id}/reject",
        Write,
        "payouts",
        "Reject a payout: the amount returns to available",
        Body::Json(json::<super::payouts::ReasonBody>),
    ),
    r(
        "POST",
        "/api/v1/payouts/{id}/paid",
        Write,
        "payouts",
        "Mark a payout paid with the external reference",
        Body::Json(json::<super::payouts::PaidBody>),
    ),
    r(
        "POST",
        "/api/v1/payouts/{id}/failed",
        Write,
        "payouts",
        "Mark a payout's payment failed: the amount returns to available",
        Body::Json(json::<super::payouts::ReasonBody>),
    ),
];

fn method(m: &str) -> HttpMethod {
    match m {
        "POST" => HttpMethod::Post,
        "PUT" => HttpMethod::Put,
        "DELETE" => HttpMethod::Delete,
        _ => HttpMethod::Get,
    }
}

/// The schema of a path parameter: what the route's handler takes of it.
fn path_schema(path: &str, name: &str) -> ObjectBuilder {
    let text = ObjectBuilder::new().schema_type(Type::String).min_length(Some(1));
    match (path, name) {
        ("/api/v1/merchants/{merchant}", "merchant") => text.max_length(Some(64)),
        (_, "user") => text.max_length(Some(128)).pattern(Some(USER_ID)),
        ("/api/v1/users/{id}/payouts", "id") => text.max_length(Some(128)).pattern(Some(USER_ID)),
        (p, "id") if p.starts_with("/api/v1/callbacks/deliveries/") => text.pattern(Some("^(cbk_d)?[0-9]{1,18}$")),
        (_, "reference") => text.pattern(Some(PLUGIN_REFERENCE)),
        ("/api/v1/backtests/{id}", "id") => text.pattern(Some("^[0-9]{1,18}$")),
        (_, "partner") | ("/api/v1/callbacks/endpoints/{id}", "id") => text.pattern(Some("^[A-Za-z0-9._-]{1,64}$")),
        _ => text,
    }
}

/// A user id: 1 to 128 characters, no control characters, no spaces around it.
const USER_ID: &str =
    "^[^\\s\\u0000-\\u001f\\u007f-\\u009f]([^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f])?$";

/// `POST /api/v1/callbacks/replay`'s body (the handler reads it field by field).
#[derive(serde::Deserialize, ToSchema)]
#[allow(dead_code)] // a schema only
pub struct ReplayRange {
    /// From (UTC milliseconds, inclusive).
    from: i64,
    /// To (UTC milliseconds).
    to: i64,
    /// Only this endpoint's deliveries.
    endpoint: Option<String>,
}

/// `GET /api/v1/callbacks/deliveries`' filters (the handler reads them by name).
#[derive(serde::Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // parameters only
pub struct DeliveriesQuery {
    /// An endpoint's id.
    endpoint: Option<String>,
    /// A delivery state.
    #[param(schema_with = delivery_state)]
    state: Option<String>,
    /// A conversion's id.
    conversion: Option<String>,
    /// A click's id (its CREATED callbacks).
    click: Option<String>,
    /// Created at or after (UTC milliseconds).
    from: Option<i64>,
    /// Created before (UTC milliseconds).
    to: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^(|[0-9]{1,18})$")]
    cursor: Option<String>,
    /// Rows per page: 1 to 500; default 50.
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
}

/// A delivery's state.
pub fn delivery_state() -> Schema {
    Schema::Object(strings(&["pending", "delivered", "failed", "skipped"]).build())
}

/// `GET /api/v1/callbacks/endpoints/{id}/attempts`' page size.
#[derive(serde::Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // parameters only
pub struct AttemptsQuery {
    /// `next_cursor` of the previous page.
    #[param(pattern = "^(|[0-9]{1,18})$")]
    cursor: Option<String>,
    /// Rows per page: 1 to 500; default 50.
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
}

/// The query parameters of a route, from the type its handler reads them into.
fn query_of(route: &Route) -> Vec<Parameter> {
    let q = || Some(ParameterIn::Query);
    match (route.method, route.path) {
        ("GET", "/api/v1/conversions") => super::api::SearchQuery::into_params(q),
        ("GET", "/api/v1/balances") => super::api::BalanceQuery::into_params(q),
        ("GET", "/api/v1/users") => super::users::PageQuery::into_params(q),
        ("GET", "/api/v1/users/{user}/conversions") => super::users::ConversionsPageQuery::into_params(q),
        ("GET", "/api/v1/payouts") => super::payouts::ListQuery::into_params(q),
        ("GET", "/api/v1/plugins") => super::plugins::ListQuery::into_params(q),
        ("GET", "/api/v1/merchants/{merchant}/shadow") => super::plugins::DiffQuery::into_params(q),
        ("POST", "/api/v1/networks/{network}/imports") => super::admin::UploadQuery::into_params(q),
        ("GET", "/api/v1/callbacks/deliveries") => DeliveriesQuery::into_params(q),
        ("GET", "/api/v1/callbacks/endpoints/{id}/attempts") => AttemptsQuery::into_params(q),
        ("GET", "/api/v1/backtests") => super::backtests::ListQuery::into_params(q),
        ("GET", "/api/v1/merchants")
        | ("GET", "/api/v1/networks")
        | ("GET", "/api/v1/jobs")
        | ("GET", "/api/v1/partners")
        | ("GET", "/api/v1/callbacks/endpoints")
        | ("GET", "/api/v1/networks/{network}/merchant-refs") => super::page::Page::into_params(q),
        ("GET", "/api/v1/review") => super::api::ReviewQuery::into_params(q),
        ("GET", "/api/v1/jobs/{name}/runs")
        | ("GET", "/api/v1/alerts")
        | ("GET", "/api/v1/networks/{network}/rejects") => super::page::IdPage::into_params(q),
        _ => Vec::new(),
    }
}

/// The type a route's success answer is: the very type its handler returns in `Json(..)`,
/// so the document describes what the server sends (a test walks the document and fails on
/// any success answer without a typed schema; schemathesis checks the bodies against them).
fn response_of(route: &Route) -> Option<fn() -> Vec<Named>> {
    use super::{admin, api, callbacks, payouts, plugins, users};
    let of: fn() -> Vec<Named> = match (route.method, route.path) {
        ("GET", "/api/v1/openapi.json") => json::<Document>,
        ("GET", "/api/v1/merchants") => json::<api::MerchantsPage>,
        ("GET" | "PUT", "/api/v1/merchants/{merchant}") => json::<api::MerchantView>,
        ("GET", "/api/v1/networks") => json::<api::NetworksPage>,
        ("GET" | "PUT", "/api/v1/networks/{network}") => json::<api::NetworkView>,
        ("POST", "/api/v1/networks/{network}/imports") => json::<crate::imports::FileSummary>,
        ("GET", "/api/v1/networks/{network}/rejects") => json::<admin::RejectsPage>,
        ("GET", "/api/v1/conversions") => json::<api::ConversionsPage>,
        ("GET", "/api/v1/conversions/{id}") => json::<api::Timeline>,
        ("POST", "/api/v1/conversions/{id}/review")
        | ("POST", "/api/v1/conversions/{id}/reprocess")
        | ("POST", "/api/v1/conversions/{id}/attribute") => json::<crate::conversions::Outcome>,
        ("GET", "/api/v1/review") => json::<api::ReviewPage>,
        ("POST", "/api/v1/conversions/reprocess") => json::<users::Reprocessed>,
        ("GET", "/api/v1/users") => json::<users::UsersPage>,
        ("GET", "/api/v1/users/{user}") => json::<crate::users::User>,
        ("PUT", "/api/v1/users/{user}") => json::<users::UserSaved>,
        ("GET", "/api/v1/users/{user}/conversions") => json::<users::UserConversionsPage>,
        ("GET", "/api/v1/networks/{network}/merchant-refs") => json::<users::MerchantRefsPage>,
        ("PUT", "/api/v1/networks/{network}/merchant-refs/{merchant_ref}") => json::<users::RefSaved>,
        ("GET", "/api/v1/balances") => json::<api::BalancesPage>,
        ("GET", "/api/v1/jobs") => json::<api::JobsPage>,
        ("GET", "/api/v1/jobs/{name}/runs") => json::<api::RunsPage>,
        ("POST", "/api/v1/jobs/{name}/run") => json::<crate::scheduler::RunInfo>,
        ("GET", "/api/v1/plugins") => json::<plugins::PluginsPage>,
        ("POST", "/api/v1/plugins") => json::<crate::registry::Uploaded>,
        ("POST", "/api/v1/merchants/{merchant}/rules/activate")
        | ("POST", "/api/v1/merchants/{merchant}/rules/rollback")
        | ("PUT", "/api/v1/merchants/{merchant}/shadow")
        | ("POST", "/api/v1/networks/{network}/adapter/activate")
        | ("POST", "/api/v1/networks/{network}/adapter/rollback")
        | ("POST", "/api/v1/callbacks/endpoints/{id}/plugin/activate")
        | ("POST", "/api/v1/callbacks/endpoints/{id}/plugin/rollback") => json::<crate::registry::Activation>,
        ("GET", "/api/v1/merchants/{merchant}/rules/history")
        | ("GET", "/api/v1/callbacks/endpoints/{id}/plugin/history") => json::<plugins::ActivationsList>,
        ("GET", "/api/v1/merchants/{merchant}/shadow") => json::<crate::registry::Comparison>,
        ("POST", "/api/v1/merchants/{merchant}/backtest") | ("GET", "/api/v1/backtests/{id}") => {
            json::<crate::backtests::Backtest>
        }
        ("GET", "/api/v1/backtests") => json::<super::backtests::BacktestPage>,
        ("GET", "/api/v1/partners") => json::<api::PartnersPage>,
        ("PUT", "/api/v1/partners/{partner}") => json::<crate::callbacks::Partner>,
        ("PUT", "/api/v1/callbacks/endpoints/{id}") => json::<crate::callbacks::EndpointView>,
        ("GET", "/api/v1/callbacks/endpoints") => json::<callbacks::EndpointsPage>,
        ("POST", "/api/v1/callbacks/endpoints/{id}/enable") | ("POST", "/api/v1/callbacks/endpoints/{id}/disable") => {
            json::<callbacks::Toggled>
        }
        ("POST", "/api/v1/callbacks/endpoints/{id}/test") => json::<crate::callbacks::deliver::TestReport>,
        ("GET", "/api/v1/callbacks/endpoints/{id}/attempts") => json::<callbacks::AttemptsPage>,
        ("GET", "/api/v1/callbacks/deliveries") => json::<callbacks::DeliveriesPage>,
        ("GET", "/api/v1/callbacks/deliveries/{id}") => json::<callbacks::DeliveryDetail>,
        ("POST", "/api/v1/callbacks/deliveries/{id}/replay") => json::<callbacks::ReplayedOne>,
        ("POST", "/api/v1/callbacks/replay") => json::<callbacks::ReplayedRange>,
        ("GET", "/api/v1/alerts") => json::<callbacks::AlertsPage>,
        ("POST", "/api/v1/users/{id}/payouts") => json::<payouts::Requested>,
        ("GET", "/api/v1/payouts") => json::<crate::payouts::store::Page>,
        ("GET", "/api/v1/payouts/{id}") => json::<payouts::PayoutDetail>,
        ("POST", "/api/v1/payouts/{id}/approve")
        | ("POST", "/api/v1/payouts/{id}/reject")
        | ("POST", "/api/v1/payouts/{id}/paid")
        | ("POST", "/api/v1/payouts/{id}/failed") => json::<payouts::Stepped>,
        _ => return None,
    };
    Some(of)
}

/// `GET /api/v1/openapi.json`: an OpenAPI 3.1 document. Its own schema is the OpenAPI
/// specification's; this names the members every document has.
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only: the handler returns utoipa's `OpenApi`, which has no `ToSchema`
pub struct Document {
    /// `3.1.0`.
    openapi: String,
    /// Title, version, description.
    #[schema(value_type = Object)]
    info: serde_json::Value,
    /// Every route.
    #[schema(value_type = Object)]
    paths: serde_json::Value,
    /// Schemas and security schemes.
    #[schema(value_type = Object)]
    components: serde_json::Value,
}

/// The success status of a route (`201` when it may create, `204` when it answers nothing).
fn success(route: &Route) -> &'static [(&'static str, &'static str)] {
    match (route.method, route.path) {
        ("PUT", "/api/v1/users/{user}") => &[("200", "Updated"), ("201", "Created")],
        ("POST", "/api/v1/plugins") => &[("200", "Already stored"), ("201", "Stored")],
        ("POST", "/api/v1/users/{id}/payouts") => {
            &[("200", "The payout this Idempotency-Key made"), ("201", "Requested")]
        }
        ("POST", "/api/v1/merchants/{merchant}/backtest") => {
            &[("202", "Queued: the job (state `queued`), also at the URL in `Location`")]
        }
        ("DELETE", _) => &[("204", "Done")],
        _ => &[("200", "Success")],
    }
}

/// The document.
pub fn document() -> OpenApi {
    let error = ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some("Every refusal: a machine code and a reason for people."))
        .property(
            "error",
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .property("code", ObjectBuilder::new().schema_type(Type::String))
                .property("message", ObjectBuilder::new().schema_type(Type::String))
                .required("code")
                .required("message"),
        )
        .required("error")
        .build();
    let error_response = |what: &str| {
        ResponseBuilder::new()
            .description(what)
            .content("application/json", ContentBuilder::new().schema(Some(Ref::from_schema_name("Error"))).build())
            .build()
    };
    let mut components = ComponentsBuilder::new()
        .schema("Error", error)
        .security_scheme("bearer", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
    // Every named schema once: two Rust types of one name (`HistoryEntry` of conversions
    // and of payouts) would otherwise overwrite each other silently, and a body would be
    // documented as the other's. Such a type takes `#[schema(as = ...)]`.
    let mut named: std::collections::BTreeMap<String, RefOr<Schema>> = std::collections::BTreeMap::new();
    let mut add = |all: Vec<Named>| -> Ref {
        let name = all[0].0.clone();
        for (n, schema) in all {
            if let Some(before) = named.get(&n) {
                assert!(before == &schema, "two different types are both named {n} in the OpenAPI document");
            }
            named.insert(n, schema);
        }
        Ref::from_schema_name(name)
    };
    let mut paths = Paths::new();
    for route in ROUTES {
        let mut op = OperationBuilder::new()
            .operation_id(Some(format!("{} {}", route.method.to_lowercase(), route.path)))
            .summary(Some(route.summary))
            .tag(route.tag);
        for (status, what) in success(route) {
            let response = if *status == "204" {
                ResponseBuilder::new().description(*what).build()
            } else {
                // Untyped: a free-form object, which the test of the document refuses.
                let schema: RefOr<Schema> = match response_of(route) {
                    Some(of) => add(of()).into(),
                    None => ObjectBuilder::new().schema_type(Type::Object).build().into(),
                };
                ResponseBuilder::new()
                    .description(*what)
                    .content("application/json", ContentBuilder::new().schema(Some(schema)).build())
                    .build()
            };
            op = op.response(*status, response);
        }
        // Every refusal any admin route can answer with: the bodies are checked by the
        // extractors (400 malformed, 413 too large, 415 not JSON) before the handler's own
        // checks (400 naming the field, 404 an unknown resource, 409 a conflicting state or
        // a key in flight, 422 refused by a plugin or a rule of the ledger).
        if route.scope.is_some() {
            op = op
                .response("400", error_response("The request is malformed; the reason says which field"))
                .response("401", error_response("Missing, unknown, expired or revoked token"))
                .response("403", error_response("The token's scope is too low"))
                .response("404", error_response("No such resource"))
                .response("409", error_response("The resource's state does not allow it, or it changed since read"))
                .response("413", error_response("The body is over the route's cap; the reason names the setting"))
                .response("415", error_response("The body is not of the declared content type"))
                .response("422", error_response("Refused; the reason says why"))
                .response("503", error_response("The database is unavailable; retry later"));
        }
        if let Some(scope) = route.scope {
            op = op
                .security(SecurityRequirement::new("bearer", Vec::<String>::new()))
                .description(Some(format!("Needs a token of scope `{}` or above.", scope.as_str())));
        }
        if route.method != "GET" {
            op = op.parameter(
                ParameterBuilder::new()
                    .name("Idempotency-Key")
                    .parameter_in(ParameterIn::Header)
                    .required(Required::False)
                    .description(Some(
                        "Replays the first answer (with `Idempotent-Replayed: true`) for a retry with the same key, \
                         caller, method, path and body, for 24 hours; the same key with another body is refused \
                         (422), a retry while the first runs gets 409. 1 to 255 visible ASCII characters.",
                    ))
                    .schema(Some(
                        ObjectBuilder::new()
                            .schema_type(Type::String)
                            .min_length(Some(1))
                            .max_length(Some(255))
                            .pattern(Some("^[!-~]([ -~]*[!-~])?$")),
                    )),
            );
        }
        for segment in route.path.split('/') {
            if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                op = op.parameter(
                    ParameterBuilder::new()
                        .name(name)
                        .parameter_in(ParameterIn::Path)
                        .required(Required::True)
                        .schema(Some(path_schema(route.path, name))),
                );
            }
        }
        for p in query_of(route) {
            op = op.parameter(p);
        }
        let (body, required) = match route.body {
            Body::None => (None, false),
            Body::Json(schema) => (Some(("application/json", Some(schema))), true),
            Body::OptionalJson(schema) => (Some(("application/json", Some(schema))), false),
            Body::Bytes => (Some(("application/octet-stream", None)), true),
        };
        if let Some((media, schema)) = body {
            let schema: RefOr<Schema> = match schema {
                Some(of) => add(of()).into(),
                None => ObjectBuilder::new()
                    .schema_type(Type::String)
                    .min_length(Some(1))
                    .format(Some(utoipa::openapi::SchemaFormat::Custom("binary".into())))
                    .build()
                    .into(),
            };
            op = op.request_body(Some(
                RequestBodyBuilder::new()
                    .required(Some(if required { Required::True } else { Required::False }))
                    .content(media, ContentBuilder::new().schema(Some(schema)).build())
                    .build(),
            ));
        }
        paths.add_path_operation(route.path, vec![method(route.method)], op.build());
    }
    for (name, schema) in named {
        components = components.schema(name, schema);
    }
    OpenApiBuilder::new()
        .info(InfoBuilder::new().title("cashbackd admin API").version(env!("CARGO_PKG_VERSION")).description(Some(
            "Bearer tokens (`cashbackd token create NAME --scope read|write|admin`), stored hashed; \
                     scopes are ordered read < write < admin.",
        )))
        .paths(paths)
        .components(Some(components.build()))
        .build()
}

/// `GET /api/v1/openapi.json` (public: it describes routes, it holds no data).
pub async fn serve() -> axum::Json<OpenApi> {
    axum::Json(document())
}
