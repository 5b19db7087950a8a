//! cashbackd: a self-hosted cashback and affiliate-conversion platform whose network
//! adapters and merchant rules are sandboxed WebAssembly plugins.
//!
//! The crate is organised one module per concern; the README maps them.

pub mod auth;
pub mod backtests;
pub mod callbacks;
pub mod catalog;
pub mod cli;
pub mod clock;
pub mod config;
pub mod conversions;
pub mod dashboard;
pub mod db;
pub mod demo;
pub mod http;
pub mod imports;
pub mod ingest;
pub mod input;
pub mod ledger;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod outbound;
pub mod outbox;
pub mod payouts;
pub mod plugin;
pub mod registry;
pub mod scheduler;
pub mod server;
pub mod states;
pub mod users;
