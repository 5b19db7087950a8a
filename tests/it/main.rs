//! cashbackd's integration tests: one binary, one module per area (Svix's `tests/it`).
//!
//! The test plugins are built once by `scripts/build-plugins.sh` (the README's test
//! command runs it first) and compiled once per digest into a store shared by every test
//! and every run, so no test pays for compiling wasm.

mod accounts;
mod admin;
mod api;
mod architecture;
mod backends;
mod backtests;
mod callbacks;
mod chaos;
mod client;
mod common;
mod contract;
mod crash;
mod created_on_click;
mod dashboard;
mod e2e;
mod faults;
mod file_import;
mod ingress;
mod inputs;
mod jobs;
mod ledger;
mod ledger_props;
mod mail;
mod notify;
mod operator;
mod ops;
mod pages;
mod partner_plugins;
mod payouts;
mod plans;
mod plugin_cli;
mod plugin_new;
mod plugin_runtime;
mod public;
mod registry;
mod replicas;
mod sandbox;
mod security;
mod sessions;
mod smtp;
mod typescript;
