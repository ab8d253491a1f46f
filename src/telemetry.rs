//! Logging setup: `tracing` to stderr, human-readable or JSON lines, filtered by `RUST_LOG`
//! (default `info`). Every line passes the redactor on its way out: whatever a log line quotes,
//! no registered secret reaches the log.

use std::io::{IsTerminal, Write};

use tracing::Metadata;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(RedactingStderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}

/// stderr, masked. The formatter writes each event with one call, so a secret is never split
/// across two writes. The per-request access line (target `ACCESS`) is built from keyproxy's own
/// values and the masked path, so it skips the scan: the hot path stays as fast as before.
struct RedactingStderr;

/// The target of the one log line per proxied request.
pub const ACCESS: &str = "keyproxy::access";

impl<'a> MakeWriter<'a> for RedactingStderr {
    type Writer = Redacting;

    fn make_writer(&'a self) -> Redacting {
        Redacting { scan: true }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Redacting {
        Redacting {
            scan: meta.target() != ACCESS,
        }
    }
}

struct Redacting {
    scan: bool,
}

impl Write for Redacting {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.scan && crate::redact::contains_secret(buf) {
            let mut masked = buf.to_vec();
            crate::redact::mask_in_place(&mut masked);
            std::io::stderr().write_all(&masked)?;
        } else {
            std::io::stderr().write_all(buf)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
