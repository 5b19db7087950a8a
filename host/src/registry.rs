//! The plugin registry, in the database so that every replica sees the same plugins:
//! upload (validated), versions, activation for a merchant's chain, a network or a callback
//! endpoint, rollback,
//! deletion of unused versions, shadow candidates and backtests.
//!
//! **Hot swap.** A merchant's chain is read from the database at the start of every
//! evaluation, so an activation takes effect for the next conversion on every replica at
//! once (no cache to invalidate, hence nothing to notify), and a conversion already being
//! evaluated finishes on the versions it read: its decision and its ledger postings pin
//! exactly those digests. Components are compiled once per process and digest and kept;
//! a replica that has never seen a digest loads its bytes from the `plugins` table.

use crate::conversions::rules::{self, Link, RuleInputs};
use crate::conversions::service::ServiceError;
use crate::conversions::{Service, Status};
use crate::plugin::{LoadedPlugin, Manifest, PluginKind};
use serde::Serialize;
use sqlx::Row;
use std::sync::Arc;

fn invalid(message: impl Into<String>) -> ServiceError {
    ServiceError::Invalid(message.into())
}

/// Where a version is activated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A merchant's rule chain; `position` defaults to the place of the plugin of the
    /// same name in the chain (appended when the chain has none).
    Merchant {
        /// The merchant.
        id: String,
        /// The place in the chain (0-based).
        position: Option<usize>,
    },
    /// A network's adapter.
    Network {
        /// The network.
        id: String,
    },
    /// A partner callback endpoint's request renderer (`partner-callback`, contract
    /// 0.2.0). Its rollback past the first activation goes back to the built-in template.
    Endpoint {
        /// The endpoint.
        id: String,
    },
}

impl Target {
    fn kind(&self) -> &'static str {
        match self {
            Target::Merchant { .. } => "merchant",
            Target::Network { .. } => "network",
            Target::Endpoint { .. } => "endpoint",
        }
    }

    fn id(&self) -> &str {
        match self {
            Target::Merchant { id, .. } | Target::Network { id } | Target::Endpoint { id } => id,
        }
    }
}

/// What an upload did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Uploaded {
    /// The component's digest.
    pub digest: String,
    /// Manifest name.
    pub name: String,
    /// Manifest version.
    pub version: String,
    /// `merchant-rules`, `network-adapter` or `partner-callback`.
    pub kind: String,
    /// The contract version it speaks.
    pub wit: String,
    /// Its own fixtures, all passed.
    pub fixtures_passed: usize,
    /// It was stored already (same digest).
    pub already_stored: bool,
    /// The plugin, loaded.
    #[serde(skip)]
    pub plugin: Arc<LoadedPlugin>,
}

/// Validates and stores a component: it must compile, export a known world at a
/// supported contract version, carry a sane manifest (all checked by loading it), and
/// pass its own embedded fixtures in the sandbox ([`crate::plugin::fixtures::prove`]). A
/// different component under a name and version already stored is refused: a changed
/// plugin needs a new version.
///
/// This is the only way a component gets into the `plugins` table: `plugin upload`,
/// `POST /api/v1/plugins`, `merchant add --rule`, `network add --adapter` and the demo
/// all come through here (or through [`vet`] then [`admit`]), so none of them can store
/// what another would refuse.
pub async fn upload(service: &Service, bytes: &[u8]) -> Result<Uploaded, ServiceError> {
    admit(service, vet(service, bytes).await?).await
}

/// A component that passed every check of [`upload`], not stored yet. Only [`vet`] makes
/// one, so [`admit`] stores nothing unchecked.
#[derive(Debug)]
pub struct Vetted {
    uploaded: Uploaded,
    bytes: Vec<u8>,
}

impl Vetted {
    /// What was checked: the plugin, its digest, its fixtures.
    pub fn uploaded(&self) -> &Uploaded {
        &self.uploaded
    }
}

/// Every check of [`upload`], storing nothing: for a command that has more to check (a
/// rule's configuration) before it writes anything.
pub async fn vet(service: &Service, bytes: &[u8]) -> Result<Vetted, ServiceError> {
    let plugin = service.runtime().load(bytes)?;
    let digest = plugin.digest.to_string();
    let existing: Vec<String> = sqlx::query_scalar("SELECT digest FROM plugins WHERE name = $1 AND version = $2")
        .bind(&plugin.manifest.name)
        .bind(plugin.manifest.version.to_string())
        .fetch_all(&service.db().pool)
        .await?;
    if existing.iter().any(|d| *d != digest) {
        return Err(invalid(format!(
            "{} {} is already stored with another digest ({}): a changed plugin needs a new version in its manifest",
            plugin.manifest.name,
            plugin.manifest.version,
            existing.join(", ")
        )));
    }
    let fixtures_passed = service.prove_plugin(&plugin).await?;
    let uploaded = Uploaded {
        digest,
        name: plugin.manifest.name.clone(),
        version: plugin.manifest.version.to_string(),
        kind: plugin.kind().to_string(),
        wit: plugin.api_version.clone(),
        fixtures_passed,
        already_stored: !existing.is_empty(),
        plugin,
    };
    Ok(Vetted { uploaded, bytes: bytes.to_vec() })
}

/// Stores a component [`vet`] passed.
pub async fn admit(service: &Service, vetted: Vetted) -> Result<Uploaded, ServiceError> {
    let Vetted { uploaded, bytes } = vetted;
    sqlx::query(
        "INSERT INTO plugins (digest, name, version, kind, bytes, created_at) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (digest) DO NOTHING",
    )
    .bind(&uploaded.digest)
    .bind(&uploaded.name)
    .bind(&uploaded.version)
    .bind(&uploaded.kind)
    .bind(bytes)
    .bind(service.now())
    .execute(&service.db().pool)
    .await?;
    Ok(uploaded)
}

/// A stored version and where it is used.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct PluginVersion {
    /// Digest.
    pub digest: String,
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Kind.
    pub kind: String,
    /// When it was stored.
    pub created_at: i64,
    /// Where it is active: `merchant:ID#POSITION`, `network:ID` or `endpoint:ID`.
    pub active: Vec<String>,
    /// Where it runs in shadow: `merchant:ID#POSITION`.
    pub shadow: Vec<String>,
}

/// Stored versions (of one plugin name, or all), newest first, with where each is used.
pub async fn versions(service: &Service, name: Option<&str>) -> Result<Vec<PluginVersion>, ServiceError> {
    let pool = &service.db().pool;
    let rows = sqlx::query(
        "SELECT digest, name, version, kind, created_at FROM plugins WHERE ($1 IS NULL OR name = $1) \
         ORDER BY name, created_at DESC, version DESC",
    )
    .bind(name)
    .fetch_all(pool)
    .await?;
    let uses = sqlx::query(
        "SELECT plugin_digest, 'merchant:' || merchant_id || '#' || CAST(position AS TEXT), 'active' FROM merchant_rules \
         UNION ALL SELECT adapter_digest, 'network:' || id, 'active' FROM networks WHERE adapter_digest IS NOT NULL \
         UNION ALL SELECT plugin_digest, 'endpoint:' || id, 'active' FROM callback_endpoints \
         WHERE plugin_digest IS NOT NULL \
         UNION ALL SELECT plugin_digest, 'merchant:' || merchant_id || '#' || CAST(position AS TEXT), 'shadow' \
         FROM merchant_shadow",
    )
    .fetch_all(pool)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let digest: String = r.try_get(0)?;
        let mut v = PluginVersion {
            name: r.try_get(1)?,
            version: r.try_get(2)?,
            kind: r.try_get(3)?,
            created_at: r.try_get(4)?,
            active: Vec::new(),
            shadow: Vec::new(),
            digest,
        };
        for u in &uses {
            if u.try_get::<String, _>(0)? == v.digest {
                let (place, how): (String, String) = (u.try_get(1)?, u.try_get(2)?);
                if how == "active" { v.active.push(place) } else { v.shadow.push(place) }
            }
        }
        out.push(v);
    }
    Ok(out)
}

/// Finds a stored version by digest (`sha256:...`, or a unique prefix of its hex) or by
/// `name@version`.
pub async fn resolve(service: &Service, reference: &str) -> Result<Arc<LoadedPlugin>, ServiceError> {
    let pool = &service.db().pool;
    let digests: Vec<String> = if let Some((name, version)) = reference.split_once('@') {
        sqlx::query_scalar("SELECT digest FROM plugins WHERE name = $1 AND version = $2")
            .bind(name)
            .bind(version)
            .fetch_all(pool)
            .await?
    } else {
        let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
        if hex.len() < 8 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid(format!("{reference:?} is neither name@version nor a digest (at least 8 hex digits)")));
        }
        sqlx::query_scalar("SELECT digest FROM plugins WHERE digest LIKE $1")
            .bind(format!("sha256:{}%", hex.to_ascii_lowercase()))
            .fetch_all(pool)
            .await?
    };
    match digests.as_slice() {
        [one] => service.plugin(one).await,
        // What the request names does not exist: 404 through the API.
        [] => {
            Err(ServiceError::NotFound(format!("no stored plugin matches {reference:?} (see `cashbackd plugin list`)")))
        }
        many => Err(invalid(format!("{reference:?} is ambiguous: {}", many.join(", ")))),
    }
}

/// What an activation, rollback or shadow change did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Activation {
    /// `merchant`, `network` or `endpoint`.
    pub target_kind: String,
    /// The merchant or network.
    pub target_id: String,
    /// Place in the chain.
    pub position: i64,
    /// `activate`, `rollback`, `shadow` or `unshadow`.
    pub action: String,
    /// The plugin.
    pub plugin_name: String,
    /// The version now in place; empty when an endpoint went back to the built-in template.
    pub digest: String,
    /// The version it replaced.
    pub previous_digest: Option<String>,
    /// Who.
    pub actor: String,
    /// When.
    pub at: i64,
}

/// Activates `plugin` for `target`, keeping the configuration of the version it replaces
/// unless `config` is given. Takes effect for the next conversion on every replica.
pub async fn activate(
    service: &Service,
    target: &Target,
    plugin: &LoadedPlugin,
    config: Option<serde_json::Value>,
    actor: &str,
) -> Result<Activation, ServiceError> {
    let (position, previous, same_name) = place(service, target, plugin).await?;
    let (config, dropped) = inherited(service, config, &previous, same_name, plugin).await?;
    check_config(plugin, &config, &dropped)?;
    service.prove_plugin(plugin).await?;
    write_activation(service, target, position, "activate", plugin, &config.to_string(), previous, actor).await
}

/// The configuration for a version taking a place: the one given, else the replaced
/// version's when it is another version of the same plugin (a different plugin's
/// configuration means nothing to it), else `{}`. The second value names the secret
/// fields that were not carried over (see `carried_over`).
async fn inherited(
    service: &Service,
    given: Option<serde_json::Value>,
    replaced: &Option<(String, String)>,
    same_name: bool,
    plugin: &LoadedPlugin,
) -> Result<(serde_json::Value, Vec<String>), ServiceError> {
    match (given, replaced) {
        (Some(c), _) => Ok((c, Vec::new())),
        (None, Some((digest, c))) if same_name => {
            let config = serde_json::from_str(c).unwrap_or(serde_json::json!({}));
            let previous = resolve(service, digest).await?;
            Ok(carried_over(&previous.manifest, &plugin.manifest, config))
        }
        _ => Ok((serde_json::json!({}), Vec::new())),
    }
}

/// What of `previous`'s configuration another version of the same plugin keeps. A secret
/// is only ever used by the host, which sends it to the hosts a version declares, in the
/// places its credentials name. A version declaring other hosts or other credentials (a
/// look-alike uploaded under the same name, say) would have the host send the operator's
/// secret somewhere nobody approved for it: it gets the plain fields but not the secrets,
/// which the operator gives again with the activation. Returns the secrets left out.
fn carried_over(
    previous: &Manifest,
    next: &Manifest,
    mut config: serde_json::Value,
) -> (serde_json::Value, Vec<String>) {
    let same_reach =
        previous.capabilities.http_hosts == next.capabilities.http_hosts && previous.credentials == next.credentials;
    let mut dropped = Vec::new();
    if !same_reach && let Some(fields) = config.as_object_mut() {
        for (name, field) in previous.config.iter().chain(&next.config) {
            if field.secret && fields.remove(name).is_some() {
                dropped.push(name.clone());
            }
        }
    }
    (config, dropped)
}

/// The configuration check of an activation, saying why a secret is missing when it was
/// left out on purpose.
fn check_config(plugin: &LoadedPlugin, config: &serde_json::Value, dropped: &[String]) -> Result<(), ServiceError> {
    plugin.manifest.validate_config(config).map(|_| ()).map_err(|e| {
        let why = if dropped.is_empty() {
            String::new()
        } else {
            format!(
                " (the secret field(s) {} were not carried over from the version it replaces, because this version \
                 declares other hosts or credentials: give them in the activation's config)",
                dropped.join(", ")
            )
        };
        invalid(format!("{}: {e}{why}", plugin.label()))
    })
}

/// Puts back what the last activation of `target` (at `position` for a merchant)
/// replaced, with its configuration.
pub async fn rollback(service: &Service, target: &Target, actor: &str) -> Result<Activation, ServiceError> {
    let position = match target {
        Target::Merchant { position, .. } => position.map(|p| p as i64),
        Target::Network { .. } | Target::Endpoint { .. } => Some(0),
    };
    let last = sqlx::query(
        "SELECT position, previous_digest, previous_config, digest FROM plugin_activations \
         WHERE target_kind = $1 AND target_id = $2 AND ($3 IS NULL OR position = $3) \
         AND action IN ('activate', 'rollback') ORDER BY id DESC LIMIT 1",
    )
    .bind(target.kind())
    .bind(target.id())
    .bind(position)
    .fetch_optional(&service.db().pool)
    .await?
    .ok_or_else(|| {
        ServiceError::NotFound(format!("{} {} has no activation to roll back", target.kind(), target.id()))
    })?;
    let position: i64 = last.try_get(0)?;
    let previous: Option<String> = last.try_get(1)?;
    let previous_config: Option<String> = last.try_get(2)?;
    let current: String = last.try_get(3)?;
    // An endpoint's first plugin replaced the built-in template (no digest, or the empty
    // one of an earlier rollback): rolling it back puts the template back.
    if let Target::Endpoint { id } = target
        && previous.as_deref().unwrap_or("").is_empty()
    {
        let config = current_config(service, target, 0).await?.unwrap_or_else(|| "{}".into());
        return to_template(service, id, current, config, actor).await;
    }
    // The request is fine; the target's history is what refuses it: a conflict (409).
    let previous = previous.ok_or_else(|| {
        ServiceError::Conflict(format!(
            "the last activation of {} {} (position {position}) replaced nothing: nothing to roll back to",
            target.kind(),
            target.id()
        ))
    })?;
    let plugin = service.plugin(&previous).await?;
    // What it puts back must prove itself like any activation: the version it replaced
    // may have been stored before the registry checked fixtures.
    service.prove_plugin(&plugin).await?;
    let current_config = current_config(service, target, position).await?;
    let config = previous_config.unwrap_or_else(|| "{}".into());
    write_activation(
        service,
        target,
        position,
        "rollback",
        &plugin,
        &config,
        Some((current, current_config.unwrap_or_else(|| "{}".into()))),
        actor,
    )
    .await
}

async fn current_config(service: &Service, target: &Target, position: i64) -> Result<Option<String>, ServiceError> {
    Ok(match target {
        Target::Merchant { id, .. } => {
            sqlx::query_scalar("SELECT config FROM merchant_rules WHERE merchant_id = $1 AND position = $2")
                .bind(id)
                .bind(position)
                .fetch_optional(&service.db().pool)
                .await?
        }
        Target::Network { id } => sqlx::query_scalar("SELECT adapter_config FROM networks WHERE id = $1")
            .bind(id)
            .fetch_optional(&service.db().pool)
            .await?
            .flatten(),
        Target::Endpoint { id } => sqlx::query_scalar("SELECT plugin_config FROM callback_endpoints WHERE id = $1")
            .bind(id)
            .fetch_optional(&service.db().pool)
            .await?
            .flatten(),
    })
}

/// Puts an endpoint back on the built-in template, recorded like any rollback (digest
/// empty) so that the next rollback puts `current` back.
async fn to_template(
    service: &Service,
    endpoint: &str,
    current: String,
    current_config: String,
    actor: &str,
) -> Result<Activation, ServiceError> {
    let at = service.now();
    let name: String = sqlx::query_scalar("SELECT name FROM plugins WHERE digest = $1")
        .bind(&current)
        .fetch_optional(&service.db().pool)
        .await?
        .unwrap_or_default();
    let mut tx = crate::db::begin(&service.db().pool).await?;
    sqlx::query("UPDATE callback_endpoints SET plugin_digest = NULL, plugin_config = NULL WHERE id = $1")
        .bind(endpoint)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO plugin_activations (target_kind, target_id, position, action, plugin_name, digest, \
         previous_digest, config, previous_config, actor, at) VALUES ('endpoint', $1, 0, 'rollback', $2, '', $3, '{}', \
         $4, $5, $6)",
    )
    .bind(endpoint)
    .bind(&name)
    .bind(&current)
    .bind(&current_config)
    .bind(actor)
    .bind(at)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(target = %format!("endpoint:{endpoint}"), action = "rollback", plugin = "built-in template", actor, "plugin activation");
    Ok(Activation {
        target_kind: "endpoint".into(),
        target_id: endpoint.into(),
        position: 0,
        action: "rollback".into(),
        plugin_name: name,
        digest: String::new(),
        previous_digest: Some(current),
        actor: actor.into(),
        at,
    })
}

/// Where `plugin` goes for `target`, and the (digest, config) it replaces.
async fn place(
    service: &Service,
    target: &Target,
    plugin: &LoadedPlugin,
) -> Result<(i64, Option<(String, String)>, bool), ServiceError> {
    let pool = &service.db().pool;
    match target {
        Target::Merchant { id, position } => {
            if plugin.kind() != PluginKind::MerchantRules {
                return Err(invalid(format!("{} is a {}, not a rule plugin", plugin.label(), plugin.kind())));
            }
            let known: Option<String> =
                sqlx::query_scalar("SELECT id FROM merchants WHERE id = $1").bind(id).fetch_optional(pool).await?;
            if known.is_none() {
                return Err(invalid(format!("no merchant {id:?}")));
            }
            let chain = sqlx::query(
                "SELECT r.position, r.plugin_digest, r.config, p.name FROM merchant_rules r \
                 JOIN plugins p ON p.digest = r.plugin_digest WHERE r.merchant_id = $1 ORDER BY r.position",
            )
            .bind(id)
            .fetch_all(pool)
            .await?;
            let mut links = Vec::new();
            for r in &chain {
                links.push((
                    r.try_get::<i64, _>(0)?,
                    r.try_get::<String, _>(1)?,
                    r.try_get::<String, _>(2)?,
                    r.try_get::<String, _>(3)?,
                ));
            }
            let position = match position {
                Some(p) if *p as i64 > links.len() as i64 => {
                    return Err(invalid(format!(
                        "position {p} is past the end of merchant {id}'s chain of {} plugins",
                        links.len()
                    )));
                }
                Some(p) => *p as i64,
                None => links
                    .iter()
                    .find(|l| l.3 == plugin.manifest.name)
                    .map_or(links.iter().map(|l| l.0 + 1).max().unwrap_or(0), |l| l.0),
            };
            let previous = links.into_iter().find(|l| l.0 == position);
            let same_name = previous.as_ref().is_some_and(|l| l.3 == plugin.manifest.name);
            Ok((position, previous.map(|l| (l.1, l.2)), same_name))
        }
        Target::Network { id } => {
            if plugin.kind() != PluginKind::NetworkAdapter {
                return Err(invalid(format!("{} is a {}, not a network adapter", plugin.label(), plugin.kind())));
            }
            let row = sqlx::query("SELECT adapter_digest, adapter_config FROM networks WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?
                .ok_or_else(|| invalid(format!("no network {id:?}")))?;
            let digest: Option<String> = row.try_get(0)?;
            let config: Option<String> = row.try_get(1)?;
            let same_name = match &digest {
                Some(d) => {
                    let name: Option<String> = sqlx::query_scalar("SELECT name FROM plugins WHERE digest = $1")
                        .bind(d)
                        .fetch_optional(pool)
                        .await?;
                    name.as_deref() == Some(plugin.manifest.name.as_str())
                }
                None => false,
            };
            Ok((0, digest.map(|d| (d, config.unwrap_or_else(|| "{}".into()))), same_name))
        }
        Target::Endpoint { id } => {
            if plugin.kind() != PluginKind::PartnerCallback {
                return Err(invalid(format!(
                    "{} is a {}, not a partner-callback plugin (contract 0.2.0)",
                    plugin.label(),
                    plugin.kind()
                )));
            }
            let row = sqlx::query(
                "SELECT e.plugin_digest, e.plugin_config, p.name FROM callback_endpoints e \
                 LEFT JOIN plugins p ON p.digest = e.plugin_digest WHERE e.id = $1",
            )
            .bind(id)
            .fetch_optional(pool)
            .await?
            .ok_or_else(|| invalid(format!("no callback endpoint {id:?}")))?;
            let digest: Option<String> = row.try_get(0)?;
            let config: Option<String> = row.try_get(1)?;
            let name: Option<String> = row.try_get(2)?;
            let same_name = name.as_deref() == Some(plugin.manifest.name.as_str());
            Ok((0, digest.map(|d| (d, config.unwrap_or_else(|| "{}".into()))), same_name))
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn write_activation(
    service: &Service,
    target: &Target,
    position: i64,
    action: &str,
    plugin: &LoadedPlugin,
    config: &str,
    previous: Option<(String, String)>,
    actor: &str,
) -> Result<Activation, ServiceError> {
    let at = service.now();
    let digest = plugin.digest.to_string();
    let mut tx = crate::db::begin(&service.db().pool).await?;
    match target {
        Target::Merchant { id, .. } => {
            // An upsert, so that evaluations never see the chain without this place.
            sqlx::query(
                "INSERT INTO merchant_rules (merchant_id, position, plugin_digest, config) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (merchant_id, position) DO UPDATE SET plugin_digest = excluded.plugin_digest, \
                 config = excluded.config",
            )
            .bind(id)
            .bind(position)
            .bind(&digest)
            .bind(config)
            .execute(&mut *tx)
            .await?;
        }
        Target::Network { id } => {
            sqlx::query("UPDATE networks SET adapter_digest = $2, adapter_config = $3 WHERE id = $1")
                .bind(id)
                .bind(&digest)
                .bind(config)
                .execute(&mut *tx)
                .await?;
        }
        Target::Endpoint { id } => {
            sqlx::query("UPDATE callback_endpoints SET plugin_digest = $2, plugin_config = $3 WHERE id = $1")
                .bind(id)
                .bind(&digest)
                .bind(config)
                .execute(&mut *tx)
                .await?;
        }
    }
    let (previous_digest, previous_config) = previous.unzip();
    sqlx::query(
        "INSERT INTO plugin_activations (target_kind, target_id, position, action, plugin_name, digest, \
         previous_digest, config, previous_config, actor, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(target.kind())
    .bind(target.id())
    .bind(position)
    .bind(action)
    .bind(&plugin.manifest.name)
    .bind(&digest)
    .bind(&previous_digest)
    .bind(config)
    .bind(&previous_config)
    .bind(actor)
    .bind(at)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(target = %format!("{}:{}", target.kind(), target.id()), position, action, plugin = %plugin.label(), actor, "plugin activation");
    Ok(Activation {
        target_kind: target.kind().into(),
        target_id: target.id().into(),
        position,
        action: action.into(),
        plugin_name: plugin.manifest.name.clone(),
        digest,
        previous_digest,
        actor: actor.into(),
        at,
    })
}

/// The activation log of a merchant, network or endpoint, newest first.
pub async fn activations(service: &Service, target: &Target, limit: i64) -> Result<Vec<Activation>, ServiceError> {
    let rows = sqlx::query(
        "SELECT target_kind, target_id, position, action, plugin_name, digest, previous_digest, actor, at \
         FROM plugin_activations WHERE target_kind = $1 AND target_id = $2 ORDER BY id DESC LIMIT $3",
    )
    .bind(target.kind())
    .bind(target.id())
    .bind(limit)
    .fetch_all(&service.db().pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Activation {
                target_kind: r.try_get(0)?,
                target_id: r.try_get(1)?,
                position: r.try_get(2)?,
                action: r.try_get(3)?,
                plugin_name: r.try_get(4)?,
                digest: r.try_get(5)?,
                previous_digest: r.try_get(6)?,
                actor: r.try_get(7)?,
                at: r.try_get(8)?,
            })
        })
        .collect()
}

/// Deletes a stored version that nothing uses: not active, not in shadow, and not pinned
/// by any ledger posting (those stay, so that every figure can be explained and
/// backtested).
pub async fn delete(service: &Service, plugin: &LoadedPlugin) -> Result<(), ServiceError> {
    let digest = plugin.digest.to_string();
    let v = versions(service, Some(&plugin.manifest.name)).await?;
    if let Some(v) = v.iter().find(|v| v.digest == digest)
        && !(v.active.is_empty() && v.shadow.is_empty())
    {
        return Err(invalid(format!(
            "{} is in use ({}): activate another version first",
            plugin.label(),
            v.active.iter().chain(&v.shadow).cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    let pinned: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ledger_transactions WHERE plugin_digest LIKE $1")
        .bind(format!("%{digest}%"))
        .fetch_one(&service.db().pool)
        .await?;
    if pinned > 0 {
        return Err(invalid(format!(
            "{} computed {pinned} ledger postings: it is kept so that they can be explained and backtested",
            plugin.label()
        )));
    }
    sqlx::query("DELETE FROM plugins WHERE digest = $1").bind(&digest).execute(&service.db().pool).await?;
    Ok(())
}

/// Runs `plugin` in shadow for `merchant`: beside the active chain on every live
/// conversion, in place of the plugin at `position` (default: the plugin of the same
/// name, or appended). Its decisions are recorded, never posted.
pub async fn set_shadow(
    service: &Service,
    merchant: &str,
    plugin: &LoadedPlugin,
    config: Option<serde_json::Value>,
    position: Option<usize>,
    actor: &str,
) -> Result<Activation, ServiceError> {
    let target = Target::Merchant { id: merchant.into(), position };
    let (position, replaced, same_name) = place(service, &target, plugin).await?;
    let (config, dropped) = inherited(service, config, &replaced, same_name, plugin).await?;
    check_config(plugin, &config, &dropped)?;
    service.prove_plugin(plugin).await?;
    let at = service.now();
    let digest = plugin.digest.to_string();
    let mut tx = crate::db::begin(&service.db().pool).await?;
    sqlx::query(
        "INSERT INTO merchant_shadow (merchant_id, position, plugin_digest, config, since) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (merchant_id) DO UPDATE SET position = excluded.position, plugin_digest = excluded.plugin_digest, \
         config = excluded.config, since = excluded.since",
    )
    .bind(merchant)
    .bind(position)
    .bind(&digest)
    .bind(config.to_string())
    .bind(at)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO plugin_activations (target_kind, target_id, position, action, plugin_name, digest, \
         previous_digest, config, previous_config, actor, at) VALUES ('merchant', $1, $2, 'shadow', $3, $4, $5, $6, NULL, $7, $8)",
    )
    .bind(merchant)
    .bind(position)
    .bind(&plugin.manifest.name)
    .bind(&digest)
    .bind(replaced.map(|r| r.0))
    .bind(config.to_string())
    .bind(actor)
    .bind(at)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Activation {
        target_kind: "merchant".into(),
        target_id: merchant.into(),
        position,
        action: "shadow".into(),
        plugin_name: plugin.manifest.name.clone(),
        digest,
        previous_digest: None,
        actor: actor.into(),
        at,
    })
}

/// Stops the shadow candidate of `merchant` (its recorded decisions stay).
pub async fn clear_shadow(service: &Service, merchant: &str) -> Result<bool, ServiceError> {
    let done = sqlx::query("DELETE FROM merchant_shadow WHERE merchant_id = $1")
        .bind(merchant)
        .execute(&service.db().pool)
        .await?
        .rows_affected();
    Ok(done > 0)
}

/// One conversion where a candidate decides differently.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Difference {
    /// The conversion.
    pub conversion_id: String,
    /// Currency of the amounts.
    pub currency: String,
    /// What the active chain decided (None: it failed).
    pub active_cashback: Option<i64>,
    /// What the candidate decided (None: it failed).
    pub candidate_cashback: Option<i64>,
    /// candidate − active, when both decided.
    pub delta: Option<i64>,
    /// The failure, if either failed.
    pub error: Option<String>,
}

/// A comparison of a candidate with the active chain.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq, Default, utoipa::ToSchema)]
pub struct Comparison {
    /// The candidate.
    pub candidate_digest: String,
    /// Conversions compared.
    pub compared: u64,
    /// Where the two differ (amount, or one failed).
    pub changed: u64,
    /// Sum of the active chain's cashback over the compared conversions, per currency.
    pub active_total: std::collections::BTreeMap<String, i64>,
    /// Sum of the candidate's cashback, per currency.
    pub candidate_total: std::collections::BTreeMap<String, i64>,
    /// candidate − active, per currency.
    pub delta: std::collections::BTreeMap<String, i64>,
    /// The differences (the first `limit` of them, oldest first).
    pub differences: Vec<Difference>,
}

impl Comparison {
    fn add(
        &mut self,
        id: &str,
        currency: &str,
        active: Option<i64>,
        candidate: Option<i64>,
        error: Option<String>,
        limit: usize,
    ) {
        self.compared += 1;
        *self.active_total.entry(currency.into()).or_default() += active.unwrap_or(0);
        *self.candidate_total.entry(currency.into()).or_default() += candidate.unwrap_or(0);
        *self.delta.entry(currency.into()).or_default() += candidate.unwrap_or(0) - active.unwrap_or(0);
        if active != candidate || error.is_some() {
            self.changed += 1;
            if self.differences.len() < limit {
                self.differences.push(Difference {
                    conversion_id: id.into(),
                    currency: currency.into(),
                    active_cashback: active,
                    candidate_cashback: candidate,
                    delta: active.zip(candidate).map(|(a, c)| c - a),
                    error,
                });
            }
        }
    }
}

/// What the merchant's shadow candidate (or `candidate`) decided differently from the
/// active chain on live conversions.
pub async fn shadow_report(
    service: &Service,
    merchant: &str,
    candidate: Option<&str>,
    limit: usize,
) -> Result<Comparison, ServiceError> {
    let candidate = match candidate {
        Some(c) => c.to_string(),
        None => sqlx::query_scalar("SELECT plugin_digest FROM merchant_shadow WHERE merchant_id = $1")
            .bind(merchant)
            .fetch_optional(&service.db().pool)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("merchant {merchant} has no shadow candidate")))?,
    };
    let rows = sqlx::query(
        "SELECT conversion_id, currency, active_cashback, shadow_cashback, active_error, shadow_error \
         FROM shadow_decisions WHERE merchant_id = $1 AND candidate_digest = $2 ORDER BY at, conversion_id",
    )
    .bind(merchant)
    .bind(&candidate)
    .fetch_all(&service.db().pool)
    .await?;
    let mut c = Comparison { candidate_digest: candidate, ..Comparison::default() };
    for r in &rows {
        let (a_err, s_err): (Option<String>, Option<String>) = (r.try_get(4)?, r.try_get(5)?);
        let error = s_err.map(|e| format!("candidate: {e}")).or(a_err.map(|e| format!("active: {e}")));
        c.add(&r.try_get::<String, _>(0)?, &r.try_get::<String, _>(1)?, r.try_get(2)?, r.try_get(3)?, error, limit);
    }
    Ok(c)
}

/// Evaluates `plugin` (in place of the plugin at `position`, by default the one of the
/// same name) over `merchant`'s conversions whose rules ran in `[from, to)`, with the
/// exact inputs each decision recorded, and compares with what was decided. Nothing is
/// written. In one go: the API, dashboard and CLI run it as a job instead
/// ([`crate::backtests`]), a page at a time with the same [`BacktestPlan::page`].
#[allow(clippy::too_many_arguments)]
pub async fn backtest(
    service: &Service,
    merchant: &str,
    plugin: &Arc<LoadedPlugin>,
    config: Option<serde_json::Value>,
    position: Option<usize>,
    from: i64,
    to: i64,
    limit: usize,
) -> Result<Comparison, ServiceError> {
    let (position, config) = plan_backtest(service, merchant, plugin, config, position).await?;
    let plan = BacktestPlan::new(service, merchant, plugin.clone(), &config.to_string(), position, from, to).await?;
    let mut c = Comparison { candidate_digest: plugin.digest.to_string(), ..Comparison::default() };
    let mut after = None;
    let mut skipped = 0;
    loop {
        let page = plan.page(service, after.clone(), 1000, &mut c, limit).await?;
        skipped += page.skipped;
        if page.read == 0 {
            break;
        }
        after = page.last;
    }
    if skipped > 0 {
        tracing::info!(merchant, skipped, "backtest skipped conversions decided before rule inputs were recorded");
    }
    Ok(c)
}

/// Checks a backtest's request as an activation would (the merchant, the candidate's
/// kind and place, its configuration) and resolves where it goes and with which
/// configuration, so that a job is refused when asked, not when run.
pub async fn plan_backtest(
    service: &Service,
    merchant: &str,
    plugin: &Arc<LoadedPlugin>,
    config: Option<serde_json::Value>,
    position: Option<usize>,
) -> Result<(usize, serde_json::Value), ServiceError> {
    let target = Target::Merchant { id: merchant.into(), position };
    let (position, replaced, same_name) = place(service, &target, plugin).await?;
    let (config, dropped) = inherited(service, config, &replaced, same_name, plugin).await?;
    check_config(plugin, &config, &dropped)?;
    Ok((position as usize, config))
}

/// A backtest ready to replay pages of conversions: the candidate in its place, and the
/// configurations of the versions the replayed decisions pinned.
pub struct BacktestPlan {
    merchant: String,
    candidate: Link,
    position: usize,
    from: i64,
    to: i64,
    configs: std::collections::HashMap<String, String>,
}

/// What one page of a backtest read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BacktestPage {
    /// Conversions read (compared or skipped); 0 at the end.
    pub read: u64,
    /// Of those, decided before rule inputs were recorded: they cannot be replayed.
    pub skipped: u64,
    /// The last one read, `(rule_at, id)`: where the next page starts.
    pub last: Option<(i64, String)>,
}

impl BacktestPlan {
    /// The plan of a checked backtest (see [`plan_backtest`]).
    pub async fn new(
        service: &Service,
        merchant: &str,
        plugin: Arc<LoadedPlugin>,
        config: &str,
        position: usize,
        from: i64,
        to: i64,
    ) -> Result<BacktestPlan, ServiceError> {
        // Each conversion is replayed on the chain that decided it (its pinned digests and
        // the configs now stored for them), with the candidate in its place.
        let mut configs = std::collections::HashMap::new();
        // Versions no longer active keep the configuration they last had here.
        for r in sqlx::query(
            "SELECT digest, config FROM plugin_activations WHERE target_kind = 'merchant' AND target_id = $1 \
             AND action IN ('activate', 'rollback') ORDER BY id",
        )
        .bind(merchant)
        .fetch_all(&service.db().pool)
        .await?
        {
            configs.insert(r.try_get::<String, _>(0)?, r.try_get::<String, _>(1)?);
        }
        for r in
            sqlx::query("SELECT plugin_digest, config FROM merchant_rules WHERE merchant_id = $1 ORDER BY position")
                .bind(merchant)
                .fetch_all(&service.db().pool)
                .await?
        {
            configs.insert(r.try_get::<String, _>(0)?, r.try_get::<String, _>(1)?);
        }
        Ok(BacktestPlan {
            merchant: merchant.into(),
            candidate: Link { plugin, config: config.into() },
            position,
            from,
            to,
            configs,
        })
    }

    /// How many conversions the window holds (what the pages will read in all).
    pub async fn total(&self, service: &Service) -> Result<i64, ServiceError> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM conversions WHERE merchant_id = $1 AND rule_at >= $2 AND rule_at < $3 \
             AND decision IS NOT NULL",
        )
        .bind(&self.merchant)
        .bind(self.from)
        .bind(self.to)
        .fetch_one(&service.db().pool)
        .await?)
    }

    /// Replays the next `size` conversions after `after` (by rule time, then id) and adds
    /// them to `c` (which lists at most `limit` differences).
    pub async fn page(
        &self,
        service: &Service,
        after: Option<(i64, String)>,
        size: i64,
        c: &mut Comparison,
        limit: usize,
    ) -> Result<BacktestPage, ServiceError> {
        // Keyset pages over (merchant_id, rule_at, id): each reads its rows from the index,
        // however far into the window it is.
        let (after_at, after_id) = after.unwrap_or((i64::MIN, String::new()));
        let rows = sqlx::query(
            "SELECT id, currency, cashback, decision, status, rule_at FROM conversions WHERE merchant_id = $1 \
             AND decision IS NOT NULL AND rule_at >= $2 AND rule_at < $3 \
             AND (rule_at > $4 OR (rule_at = $4 AND id > $5)) ORDER BY rule_at, id LIMIT $6",
        )
        .bind(&self.merchant)
        .bind(self.from)
        .bind(self.to)
        .bind(after_at)
        .bind(&after_id)
        .bind(size)
        .fetch_all(&service.db().pool)
        .await?;
        let mut jobs = Vec::new();
        let mut page = BacktestPage { read: rows.len() as u64, skipped: 0, last: None };
        for r in &rows {
            let id: String = r.try_get(0)?;
            page.last = Some((r.try_get::<i64, _>(5)?, id.clone()));
            let decision: String = r.try_get(3)?;
            let status: String = r.try_get(4)?;
            let json: serde_json::Value = serde_json::from_str(&decision).unwrap_or_default();
            let inputs: Option<RuleInputs> = serde_json::from_value(json["inputs"].clone()).ok();
            let digests = json["plugins"]["digests"].as_str().unwrap_or_default().to_string();
            let Some(inputs) = inputs else {
                page.skipped += 1;
                continue;
            };
            let mut chain = Vec::new();
            for d in digests.split(',').filter(|d| !d.is_empty()) {
                let config = self.configs.get(d).cloned().unwrap_or_else(|| "{}".into());
                chain.push(Link { plugin: service.plugin(d).await?, config });
            }
            let active =
                if Status::parse(&status) == Some(Status::Failed) { None } else { Some(r.try_get::<i64, _>(2)?) };
            jobs.push((
                id,
                r.try_get::<String, _>(1)?,
                active,
                crate::conversions::shadow::substitute(&chain, self.position, self.candidate.clone()),
                inputs,
            ));
        }
        let runtime = service.runtime().clone();
        let results = tokio::task::spawn_blocking(move || {
            jobs.into_iter()
                .map(|(id, currency, active, chain, inputs)| {
                    (id, currency, active, rules::run_chain(&runtime, &chain, &inputs))
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| invalid(format!("backtest task failed: {e}")))?;
        for (id, currency, active, outcome) in results {
            let (candidate, error) = match outcome {
                Ok(d) => (Some(d.total.minor), None),
                Err(e) => (None, Some(format!("candidate: {e}"))),
            };
            c.add(&id, &currency, active, candidate, error, limit);
        }
        Ok(page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::limits::Limits;

    fn adapter(version: &str, hosts: &str, credential_header: &str) -> Manifest {
        let text = format!(
            r#"
name = "api-adapter"
version = "{version}"
kind = "network-adapter"
wit = "0.1.0"
description = "test"

[capabilities]
http-hosts = [{hosts}]

[credentials.api-key]
config = "api_key"
header = "{credential_header}"
format = "Bearer {{secret}}"

[config.base_url]
type = "string"
required = true

[config.api_key]
type = "string"
secret = true
required = true
"#
        );
        Manifest::parse(&text, &Limits::host_maxima()).expect("manifest")
    }

    fn config() -> serde_json::Value {
        serde_json::json!({"base_url": "https://api.network.example/v1", "api_key": "k3y"})
    }

    #[test]
    fn a_version_that_reaches_the_same_hosts_the_same_way_keeps_the_secrets() {
        let (v1, v2) = (
            adapter("1.0.0", r#""config:base_url""#, "Authorization"),
            adapter("1.1.0", r#""config:base_url""#, "Authorization"),
        );
        let (kept, dropped) = carried_over(&v1, &v2, config());
        assert_eq!((kept, dropped), (config(), Vec::<String>::new()));
    }

    #[test]
    fn a_version_with_other_hosts_or_credentials_keeps_the_plain_fields_but_not_the_secrets() {
        let v1 = adapter("1.0.0", r#""config:base_url""#, "Authorization");
        for v2 in [
            adapter("1.1.0", r#""config:base_url", "collector.example""#, "Authorization"),
            adapter("1.1.0", r#""config:base_url""#, "X-Forward-Me"),
        ] {
            let (kept, dropped) = carried_over(&v1, &v2, config());
            assert_eq!(kept, serde_json::json!({"base_url": "https://api.network.example/v1"}));
            assert_eq!(dropped, vec!["api_key".to_string()]);
        }
    }
}
