//! Logging set-up shared by every binary: `RUST_LOG` filters,
//! `--log-format text|json`, UTC timestamps to the millisecond.
//!
//! The timestamp is formatted by hand from `SystemTime` (civil-from-days) so
//! the binaries need no date crate for one line of output.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

struct MillisUtc;

impl FormatTime for MillisUtc {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        w.write_str(&utc_millis(SystemTime::now()))
    }
}

/// Formats a time as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn utc_millis(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Installs the global subscriber; `default` is the filter when `RUST_LOG` is unset.
pub fn init(format: LogFormat, default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_timer(MillisUtc)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// One line for an error and its causes, for `error: ...` output. Causes
/// whose text the line already holds (errors that quote their source) are
/// left out, so nothing is said twice.
pub fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Makes a panic anywhere (including a spawned task) end the process. State
/// behind a lock may be half-updated after a panic; restarting from the log
/// is the one safe recovery, and a supervisor restarts us.
pub fn exit_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        eprintln!("error: internal bug (panic); exiting so recovery restarts from the log");
        std::process::exit(70);
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn error_line_says_each_cause_once() {
        let io = std::io::Error::other("disk on fire");
        let quoted = anyhow::anyhow!("cannot open /x: {io}").context("starting");
        assert_eq!(
            error_line(&quoted),
            "starting: cannot open /x: disk on fire"
        );
        let chained = anyhow::Error::new(io).context("cannot open /x");
        assert_eq!(error_line(&chained), "cannot open /x: disk on fire");
    }

    #[test]
    fn formats_known_instants() {
        assert_eq!(utc_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        assert_eq!(utc_millis(t), "2026-11-18T11:06:40.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(utc_millis(leap), "2000-02-29T00:00:00.000Z");
    }
}
