//! Errors of loading and calling plugins. Every message names the plugin (name, version,
//! digest) and, when a limit stopped it, the limit and where to configure it.

use super::inspect::InspectError;
use super::limits::LimitHit;
use super::manifest::{ConfigError, ManifestError, PluginKind};
use super::store::Digest;
use super::wit::latest::PluginError as WitPluginError;
use std::fmt;
use std::sync::Arc;

/// How errors name a plugin: `flat-rate@0.1.0 (sha256:0123456789ab)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginLabel {
    /// Manifest name.
    pub name: String,
    /// Manifest version.
    pub version: String,
    /// Content digest.
    pub digest: Digest,
}

impl fmt::Display for PluginLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{} (sha256:{})", self.name, self.version, self.digest.short())
    }
}

/// Why a component could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Not a component, or unreadable sections.
    #[error(transparent)]
    Inspect(#[from] InspectError),
    /// No manifest embedded and none given.
    #[error(
        "the component has no `cashback:manifest` section: build it with cashback-sdk's export macro, or pass a manifest file"
    )]
    NoManifest,
    /// The manifest is invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// Built for a contract version this host does not speak.
    #[error(
        "plugin {plugin} was built for cashback:plugin@{found}; this cashbackd supports {supported}. Rebuild it with a matching cashback-sdk, or upgrade cashbackd"
    )]
    ApiVersion {
        /// name@version.
        plugin: String,
        /// The version in the component.
        found: String,
        /// What the host supports.
        supported: String,
    },
    /// The component does not export what its manifest's kind requires.
    #[error("plugin {plugin} declares kind {kind} but does not export `{expected}` (it exports: {exports})")]
    WrongWorld {
        /// name@version.
        plugin: String,
        /// Declared kind.
        kind: PluginKind,
        /// The export it lacks.
        expected: &'static str,
        /// What it exports.
        exports: String,
    },
    /// It imports something its world does not grant.
    #[error("plugin {plugin} cannot be linked: {reason}")]
    Link {
        /// name@version.
        plugin: String,
        /// wasmtime's explanation (names the import).
        reason: String,
    },
    /// Compilation failed.
    #[error("plugin {plugin} does not compile: {reason}")]
    Compile {
        /// name@version.
        plugin: String,
        /// Why.
        reason: String,
    },
    /// Storage failed.
    #[error("plugin store: {0}")]
    Io(#[from] std::io::Error),
}

/// Why a plugin call failed. Only that call: the host and other calls are unaffected.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// A limit stopped it.
    #[error("plugin {plugin}: {limit}")]
    Limit {
        /// Which plugin.
        plugin: Arc<PluginLabel>,
        /// Which limit.
        limit: LimitHit,
    },
    /// It asked for something it was not granted, and failed.
    #[error("plugin {plugin}: capability denied: {what}")]
    Denied {
        /// Which plugin.
        plugin: Arc<PluginLabel>,
        /// What was refused.
        what: String,
    },
    /// It trapped (a panic or a bug).
    #[error("plugin {plugin} trapped: {message}")]
    Trap {
        /// Which plugin.
        plugin: Arc<PluginLabel>,
        /// The trap and the plugin's last error log line, if any.
        message: String,
    },
    /// It returned its own error.
    #[error("plugin {plugin} returned an error: {error}")]
    Plugin {
        /// Which plugin.
        plugin: Arc<PluginLabel>,
        /// Its error.
        error: WitPluginError,
    },
    /// Its output breaks the contract (e.g. lines that do not add up to the total).
    #[error("plugin {plugin} returned an invalid result: {reason}")]
    InvalidOutput {
        /// Which plugin.
        plugin: Arc<PluginLabel>,
        /// What is wrong.
        reason: String,
    },
    /// The configuration does not fit its schema.
    #[error("plugin {plugin}: {error}")]
    Config {
        /// Which plugin.
        plugin: Arc<PluginLabel>,
        /// The field and why.
        error: ConfigError,
    },
    /// The plugin is of the other kind.
    #[error("plugin {plugin} is a {kind} plugin, not a {expected} plugin")]
    WrongKind {
        /// Which plugin.
        plugin: Arc<PluginLabel>,
        /// What it is.
        kind: PluginKind,
        /// What the caller wanted.
        expected: PluginKind,
    },
    /// The host itself failed to run the call (instantiation, pool exhausted).
    #[error("plugin {plugin}: host error: {message}")]
    Host {
        /// Which plugin.
        plugin: Arc<PluginLabel>,
        /// What failed.
        message: String,
    },
}

impl CallError {
    /// The plugin the error is about.
    pub fn plugin(&self) -> &Arc<PluginLabel> {
        match self {
            CallError::Limit { plugin, .. }
            | CallError::Denied { plugin, .. }
            | CallError::Trap { plugin, .. }
            | CallError::Plugin { plugin, .. }
            | CallError::InvalidOutput { plugin, .. }
            | CallError::Config { plugin, .. }
            | CallError::WrongKind { plugin, .. }
            | CallError::Host { plugin, .. } => plugin,
        }
    }

    /// A short machine-readable kind ("limit", "trap", "plugin"...).
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::Limit { .. } => "limit",
            CallError::Denied { .. } => "denied",
            CallError::Trap { .. } => "trap",
            CallError::Plugin { .. } => "plugin",
            CallError::InvalidOutput { .. } => "invalid-output",
            CallError::Config { .. } => "config",
            CallError::WrongKind { .. } => "wrong-kind",
            CallError::Host { .. } => "host",
        }
    }
}
