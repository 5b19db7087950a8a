//! The sandboxed plugin runtime.
//!
//! | file | what |
//! |---|---|
//! | `wit/` | host bindings, one module per released contract version |
//! | `manifest.rs` | the plugin manifest and config schema |
//! | `limits.rs` | per-call limits, defaults and maxima |
//! | `inspect.rs` | reading a component's custom sections before compiling |
//! | `store.rs` | content-addressed components and compiled artifacts |
//! | `runtime.rs` | engine, linkers, instance-pre cache, calls |
//! | `state.rs` | what a store holds during one call; log, config, WASI |
//! | `http.rs` | `http.fetch` for adapters: declared hosts, credentials, caps |
//! | `wire.rs` | input/output sizes for the caps |
//! | `boundary.rs` | what a plugin returns, checked before the host uses it |
//! | `fixtures.rs` | running a plugin against JSON fixtures |

pub mod boundary;
pub mod contract;
pub mod error;
pub mod fixtures;
pub mod http;
pub mod inspect;
pub mod limits;
pub mod manifest;
pub mod runtime;
pub mod sample;
pub mod state;
pub mod store;
pub mod wire;
pub mod wit;

pub use error::{CallError, LoadError, PluginLabel};
pub use limits::{LimitHit, Limits, LimitsOverride};
pub use manifest::{Manifest, PluginConfig, PluginKind};
pub use runtime::{CallOutcome, LoadedPlugin, PluginRuntime, RuntimeConfig};
pub use store::{ContentStore, Digest};
