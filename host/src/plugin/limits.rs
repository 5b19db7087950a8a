//! Per-call limits. Each plugin call runs with a deadline, a memory cap, caps on the size
//! of what goes in and comes out, a cap on what it may log, and (adapters) a budget of
//! HTTP requests. A manifest may ask for other values within the host's maxima; the host
//! configuration sets both the defaults and the maxima.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Effective limits of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Limits {
    /// Wall-clock deadline of one call, in milliseconds (epoch interruption).
    pub deadline_ms: u64,
    /// Linear memory the plugin may grow to, in MiB.
    pub memory_mib: u64,
    /// Largest input a call accepts (order, request, file), in bytes.
    pub max_input_bytes: u64,
    /// Largest output a call may return, in bytes.
    pub max_output_bytes: u64,
    /// Bytes the plugin may log in one call.
    pub max_log_bytes: u64,
    /// HTTP requests one call may make (adapters).
    pub max_http_requests: u32,
    /// Largest HTTP response body the host reads for the plugin, in bytes.
    pub max_http_response_bytes: u64,
    /// Timeout of one HTTP request, in milliseconds.
    pub http_timeout_ms: u64,
}

impl Limits {
    /// What a plugin gets when its manifest says nothing.
    pub const fn host_defaults() -> Limits {
        Limits {
            deadline_ms: 1_000,
            memory_mib: 32,
            max_input_bytes: 4 << 20,
            max_output_bytes: 4 << 20,
            max_log_bytes: 64 << 10,
            max_http_requests: 16,
            max_http_response_bytes: 16 << 20,
            http_timeout_ms: 10_000,
        }
    }

    /// The most a manifest may ask for.
    pub const fn host_maxima() -> Limits {
        Limits {
            deadline_ms: 120_000,
            memory_mib: 256,
            max_input_bytes: 64 << 20,
            max_output_bytes: 64 << 20,
            max_log_bytes: 1 << 20,
            max_http_requests: 256,
            max_http_response_bytes: 64 << 20,
            http_timeout_ms: 60_000,
        }
    }

    /// The memory cap in bytes.
    pub fn memory_bytes(&self) -> usize {
        usize::try_from(self.memory_mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX)
    }

    /// `self` with `over`'s values where set, each capped at `maxima`.
    pub fn with(&self, over: &LimitsOverride, maxima: &Limits) -> Limits {
        Limits {
            deadline_ms: over.deadline_ms.unwrap_or(self.deadline_ms).min(maxima.deadline_ms),
            memory_mib: over.memory_mib.unwrap_or(self.memory_mib).min(maxima.memory_mib),
            max_input_bytes: over.max_input_bytes.unwrap_or(self.max_input_bytes).min(maxima.max_input_bytes),
            max_output_bytes: over.max_output_bytes.unwrap_or(self.max_output_bytes).min(maxima.max_output_bytes),
            max_log_bytes: over.max_log_bytes.unwrap_or(self.max_log_bytes).min(maxima.max_log_bytes),
            max_http_requests: over.max_http_requests.unwrap_or(self.max_http_requests).min(maxima.max_http_requests),
            max_http_response_bytes: over
                .max_http_response_bytes
                .unwrap_or(self.max_http_response_bytes)
                .min(maxima.max_http_response_bytes),
            http_timeout_ms: over.http_timeout_ms.unwrap_or(self.http_timeout_ms).min(maxima.http_timeout_ms),
        }
    }
}

/// Limits a manifest or an operator asks for; unset fields keep the defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct LimitsOverride {
    /// See [`Limits::deadline_ms`].
    pub deadline_ms: Option<u64>,
    /// See [`Limits::memory_mib`].
    pub memory_mib: Option<u64>,
    /// See [`Limits::max_input_bytes`].
    pub max_input_bytes: Option<u64>,
    /// See [`Limits::max_output_bytes`].
    pub max_output_bytes: Option<u64>,
    /// See [`Limits::max_log_bytes`].
    pub max_log_bytes: Option<u64>,
    /// See [`Limits::max_http_requests`].
    pub max_http_requests: Option<u32>,
    /// See [`Limits::max_http_response_bytes`].
    pub max_http_response_bytes: Option<u64>,
    /// See [`Limits::http_timeout_ms`].
    pub http_timeout_ms: Option<u64>,
}

/// A limit that a manifest or an operator's override asks for and the host refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("limits.{name}: {reason}")]
pub struct LimitError {
    /// The limit's name as a manifest spells it (`deadline-ms`).
    pub name: &'static str,
    /// Why.
    pub reason: String,
}

impl LimitsOverride {
    /// Refuses values above the host's maxima, naming the field.
    pub fn check_within(&self, maxima: &Limits) -> Result<(), LimitError> {
        let checks: [(&str, Option<u64>, u64); 8] = [
            ("deadline-ms", self.deadline_ms, maxima.deadline_ms),
            ("memory-mib", self.memory_mib, maxima.memory_mib),
            ("max-input-bytes", self.max_input_bytes, maxima.max_input_bytes),
            ("max-output-bytes", self.max_output_bytes, maxima.max_output_bytes),
            ("max-log-bytes", self.max_log_bytes, maxima.max_log_bytes),
            ("max-http-requests", self.max_http_requests.map(u64::from), u64::from(maxima.max_http_requests)),
            ("max-http-response-bytes", self.max_http_response_bytes, maxima.max_http_response_bytes),
            ("http-timeout-ms", self.http_timeout_ms, maxima.http_timeout_ms),
        ];
        for (name, asked, max) in checks {
            match asked {
                // Zero requests is a meaningful declaration ("this adapter never calls out");
                // a zero of anything else would make every call fail.
                Some(0) if name != "max-http-requests" => {
                    return Err(LimitError { name, reason: "must be greater than 0".into() });
                }
                Some(v) if v > max => {
                    return Err(LimitError { name, reason: format!("{v} exceeds the host's maximum of {max}") });
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Which limit a call hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitHit {
    /// It ran past its deadline.
    Deadline {
        /// The deadline.
        ms: u64,
    },
    /// It tried to grow memory past the cap.
    Memory {
        /// The cap.
        bytes: u64,
    },
    /// It recursed past the wasm stack limit.
    Stack,
    /// The input was larger than the cap.
    InputSize {
        /// Input size.
        size: u64,
        /// The cap.
        cap: u64,
    },
    /// It returned more than the cap.
    OutputSize {
        /// Output size.
        size: u64,
        /// The cap.
        cap: u64,
    },
    /// It logged more than the cap.
    LogBytes {
        /// The cap.
        cap: u64,
    },
    /// It made more HTTP requests than allowed.
    HttpRequests {
        /// The budget.
        cap: u32,
    },
}

impl fmt::Display for LimitHit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitHit::Deadline { ms } => {
                write!(f, "deadline of {ms} ms exceeded (limits.deadline-ms)")
            }
            LimitHit::Memory { bytes } => write!(f, "memory cap of {} MiB exceeded (limits.memory-mib)", bytes >> 20),
            LimitHit::Stack => write!(f, "wasm stack exhausted (too deep recursion)"),
            LimitHit::InputSize { size, cap } => {
                write!(f, "input of {size} bytes exceeds the cap of {cap} bytes (limits.max-input-bytes)")
            }
            LimitHit::OutputSize { size, cap } => {
                write!(f, "output of {size} bytes exceeds the cap of {cap} bytes (limits.max-output-bytes)")
            }
            LimitHit::LogBytes { cap } => write!(f, "log cap of {cap} bytes per call exceeded (limits.max-log-bytes)"),
            LimitHit::HttpRequests { cap } => {
                write!(f, "budget of {cap} HTTP requests per call exceeded (limits.max-http-requests)")
            }
        }
    }
}
