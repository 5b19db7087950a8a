//! The contract versions this host speaks: what a manifest may declare (`manifest.rs`)
//! and what the bindings implement (`wit/`, one module per version). A leaf, so that the
//! manifest checks a plugin's version without depending on the bindings.

/// `cashback:plugin@0.1.0` (frozen).
pub const V0_1_0: &str = "0.1.0";

/// `cashback:plugin@0.2.0`: 0.1.0's worlds and the partner-callback world.
pub const V0_2_0: &str = "0.2.0";

/// Contract versions this host can load, newest first.
pub const SUPPORTED: &[&str] = &[V0_2_0, V0_1_0];
