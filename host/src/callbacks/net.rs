//! Outbound safety for callbacks: the shared guards of [`crate::outbound`] (IP literals
//! checked before sending, a DNS hook that drops non-public addresses, no redirects, no
//! proxies from the environment) with the callbacks' own setting
//! (`--callbacks-allow-private`), and response bodies read up to a cap.

use crate::outbound::{self, Reach};
use std::time::Duration;

pub use crate::outbound::is_public;

/// Checks a callback URL before anything is sent: http or https, and, for an IP-literal
/// host, a public address unless private ones are allowed.
pub fn check_url(url: &str, allow_private: bool) -> Result<url::Url, String> {
    outbound::check_url(url, Reach::callbacks(allow_private))
}

/// The HTTP client every callback goes through.
pub fn client(allow_private: bool) -> Result<reqwest::Client, reqwest::Error> {
    outbound::client_builder(Reach::callbacks(allow_private))
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("cashbackd/", env!("CARGO_PKG_VERSION"), " (callbacks)"))
        .build()
}

/// Reads at most `cap` bytes of a response body; what is beyond is not read (the
/// connection is dropped). Returns the bytes and whether the body was cut.
pub async fn read_capped(mut response: reqwest::Response, cap: usize) -> (Vec<u8>, bool) {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = cap.saturating_sub(body.len());
                if chunk.len() > room {
                    body.extend_from_slice(&chunk[..room]);
                    return (body, true);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) | Err(_) => return (body, false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_names_the_callbacks_setting() {
        let refused = check_url("http://169.254.169.254/latest", false).expect_err("refused");
        assert!(refused.contains("--callbacks-allow-private"), "{refused}");
        assert!(check_url("http://127.0.0.1:8080/", true).is_ok());
    }
}
