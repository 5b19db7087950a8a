//! Host bindings of the WIT contract, one module per released version (Zed's layout).
//!
//! A released version's module never changes. A new version gets a new module and a new
//! `wit/since_vX.Y.Z/` folder; `latest` moves to it, and older plugins keep loading
//! through their own module (converting their values to the latest types at the edge).
//! Each module also holds the host side of its version's imports (`log`, `config`,
//! `http`), so a version's whole contract with the host is in one file.

pub mod since_v0_1_0;
pub mod since_v0_2_0;

/// The newest contract version; the rest of the host speaks its types.
pub use since_v0_2_0 as latest;

/// Contract versions this host can load, newest first.
pub const SUPPORTED_API_VERSIONS: &[&str] = super::contract::SUPPORTED;
