//! Where the daemon's log lines go, and what they say.
//!
//! Every line reads completely on its own: its text is the message followed
//! by each field as `key=value`, rendered once by tracing-subscriber's
//! default field formatter, the same text on a terminal and in the journal.
//! Under systemd the lines go to the journal in its native protocol, so that
//! each keeps its priority and its fields as fields of their own (`F_KEY`,
//! for `journalctl -o verbose` and filters), besides the text in MESSAGE that
//! plain `journalctl` shows.

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::field::Visit;
use tracing_subscriber::fmt::format::{DefaultFields, Writer};
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::host::journal::{Entry, Journal};

/// The journal's SYSLOG_IDENTIFIER, however the binary was started.
const IDENTIFIER: &str = "rpcbind-proxy";

pub(super) type LogHandle = tracing_subscriber::reload::Handle<EnvFilter, Registry>;

pub(super) fn filter(level: &str) -> EnvFilter {
    EnvFilter::try_new(level).unwrap_or_else(|_| {
        eprintln!("rpcbind-proxy: bad log level {level:?}; using info");
        EnvFilter::new("info")
    })
}

/// Logs go to the journal when systemd connected stderr to it
/// (JOURNAL_STREAM) and its socket answers, to stderr otherwise.
pub(super) fn init(level: &str) -> Option<LogHandle> {
    let (layer, handle) = tracing_subscriber::reload::Layer::new(filter(level));
    let registry = tracing_subscriber::registry().with(layer);
    let journal = std::env::var_os("JOURNAL_STREAM").and_then(|_| Journal::connect().ok());
    let result = match journal {
        Some(journal) => registry.with(JournalLayer { journal }).try_init(),
        // The fmt layer's default field formatter is the one `text` uses.
        None => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            )
            .try_init(),
    };
    result.ok().map(|()| handle)
}

/// Sends each event to the journal as one entry.
struct JournalLayer {
    journal: Journal,
}

impl<S: Subscriber> Layer<S> for JournalLayer {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        // A line the journal does not take has nowhere else to go.
        let _ = self.journal.send(&entry(event));
    }
}

/// An event's text: its message, then each other field as `key=value`.
pub(crate) fn text(event: &Event<'_>) -> String {
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = DefaultFields::new().format_fields(Writer::new(&mut text), event);
    text
}

/// The journal entry for an event. MESSAGE comes right after the priority,
/// so that it is kept if the entry has to be cut.
fn entry(event: &Event<'_>) -> Entry {
    let meta = event.metadata();
    let mut entry = Entry::new();
    entry.add("PRIORITY", priority(*meta.level()));
    entry.add("MESSAGE", &text(event));
    entry.add("SYSLOG_IDENTIFIER", IDENTIFIER);
    event.record(&mut Fields(&mut entry));
    entry.add("TARGET", meta.target());
    if let Some(file) = meta.file() {
        entry.add("CODE_FILE", file);
    }
    if let Some(line) = meta.line() {
        entry.add("CODE_LINE", &line.to_string());
    }
    entry
}

/// syslog's priority for a level: error 3, warning 4, and info as notice
/// (5), so that debug and trace keep levels of their own (6, 7).
fn priority(level: Level) -> &'static str {
    match level {
        Level::ERROR => "3",
        Level::WARN => "4",
        Level::INFO => "5",
        Level::DEBUG => "6",
        Level::TRACE => "7",
    }
}

/// Each field but the message as a journal field of its own, `F_` and its
/// name (journald keeps unprefixed names for its own and systemd's fields).
struct Fields<'a>(&'a mut Entry);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() != "message" {
            self.0.add(&format!("F_{}", field.name()), value);
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() != "message" {
            self.0
                .add(&format!("F_{}", field.name()), &format!("{value:?}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex, PoisonError};

    use tracing::{debug, error, info, warn};

    use super::*;

    /// Keeps the entries it would have sent.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<Entry>>>);

    impl<S: Subscriber> Layer<S> for Capture {
        fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(entry(event));
        }
    }

    fn capture(log: impl FnOnce()) -> Vec<Entry> {
        let c = Capture::default();
        tracing::subscriber::with_default(tracing_subscriber::registry().with(c.clone()), log);
        let entries = c.0.lock().unwrap_or_else(PoisonError::into_inner).clone();
        entries
    }

    #[test]
    fn the_message_carries_every_field_and_the_fields_stay() {
        let e = capture(|| {
            let spec = "tcp:127.0.0.1:111";
            info!(address = %spec, "listening");
            info!(nofile = 524_288_u64, "descriptor limit");
            let reason = "line 2, column 1: unknown key `tll`";
            error!(error = %reason, "reload failed; keeping the running configuration");
            warn!(task = "refresh", error = %"gone", "a background task failed");
            debug!(entries = 3, "registrations changed");
        });
        let got: Vec<_> = e
            .iter()
            .map(|e| (e.get("PRIORITY").unwrap(), e.get("MESSAGE").unwrap()))
            .collect();
        assert_eq!(
            got,
            [
                ("5", "listening address=tcp:127.0.0.1:111"),
                ("5", "descriptor limit nofile=524288"),
                (
                    "3",
                    "reload failed; keeping the running configuration error=line 2, column 1: unknown key `tll`"
                ),
                (
                    "4",
                    "a background task failed task=\"refresh\" error=gone"
                ),
                ("6", "registrations changed entries=3"),
            ]
        );
        assert_eq!(e[0].get("F_ADDRESS"), Some("tcp:127.0.0.1:111"));
        assert_eq!(e[1].get("F_NOFILE"), Some("524288"));
        assert_eq!(e[3].get("F_TASK"), Some("refresh"));
        assert_eq!(e[0].get("SYSLOG_IDENTIFIER"), Some("rpcbind-proxy"));
        assert_eq!(e[0].get("CODE_FILE"), Some(file!()));
        assert!(e.iter().all(|e| e.get("F_MESSAGE").is_none()));
    }

    /// A writer the fmt layer can share.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_terminal_shows_the_journal_text() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let terminal = tracing_subscriber::fmt::layer()
            .without_time()
            .with_ansi(false)
            .with_writer(move || writer.clone());
        let c = Capture::default();
        let subscriber = tracing_subscriber::registry()
            .with(terminal)
            .with(c.clone());
        tracing::subscriber::with_default(subscriber, || {
            warn!(error = %"Permission denied (os error 13)", "cannot raise the descriptor limit");
        });
        let line = String::from_utf8(
            buffer
                .0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
        .unwrap();
        let message = c.0.lock().unwrap_or_else(PoisonError::into_inner)[0]
            .get("MESSAGE")
            .unwrap()
            .to_owned();
        assert_eq!(
            message,
            "cannot raise the descriptor limit error=Permission denied (os error 13)"
        );
        assert!(line.ends_with(&format!(": {message}\n")), "{line:?}");
    }
}
