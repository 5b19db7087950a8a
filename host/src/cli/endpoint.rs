//! `cashbackd endpoint ...`: partners' callback endpoints: URL templates, signing secrets
//! and their rotation, retries, the states they take, enabling and the tester.

use super::*;

/// `cashbackd endpoint ...`
#[derive(Debug, Subcommand)]
// Parsed once per process: the size of the `add` variant does not matter.
#[allow(clippy::large_enum_variant)]
pub enum EndpointCommand {
    /// Create or replace a callback endpoint (docs/CALLBACKS.md lists the macros).
    Add {
        /// The endpoint's id.
        id: String,
        /// The partner it belongs to.
        #[arg(long)]
        partner: String,
        /// URL template, e.g. `https://p.example/cb?state=[%CASHBACK:STATE%]&cid={click_id}&pay={payout}`.
        #[arg(long)]
        url: String,
        /// GET (values in the URL, HMAC query signature) or POST (JSON body, Standard Webhooks).
        #[arg(long, default_value = "get")]
        method: String,
        /// A static custom parameter `name=value` (repeatable).
        #[arg(long = "param")]
        params: Vec<String>,
        /// The signing secret: `whsec_<base64>` (any text of 16+ characters for GET).
        /// Prefer the environment variable: it stays out of the shell history.
        #[arg(long, env = "CASHBACKD_CALLBACK_SECRET", hide_env_values = true, conflicts_with = "generate_secret")]
        secret: Option<String>,
        /// Generate a `whsec_` secret and print it once.
        #[arg(long)]
        generate_secret: bool,
        /// Query parameter of the GET signature.
        #[arg(long, default_value = "signature")]
        signature_param: String,
        /// Only this merchant's conversions.
        #[arg(long)]
        merchant: Option<String>,
        /// Only this network's conversions.
        #[arg(long)]
        network: Option<String>,
        /// Only conversions whose click carried a ref_id (seed 003).
        #[arg(long)]
        require_ref_id: bool,
        /// Only these states, comma-separated: CREATED (sent on every click, seed 001),
        /// PENDING, ADJUSTED, COMPLETED, REJECTED, REVERSED [default: every state].
        #[arg(long, value_delimiter = ',')]
        states: Vec<String>,
        /// What it is sent, comma-separated: `conversions` (every state of a
        /// conversion), `payouts` (every step of a payout).
        #[arg(long, default_value = "conversions")]
        events: String,
        // Unset, these take the configuration's callbacks.* (seed 003's values by default).
        /// Attempts in all [default: callbacks.max_attempts, 3].
        #[arg(long)]
        max_attempts: Option<u32>,
        /// fixed or exponential [default: callbacks.backoff, fixed].
        #[arg(long)]
        backoff: Option<String>,
        /// Seconds between attempts (the first wait, with exponential backoff) [default:
        /// callbacks.retry_delay_secs, 300].
        #[arg(long)]
        retry_delay: Option<i64>,
        /// Longest wait in seconds (also caps a partner's Retry-After) [default:
        /// callbacks.max_delay_secs, 86400].
        #[arg(long)]
        max_delay: Option<i64>,
        /// Random spread of each wait, in percent [default: callbacks.jitter_pct, 0].
        #[arg(long)]
        jitter: Option<u32>,
        /// Request timeout in milliseconds [default: callbacks.timeout_ms, 10000].
        #[arg(long)]
        timeout_ms: Option<i64>,
        /// Failed attempts in a row after which the endpoint is disabled [default:
        /// callbacks.disable_after, 20].
        #[arg(long)]
        disable_after: Option<u32>,
    },
    /// Every endpoint (secrets masked) with its backlog.
    List,
    /// Enable an endpoint: its backlog is sent, in order.
    Enable {
        /// The endpoint.
        id: String,
        /// Do not queue again the deliveries given up during its failures.
        #[arg(long)]
        no_replay: bool,
    },
    /// Disable an endpoint: its deliveries wait.
    Disable {
        /// The endpoint.
        id: String,
        /// Why.
        #[arg(long, default_value = "disabled by an operator")]
        reason: String,
    },
    /// Send a sample callback and print the exact request and the response.
    Test {
        /// The endpoint.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rotate the signing secret: a new secret is generated (printed once) and signs
    /// beside the old ones until `drop-old-secrets`.
    RotateSecret {
        /// The endpoint.
        id: String,
    },
    /// Keep only the newest signing secret.
    DropOldSecrets {
        /// The endpoint.
        id: String,
    },
    /// Change only which states an endpoint receives (its other settings, secrets
    /// included, stay as they are).
    SetStates {
        /// The endpoint.
        id: String,
        /// The states, comma-separated: CREATED (sent on every click), PENDING, ADJUSTED,
        /// COMPLETED, REJECTED, REVERSED.
        #[arg(long, value_delimiter = ',', required_unless_present = "every_state", conflicts_with = "every_state")]
        states: Vec<String>,
        /// Every state, CREATED on click included (the default of a new endpoint).
        #[arg(long)]
        every_state: bool,
    },
}

pub(super) enum EndpointAction {
    Add { generated: bool },
    List,
    Enable { id: String, replay: bool },
    Disable { id: String, reason: String },
    Test { id: String, json: bool },
    Rotate { id: String, drop_old: bool },
    SetStates { id: String, states: Option<Vec<String>> },
}

impl EndpointAction {
    fn of(c: &EndpointCommand) -> EndpointAction {
        match c {
            EndpointCommand::Add { generate_secret, .. } => EndpointAction::Add { generated: *generate_secret },
            EndpointCommand::List => EndpointAction::List,
            EndpointCommand::Enable { id, no_replay } => EndpointAction::Enable { id: id.clone(), replay: !no_replay },
            EndpointCommand::Disable { id, reason } => {
                EndpointAction::Disable { id: id.clone(), reason: reason.clone() }
            }
            EndpointCommand::Test { id, json } => EndpointAction::Test { id: id.clone(), json: *json },
            EndpointCommand::RotateSecret { id } => EndpointAction::Rotate { id: id.clone(), drop_old: false },
            EndpointCommand::DropOldSecrets { id } => EndpointAction::Rotate { id: id.clone(), drop_old: true },
            EndpointCommand::SetStates { id, states, every_state } => {
                EndpointAction::SetStates { id: id.clone(), states: Some(states.clone()).filter(|_| !every_state) }
            }
        }
    }
}

/// Runs the command (`cli::run` dispatches here).
pub(super) fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Endpoint { ref command } => {
            let spec = match command {
                EndpointCommand::Add { .. } => Some(endpoint_spec(command, &cli.settings.callbacks)?),
                _ => None,
            };
            let command = EndpointAction::of(command);
            let deliver_config = callbacks_config(cli);
            with_service(cli, |service, _| async move {
                let db = service.db();
                let now = service.now();
                match command {
                    EndpointAction::Add { generated } => {
                        let spec = spec.ok_or_else(|| anyhow::anyhow!("no endpoint"))?;
                        if !crate::callbacks::partners(db).await?.iter().any(|p| p.id == spec.partner_id) {
                            bail!("--partner: no partner {:?} (cashbackd partner add)", spec.partner_id);
                        }
                        crate::callbacks::save_endpoint(db, &spec, now).await?;
                        println!("endpoint {} saved ({} {})", spec.id, spec.method.as_str(), spec.url_template);
                        if generated && let Some(secret) = spec.secrets.first() {
                            println!("{}", secret.expose());
                            eprintln!("signing secret of {}: shown once, give it to the partner now", spec.id);
                        }
                    }
                    EndpointAction::List => {
                        for e in crate::callbacks::endpoints(db).await? {
                            let states = e.states.as_ref().map_or("every state".to_string(), |v| {
                                v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",")
                            });
                            println!(
                                "{:<20} {:<12} {:<4} {:<8} {:<20} backlog {:<5} failures {:<3} states {states} secrets [{}] {}{}",
                                e.id,
                                e.partner_id,
                                e.method.as_str(),
                                if e.enabled { "enabled" } else { "DISABLED" },
                                e.events.join(","),
                                e.backlog,
                                e.consecutive_failures,
                                e.secrets.join(", "),
                                e.url_template,
                                e.disabled_reason.map(|r| format!(" ({r})")).unwrap_or_default()
                            );
                        }
                    }
                    EndpointAction::Enable { id, replay } => {
                        let done = crate::callbacks::enable(db, &id, replay, now).await?;
                        println!(
                            "endpoint {id} enabled: {} deliveries waiting are sent in order ({} given up during its failures queued again)",
                            done.backlog, done.requeued
                        );
                    }
                    EndpointAction::Disable { id, reason } => {
                        crate::callbacks::disable(db, &id, &reason, now).await?;
                        println!("endpoint {id} disabled: its deliveries wait until it is enabled");
                    }
                    EndpointAction::Test { id, json } => {
                        let d = crate::callbacks::Deliverer::new(
                            db.clone(),
                            service.clock(),
                            deliver_config,
                            "cli-tester",
                        )?
                        .with_plugins(service.runtime().clone());
                        let report = d.test(&id).await?;
                        if json {
                            println!("{}", serde_json::to_string_pretty(&report)?);
                        } else {
                            print_test(&report);
                        }
                        return Ok(if report.delivered { ExitCode::SUCCESS } else { ExitCode::FAILURE });
                    }
                    EndpointAction::SetStates { id, states } => {
                        let mut e = crate::callbacks::endpoint(db, &id).await?.spec;
                        e.states = states
                            .map(|names| crate::callbacks::parse_states(&names))
                            .transpose()
                            .map_err(|e| anyhow::anyhow!("--{e}"))?;
                        crate::callbacks::save_endpoint(db, &e, now).await?;
                        match &e.states {
                            None => println!("endpoint {id} receives every state (CREATED on every click included)"),
                            Some(v) => println!(
                                "endpoint {id} receives {} only",
                                v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                            ),
                        }
                    }
                    EndpointAction::Rotate { id, drop_old } => {
                        let mut e = crate::callbacks::endpoint(db, &id).await?.spec;
                        if drop_old {
                            e.secrets.truncate(1);
                            crate::callbacks::save_endpoint(db, &e, now).await?;
                            println!("endpoint {id} signs with its newest secret only");
                        } else {
                            let secret = crate::callbacks::sign::Secret::generate();
                            e.secrets.insert(0, secret.clone());
                            crate::callbacks::save_endpoint(db, &e, now).await?;
                            println!("{}", secret.expose());
                            eprintln!(
                                "new signing secret of {id}, shown once; callbacks are signed with it and the {} older one(s) \
                                 until `cashbackd endpoint drop-old-secrets {id}`",
                                e.secrets.len() - 1
                            );
                        }
                    }
                }
                Ok(ExitCode::SUCCESS)
            })
        }
        _ => unreachable!("cli::run dispatches only this module's commands here"),
    }
}

/// The endpoint `endpoint add` describes; errors name the option.
fn endpoint_spec(
    c: &EndpointCommand,
    defaults: &crate::config::CallbackSettings,
) -> anyhow::Result<crate::callbacks::EndpointSpec> {
    use crate::callbacks::{Backoff, EndpointField, EndpointSpec, Method, RetryPolicy, sign::Secret};
    let EndpointCommand::Add {
        id,
        partner,
        url,
        method,
        params,
        secret,
        generate_secret,
        signature_param,
        merchant,
        network,
        require_ref_id,
        states,
        events,
        max_attempts,
        backoff,
        retry_delay,
        max_delay,
        jitter,
        timeout_ms,
        disable_after,
    } = c
    else {
        bail!("not endpoint add");
    };
    let method = Method::parse(method).ok_or_else(|| anyhow::anyhow!("--method: {method:?} is not get or post"))?;
    let d = defaults.endpoint_defaults();
    let mut spec = EndpointSpec::with_defaults(id, partner, url, &d);
    spec.method = method;
    for p in params {
        let (k, v) = p.split_once('=').ok_or_else(|| anyhow::anyhow!("--param: {p:?} is not name=value"))?;
        spec.params.insert(k.to_string(), v.to_string());
    }
    if let Some(s) = secret {
        spec.secrets = vec![Secret::parse(s, method == Method::Post).map_err(|e| anyhow::anyhow!("--secret: {e}"))?];
    } else if *generate_secret {
        spec.secrets = vec![Secret::generate()];
    }
    spec.signature_param = signature_param.clone();
    spec.merchant_id = merchant.clone();
    spec.network_id = network.clone();
    spec.require_ref_id = *require_ref_id;
    if !states.is_empty() {
        spec.states = Some(crate::callbacks::parse_states(states).map_err(|e| anyhow::anyhow!("--{e}"))?);
    }
    spec.events = crate::callbacks::Events::parse(events.split(',')).map_err(|e| anyhow::anyhow!("--{e}"))?;
    spec.retry = RetryPolicy {
        max_attempts: max_attempts.unwrap_or(d.retry.max_attempts),
        backoff: match backoff.as_deref() {
            None => d.retry.backoff,
            Some("fixed") => Backoff::Fixed,
            Some("exponential") => Backoff::Exponential,
            Some(other) => bail!("--backoff: {other:?} is not fixed or exponential"),
        },
        delay_ms: retry_delay.map_or(d.retry.delay_ms, |s| s.saturating_mul(1000)),
        max_delay_ms: max_delay.map_or(d.retry.max_delay_ms, |s| s.saturating_mul(1000)),
        jitter_pct: jitter.unwrap_or(d.retry.jitter_pct),
    };
    spec.timeout_ms = timeout_ms.unwrap_or(d.timeout_ms);
    spec.disable_after = disable_after.unwrap_or(d.disable_after);
    spec.check().map_err(|e| {
        // Named as the operator gave it: the option, or the configuration key whose
        // default was taken when the option was not given.
        let given = match e.field {
            EndpointField::MaxAttempts => max_attempts.is_some(),
            EndpointField::RetryDelay => retry_delay.is_some(),
            EndpointField::MaxDelay => max_delay.is_some(),
            EndpointField::Jitter => jitter.is_some(),
            EndpointField::Timeout => timeout_ms.is_some(),
            EndpointField::DisableAfter => disable_after.is_some(),
            _ => true,
        };
        let name = match e.field.config_key() {
            Some(key) if !given => format!("{key} (the default of {})", e.field.flag()),
            _ => e.field.flag().to_string(),
        };
        anyhow::anyhow!("{name}: {}", e.why).context(format!("endpoint {id}"))
    })?;
    Ok(spec)
}

fn print_test(r: &crate::callbacks::deliver::TestReport) {
    println!("> {} {}", r.request.method, r.request.url);
    for (k, v) in &r.request.headers {
        println!("> {k}: {v}");
    }
    if let Some(body) = &r.request.body {
        println!(">\n{body}");
    }
    match (&r.response, &r.error) {
        (Some(resp), _) => {
            println!("< {} ({} ms)", resp.status, r.latency_ms);
            for (k, v) in &resp.headers {
                println!("< {k}: {v}");
            }
            println!("<\n{}{}", resp.body_excerpt, if resp.truncated { "\n< [truncated]" } else { "" });
        }
        (None, Some(e)) => println!("! no response after {} ms: {e}", r.latency_ms),
        (None, None) => {}
    }
    println!(
        "{}",
        if r.delivered {
            "delivered: the endpoint answered 200"
        } else {
            "NOT delivered: only a 200 counts (seed 003)"
        }
    );
}

fn callbacks_config(cli: &Cli) -> crate::callbacks::DeliveryConfig {
    cli.settings.callbacks.delivery(cli.callbacks_allow_private)
}
