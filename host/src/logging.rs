//! Logs: `tracing` events on stderr, as text for people or one JSON object per line for
//! collectors (`log.format`), filtered by `log.filter` (`CASHBACKD_LOG`).
//!
//! What is logged never holds a secret: requests are logged by route template (never the
//! query string or headers, which carry postback tokens and signatures), database URLs
//! redacted, callback requests as logged in the delivery log (signatures masked).

use crate::config::{LogFormat, LogSettings};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Installs the process's subscriber writing to stderr. Settings are validated before
/// (`Settings::validate`), so a bad filter cannot reach here; if one does, `warn` is used.
pub fn init(settings: &LogSettings) {
    let _ = tracing::subscriber::set_global_default(subscriber(settings, std::io::stderr));
}

/// The subscriber `init` installs, writing to `writer` (tests capture it).
pub fn subscriber<W>(settings: &LogSettings, writer: W) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(&settings.filter).unwrap_or_else(|_| EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    match settings.format {
        LogFormat::Text => Box::new(builder.finish()),
        LogFormat::Json => Box::new(builder.json().with_current_span(true).with_span_list(false).finish()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A writer that appends to a shared buffer (tests).
    #[derive(Clone, Debug, Default)]
    struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl Capture {
        /// What was written so far.
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
        }
    }

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Capture {
        type Writer = Capture;

        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    #[test]
    fn the_json_format_writes_one_json_object_per_line() {
        let capture = Capture::default();
        let settings = LogSettings { format: LogFormat::Json, filter: "info".into() };
        tracing::subscriber::with_default(subscriber(&settings, capture.clone()), || {
            let span = tracing::info_span!("request", method = "GET", route = "/postback/{network}");
            let _in = span.enter();
            tracing::info!(status = 200u16, "request");
            tracing::debug!("filtered out");
        });
        let text = capture.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).expect("a JSON line");
        assert_eq!(v["fields"]["message"], "request");
        assert_eq!(v["fields"]["status"], 200);
        assert_eq!(v["span"]["route"], "/postback/{network}");
        assert_eq!(v["level"], "INFO");
    }
}
