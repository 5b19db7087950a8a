//! Partner-callback plugins on the delivery path.
//!
//! An endpoint with an active `partner-callback` plugin (`cashbackd plugin activate REF
//! --endpoint ID`) has its requests rendered by the plugin instead of the built-in
//! template and signatures: the partner's own format or signature scheme, without a
//! release of cashbackd. Everything else stays the host's: which changes go out and in
//! which order, the address checks (`net.rs`), the timeout, only a 200 counting, retries,
//! the delivery log.
//!
//! The plugin is called once per attempt in a fresh instance from the cached
//! `InstancePre` (no compilation on the request path: a digest is compiled once per
//! process, on activation or on its first delivery), off the async workers, with the
//! plugin's deadline and memory cap. What it returns is checked before anything is sent:
//! the request must go to the endpoint's own scheme, host and port, so a plugin that is
//! given the endpoint's secret cannot send it anywhere else.

use super::RequestView;
use crate::callbacks::template::Values;
use crate::callbacks::{Endpoint, Method};
use crate::db::Db;
use crate::outbox::{ChangeKind, Snapshot};
use crate::plugin::wit::latest;
use crate::plugin::{LoadedPlugin, PluginKind, PluginRuntime};
use sqlx::Row;
use std::sync::Arc;

/// The plugin activated on an endpoint and its configuration (JSON), as the endpoint's
/// row holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointPlugin {
    /// The component's digest.
    pub digest: String,
    /// Its configuration for this endpoint.
    pub config: String,
}

/// What the plugin is told about one change, besides its values.
pub(super) struct ChangeInput<'a> {
    /// The conversion or click; none for a payout.
    pub snapshot: Option<&'a Snapshot>,
    pub delivery_id: i64,
    pub attempt: i64,
    pub changed_at: i64,
    pub now: i64,
}

/// Renders one attempt's request with the endpoint's plugin. Returns the request to send
/// and the one to log (with the values the plugin marked secret masked), or why there is
/// none: that reason is the attempt's error, retried on the endpoint's schedule.
pub(super) async fn render(
    runtime: Option<&Arc<PluginRuntime>>,
    db: &Db,
    endpoint: &Endpoint,
    active: &EndpointPlugin,
    url: String,
    values: &Values,
    change: ChangeInput<'_>,
) -> Result<(RequestView, RequestView), String> {
    let runtime = runtime.ok_or("this delivery worker runs without a plugin runtime")?.clone();
    let plugin = load(&runtime, db, &active.digest).await?;
    if plugin.kind() != PluginKind::PartnerCallback {
        // The registry refuses such an activation; a row edited by hand must not run
        // another world's plugin here either.
        return Err(format!("{} is a {}, not a partner-callback plugin", plugin.label(), plugin.kind()));
    }
    let config_value: serde_json::Value =
        serde_json::from_str(&active.config).map_err(|e| format!("the endpoint's plugin configuration: {e}"))?;
    let config = plugin.manifest.validate_config(&config_value).map_err(|e| format!("{}: {e}", plugin.label()))?;
    let spec = &endpoint.spec;
    let wit_endpoint = latest::CallbackEndpoint {
        id: spec.id.clone(),
        partner_id: spec.partner_id.clone(),
        url: url.clone(),
        url_template: spec.url_template.clone(),
        method: match spec.method {
            Method::Get => latest::CallbackMethod::Get,
            Method::Post => latest::CallbackMethod::Post,
        },
        params: spec.params.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        secret: spec.secrets.first().map(|s| s.expose().to_string()),
    };
    let wit_change = change_of(&change, values);
    let p = plugin.clone();
    let outcome =
        tokio::task::spawn_blocking(move || runtime.render_callback(&p, &config, &wit_change, &wit_endpoint).result)
            .await
            .map_err(|e| format!("the plugin call did not finish: {e}"))?;
    let request = outcome.map_err(|e| e.to_string())?;
    checked(&url, request)
}

/// The plugin's request, checked: a method the host sends, an absolute http(s) URL on
/// the endpoint's own origin. Returns it as sent and as logged.
fn checked(endpoint_url: &str, r: latest::CallbackRequest) -> Result<(RequestView, RequestView), String> {
    let origin = |u: &url::Url| (u.scheme().to_string(), u.host_str().map(str::to_string), u.port_or_known_default());
    let wanted = url::Url::parse(endpoint_url).map_err(|e| format!("the endpoint's URL does not parse: {e}"))?;
    let got = url::Url::parse(&r.url).map_err(|e| format!("the plugin returned a URL that does not parse: {e}"))?;
    if origin(&got) != origin(&wanted) {
        return Err(format!(
            "the plugin's request goes to {}://{}, not to the endpoint's {}://{}: refused",
            got.scheme(),
            got.host_str().unwrap_or(""),
            wanted.scheme(),
            wanted.host_str().unwrap_or("")
        ));
    }
    let method = match r.method {
        latest::CallbackMethod::Get => "GET",
        latest::CallbackMethod::Post => "POST",
        latest::CallbackMethod::Put => "PUT",
    };
    let request = RequestView { method: method.into(), url: r.url, headers: r.headers, body: r.body };
    let mut logged = request.clone();
    for name in &r.redact {
        logged.url = crate::callbacks::sign::mask_signature_param(&logged.url, name);
        for (k, v) in &mut logged.headers {
            if k.eq_ignore_ascii_case(name) {
                *v = "***".into();
            }
        }
    }
    Ok((request, logged))
}

/// The WIT view of a change.
fn change_of(c: &ChangeInput<'_>, values: &Values) -> latest::Change {
    let (subject, event) = match c.snapshot {
        None => (latest::CallbackSubject::Payout, "payout.changed"),
        Some(s) if s.kind == ChangeKind::Conversion => (latest::CallbackSubject::Conversion, "conversion.changed"),
        Some(_) => (latest::CallbackSubject::Click, "click.created"),
    };
    let conversion = c.snapshot.map(|s| {
        let conversion = s.kind == ChangeKind::Conversion;
        latest::ConversionSnapshot {
            conversion_id: if conversion {
                crate::conversions::conversion_id(&s.network_id, &s.transaction_id)
            } else {
                String::new()
            },
            network: s.network_id.clone(),
            transaction_id: if conversion { s.transaction_id.clone() } else { String::new() },
            click_id: s.click_id.clone(),
            user_id: s.user_id.clone(),
            order_id: s.order_id.clone(),
            event_type: s.event_type.clone(),
            state: wit_state(s.state),
            status: s.status.as_str().to_string(),
            amount: s.amount,
            commission: s.commission,
            cashback: s.cashback,
            currency: if conversion { s.currency.clone() } else { String::new() },
            reason: s.reason.clone(),
            reward_delay_days: s.reward_delay_days.and_then(|d| u32::try_from(d).ok()),
            line_ids: s.line_ids.clone(),
        }
    });
    latest::Change {
        subject,
        event: event.into(),
        delivery_id: super::message_id(c.delivery_id),
        attempt: u32::try_from(c.attempt).unwrap_or(u32::MAX),
        changed_at: c.changed_at,
        now: c.now,
        conversion,
        values: values.iter().map(|(k, v)| ((*k).to_string(), v.clone())).collect(),
    }
}

fn wit_state(s: crate::conversions::State) -> latest::ConversionState {
    use crate::conversions::State;
    match s {
        State::Created => latest::ConversionState::Created,
        State::Pending => latest::ConversionState::Pending,
        State::Adjusted => latest::ConversionState::Adjusted,
        State::Completed => latest::ConversionState::Completed,
        State::Rejected => latest::ConversionState::Rejected,
        State::Reversed => latest::ConversionState::Reversed,
    }
}

/// The plugin by digest: from this process's cache, else its content store, else the
/// `plugins` table (a replica that has not seen it yet), compiled once and kept.
async fn load(runtime: &Arc<PluginRuntime>, db: &Db, digest: &str) -> Result<Arc<LoadedPlugin>, String> {
    let parsed = crate::plugin::Digest::parse(digest).ok_or_else(|| format!("bad plugin digest {digest:?}"))?;
    if let Ok(p) = runtime.load_digest(&parsed) {
        return Ok(p);
    }
    let row = sqlx::query("SELECT bytes FROM plugins WHERE digest = $1")
        .bind(digest)
        .fetch_optional(&db.pool)
        .await
        .map_err(|e| format!("reading plugin {digest}: {e}"))?
        .ok_or_else(|| format!("plugin {digest} is not stored"))?;
    let bytes: Vec<u8> = row.try_get(0).map_err(|e| format!("reading plugin {digest}: {e}"))?;
    let runtime = runtime.clone();
    tokio::task::spawn_blocking(move || runtime.load(&bytes))
        .await
        .map_err(|e| format!("loading plugin {digest}: {e}"))?
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(url: &str) -> latest::CallbackRequest {
        latest::CallbackRequest {
            method: latest::CallbackMethod::Get,
            url: url.into(),
            headers: vec![("X-Sig".into(), "abc".into())],
            body: None,
            redact: vec!["hash".into(), "x-sig".into()],
        }
    }

    #[test]
    fn a_request_to_another_host_is_refused() {
        let base = "https://partner.example/pb?a=1";
        let why = checked(base, request("https://evil.example/pb?hash=1")).expect_err("refused");
        assert!(why.contains("evil.example"), "{why}");
        assert!(checked(base, request("http://partner.example/pb")).is_err(), "another scheme");
        assert!(checked(base, request("https://partner.example:444/pb")).is_err(), "another port");
    }

    #[test]
    fn redacted_parameters_and_headers_are_masked_in_the_log_only() {
        let (sent, logged) =
            checked("https://partner.example/pb", request("https://partner.example/pb?a=1&hash=deadbeef")).expect("ok");
        assert_eq!(sent.url, "https://partner.example/pb?a=1&hash=deadbeef");
        assert_eq!(logged.url, "https://partner.example/pb?a=1&hash=***");
        assert_eq!(sent.headers[0].1, "abc");
        assert_eq!(logged.headers[0].1, "***");
    }
}
