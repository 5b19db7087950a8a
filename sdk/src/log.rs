//! Logging to the host.
//!
//! Inside cashbackd each message is stored with the plugin's name and version. The host
//! caps the bytes logged per call (the manifest's `limits.max-log-bytes`): a plugin that
//! logs past the cap fails that call. Under `cargo test` messages are kept by
//! [`crate::testing`] and printed.

pub use crate::bindings::cashback::plugin::log::Level;

/// Records a message at the given level.
pub fn write(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    crate::bindings::cashback::plugin::log::write(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    crate::testing::record_log(level, message);
}

/// Records a debug message.
pub fn debug(message: &str) {
    write(Level::Debug, message);
}

/// Records an informational message.
pub fn info(message: &str) {
    write(Level::Info, message);
}

/// Records a warning.
pub fn warn(message: &str) {
    write(Level::Warn, message);
}

/// Records an error.
pub fn error(message: &str) {
    write(Level::Error, message);
}
