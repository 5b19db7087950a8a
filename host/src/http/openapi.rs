//! The OpenAPI 3.1 document of the admin API, served at `/api/v1/openapi.json`, built with
//! `utoipa`'s model from [`ROUTES`]: every `/api/v1` route with its method, scope and
//! summary. A test reads the routers' source and fails when a route is missing here, and
//! another calls every route listed here without a token and expects a refusal, so the
//! table, the routers and the document cannot drift apart.

use crate::auth::Scope;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, Paths, Ref, Required};

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
    /// Whether it takes a body, and which media type.
    pub body: Option<&'static str>,
}

const JSON: Option<&str> = Some("application/json");
const BYTES: Option<&str> = Some("application/octet-stream");

const fn r(
    method: &'static str,
    path: &'static str,
    scope: Scope,
    tag: &'static str,
    summary: &'static str,
    body: Option<&'static str>,
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
        body: None,
    },
    r("GET", "/api/v1/merchants", Read, "merchants", "Merchants with their rule chains", None),
    r("GET", "/api/v1/merchants/{merchant}", Read, "merchants", "One merchant", None),
    r("PUT", "/api/v1/merchants/{merchant}", Admin, "merchants", "Create or update a merchant", JSON),
    r("GET", "/api/v1/networks", Read, "networks", "Networks (inbound secrets masked)", None),
    r("GET", "/api/v1/networks/{network}", Read, "networks", "One network", None),
    r("PUT", "/api/v1/networks/{network}", Admin, "networks", "Create or update a network", JSON),
    r(
        "POST",
        "/api/v1/networks/{network}/imports",
        Write,
        "imports",
        "Import a report file through the adapter",
        BYTES,
    ),
    r("GET", "/api/v1/networks/{network}/rejects", Read, "imports", "Refused postbacks with reasons", None),
    r("GET", "/api/v1/conversions", Read, "conversions", "Search conversions", None),
    r(
        "GET",
        "/api/v1/conversions/{id}",
        Read,
        "conversions",
        "A conversion's timeline: stages, history, postings",
        None,
    ),
    r("POST", "/api/v1/conversions/{id}/review", Write, "review", "Approve, reject or hold a conversion", JSON),
    r("GET", "/api/v1/review", Read, "review", "The review queue", None),
    r(
        "POST",
        "/api/v1/conversions/{id}/reprocess",
        Write,
        "conversions",
        "Process a parked or failed conversion again",
        JSON,
    ),
    r(
        "POST",
        "/api/v1/conversions/{id}/attribute",
        Write,
        "conversions",
        "Attribute a parked conversion by hand",
        JSON,
    ),
    r(
        "POST",
        "/api/v1/conversions/reprocess",
        Write,
        "conversions",
        "Process every failed or parked conversion again",
        JSON,
    ),
    r("GET", "/api/v1/users", Read, "users", "User accounts, by id (cursor pages)", None),
    r("GET", "/api/v1/users/{user}", Read, "users", "A user account with its balances", None),
    r("PUT", "/api/v1/users/{user}", Write, "users", "Create a user account or replace its profile", JSON),
    r(
        "GET",
        "/api/v1/users/{user}/conversions",
        Read,
        "users",
        "A user's conversions, newest first (cursor pages)",
        None,
    ),
    r("GET", "/api/v1/networks/{network}/merchant-refs", Read, "networks", "A network's merchant references", None),
    r(
        "PUT",
        "/api/v1/networks/{network}/merchant-refs/{merchant_ref}",
        Admin,
        "networks",
        "Map a merchant reference to a merchant",
        JSON,
    ),
    r("GET", "/api/v1/balances", Read, "ledger", "Account balances", None),
    r("GET", "/api/v1/jobs", Read, "jobs", "Scheduled jobs and their last runs", None),
    r("GET", "/api/v1/jobs/{name}/runs", Read, "jobs", "A job's runs", None),
    r("POST", "/api/v1/jobs/{name}/run", Write, "jobs", "Run a job now", None),
    r("GET", "/api/v1/plugins", Read, "plugins", "Stored plugin versions and where each is used", None),
    r("POST", "/api/v1/plugins", Admin, "plugins", "Upload a plugin component (validated)", BYTES),
    r("DELETE", "/api/v1/plugins/{reference}", Admin, "plugins", "Delete an unused version", None),
    r("POST", "/api/v1/merchants/{merchant}/rules/activate", Admin, "plugins", "Activate a rule version", JSON),
    r("POST", "/api/v1/merchants/{merchant}/rules/rollback", Admin, "plugins", "Roll back the last activation", JSON),
    r("GET", "/api/v1/merchants/{merchant}/rules/history", Read, "plugins", "Activation history", None),
    r("GET", "/api/v1/merchants/{merchant}/shadow", Read, "plugins", "Shadow candidate's differences", None),
    r("PUT", "/api/v1/merchants/{merchant}/shadow", Admin, "plugins", "Run a candidate in shadow", JSON),
    r("DELETE", "/api/v1/merchants/{merchant}/shadow", Admin, "plugins", "Stop the shadow candidate", None),
    r(
        "POST",
        "/api/v1/merchants/{merchant}/backtest",
        Read,
        "plugins",
        "Backtest a version over past conversions",
        JSON,
    ),
    r("POST", "/api/v1/networks/{network}/adapter/activate", Admin, "plugins", "Activate an adapter version", JSON),
    r("POST", "/api/v1/networks/{network}/adapter/rollback", Admin, "plugins", "Roll back the adapter", None),
    r("GET", "/api/v1/partners", Read, "callbacks", "Partners who receive callbacks", None),
    r("PUT", "/api/v1/partners/{partner}", Admin, "callbacks", "Create or rename a partner", JSON),
    r(
        "PUT",
        "/api/v1/callbacks/endpoints/{id}",
        Admin,
        "callbacks",
        "Create or replace a callback endpoint (its URL, signing, retries; merchant, network and states filters)",
        JSON,
    ),
    r("GET", "/api/v1/callbacks/endpoints", Read, "callbacks", "Partner callback endpoints", None),
    r(
        "POST",
        "/api/v1/callbacks/endpoints/{id}/enable",
        Write,
        "callbacks",
        "Enable an endpoint and replay its backlog",
        None,
    ),
    r("POST", "/api/v1/callbacks/endpoints/{id}/disable", Write, "callbacks", "Disable an endpoint", None),
    r("POST", "/api/v1/callbacks/endpoints/{id}/test", Write, "callbacks", "Send a sample callback", JSON),
    r("GET", "/api/v1/callbacks/endpoints/{id}/attempts", Read, "callbacks", "An endpoint's delivery attempts", None),
    r(
        "GET",
        "/api/v1/callbacks/deliveries",
        Read,
        "callbacks",
        "Deliveries, by endpoint, state, conversion or click",
        None,
    ),
    r("GET", "/api/v1/callbacks/deliveries/{id}", Read, "callbacks", "One delivery with its attempts", None),
    r("POST", "/api/v1/callbacks/deliveries/{id}/replay", Write, "callbacks", "Replay one delivery", None),
    r("POST", "/api/v1/callbacks/replay", Write, "callbacks", "Replay deliveries in a time range", JSON),
    r("GET", "/api/v1/alerts", Read, "callbacks", "Alerts (endpoints disabled after failures)", None),
    r(
        "POST",
        "/api/v1/users/{id}/payouts",
        Write,
        "payouts",
        "Request a payout of a user's available cashback (all of it without an amount)",
        JSON,
    ),
    r("GET", "/api/v1/payouts", Read, "payouts", "Payouts, by status or user, a page at a time", None),
    r("GET", "/api/v1/payouts/{id}", Read, "payouts", "A payout with its history and ledger postings", None),
    r("POST", "/api/v1/payouts/{id}/approve", Write, "payouts", "Approve a requested payout", JSON),
    r(
        "POST",
        "/api/v1/payouts/{id}/reject",
        Write,
        "payouts",
        "Reject a payout: the amount returns to available",
        JSON,
    ),
    r("POST", "/api/v1/payouts/{id}/paid", Write, "payouts", "Mark a payout paid with the external reference", JSON),
    r(
        "POST",
        "/api/v1/payouts/{id}/failed",
        Write,
        "payouts",
        "Mark a payout's payment failed: the amount returns to available",
        JSON,
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
    let mut paths = Paths::new();
    for route in ROUTES {
        let mut op = OperationBuilder::new()
            .operation_id(Some(format!("{} {}", route.method.to_lowercase(), route.path)))
            .summary(Some(route.summary))
            .tag(route.tag)
            .response(
                "200",
                ResponseBuilder::new()
                    .description("Success (JSON)")
                    .content("application/json", ContentBuilder::new().schema(Some(ObjectBuilder::new())).build())
                    .build(),
            )
            .response("400", error_response("The request is malformed; the reason says which field"))
            .response("422", error_response("Refused; the reason says why"))
            .response("503", error_response("The database is unavailable; retry later"));
        if route.tag == "payouts" {
            op = op.response("404", error_response("No such user or payout")).response(
                "409",
                error_response("The payout's status does not allow the step, or it changed since read"),
            );
        }
        if let Some(scope) = route.scope {
            op = op
                .security(SecurityRequirement::new("bearer", Vec::<String>::new()))
                .description(Some(format!("Needs a token of scope `{}` or above.", scope.as_str())))
                .response("401", error_response("Missing, unknown, expired or revoked token"))
                .response("403", error_response("The token's scope is too low"));
        }
        if route.method != "GET" && route.method != "DELETE" {
            op = op.parameter(
                ParameterBuilder::new()
                    .name("Idempotency-Key")
                    .parameter_in(ParameterIn::Header)
                    .required(Required::False)
                    .description(Some("Replays the first answer for a repeated key (24 hours)"))
                    .schema(Some(ObjectBuilder::new().schema_type(Type::String))),
            );
        }
        for segment in route.path.split('/') {
            if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                op = op.parameter(
                    ParameterBuilder::new()
                        .name(name)
                        .parameter_in(ParameterIn::Path)
                        .required(Required::True)
                        .schema(Some(ObjectBuilder::new().schema_type(Type::String))),
                );
            }
        }
        if let Some(media) = route.body {
            let schema = if media == "application/json" {
                ObjectBuilder::new().schema_type(Type::Object).build()
            } else {
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .format(Some(utoipa::openapi::SchemaFormat::Custom("binary".into())))
                    .build()
            };
            op = op.request_body(Some(
                RequestBodyBuilder::new().content(media, ContentBuilder::new().schema(Some(schema)).build()).build(),
            ));
        }
        paths.add_path_operation(route.path, vec![method(route.method)], op.build());
    }
    OpenApiBuilder::new()
        .info(InfoBuilder::new().title("cashbackd admin API").version(env!("CARGO_PKG_VERSION")).description(Some(
            "Bearer tokens (`cashbackd token create NAME --scope read|write|admin`), stored hashed; \
                     scopes are ordered read < write < admin.",
        )))
        .paths(paths)
        .components(Some(
            ComponentsBuilder::new()
                .schema("Error", error)
                .security_scheme(
                    "bearer",
                    SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
                )
                .build(),
        ))
        .build()
}

/// `GET /api/v1/openapi.json` (public: it describes routes, it holds no data).
pub async fn serve() -> axum::Json<OpenApi> {
    axum::Json(document())
}
