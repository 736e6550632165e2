//! The server's log lines: a `tracing` subscriber that writes one line per
//! event to stderr, as text or as JSON, at a level a reload may change.
//!
//! It writes what `tracing-subscriber`'s `fmt` layer wrote before (the
//! audit tooling and the e2e read these lines), without its registry,
//! span storage, ANSI and `serde` machinery: ~60 KiB of the 4 MiB budget
//! (docs/decisions.md). The server opens no spans, so a span is accepted
//! and forgotten; an event inside one is written without span context.
//!
//! Text: `2026-12-07T13:36:22.123456Z  INFO screengate::audit: message key=value`
//! (the message first, then each field as `name=value`, values `Debug`
//! formatted: strings quoted, `%display` values bare).
//! JSON: `{"timestamp":…,"level":"INFO","fields":{"message":…,…},"target":…}`.
//!
//! What it leaves to others: which events exist and what they carry (the
//! modules that log), the level in force (`live.rs` and `main.rs`).

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};

/// A log line longer than this is cut (and says so): one event never
/// becomes an unbounded write.
pub const MAX_LINE: usize = 16 * 1024;

/// Text or JSON lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Human-readable `key=value` lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The subscriber. Its level is one atomic, so a reload changes it
/// without a lock and every callsite asks again (`Interest::sometimes`).
#[derive(Debug)]
pub struct Lines {
    format: Format,
    level: AtomicU8,
}

fn encode(l: LevelFilter) -> u8 {
    match l {
        LevelFilter::OFF => 0,
        LevelFilter::ERROR => 1,
        LevelFilter::WARN => 2,
        LevelFilter::INFO => 3,
        LevelFilter::DEBUG => 4,
        _ => 5,
    }
}

fn rank(l: &Level) -> u8 {
    match *l {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        _ => 5,
    }
}

impl Lines {
    /// A subscriber writing `format` at `level`.
    pub fn new(format: Format, level: LevelFilter) -> Self {
        Self {
            format,
            level: AtomicU8::new(encode(level)),
        }
    }

    /// Changes the level in force (a reload); takes effect at the next event.
    pub fn set_level(&self, level: LevelFilter) {
        self.level.store(encode(level), Ordering::Relaxed);
    }

    /// Formats one event as a line (with its newline), without writing it.
    fn line(&self, event: &Event<'_>, now: SystemTime) -> String {
        let meta = event.metadata();
        let mut out = String::with_capacity(256);
        let stamp = timestamp(now);
        match self.format {
            Format::Text => {
                let mut v = TextFields::default();
                event.record(&mut v);
                let _ = write!(
                    out,
                    "{stamp} {:>5} {}: {}",
                    meta.level().as_str(),
                    meta.target(),
                    v.out
                );
            }
            Format::Json => {
                let mut v = JsonFields::default();
                event.record(&mut v);
                out.push_str("{\"timestamp\":");
                json_str(&mut out, &stamp);
                out.push_str(",\"level\":");
                json_str(&mut out, meta.level().as_str());
                out.push_str(",\"fields\":{");
                out.push_str(&v.out);
                out.push_str("},\"target\":");
                json_str(&mut out, meta.target());
                out.push('}');
            }
        }
        if out.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            out.truncate(cut);
            out.push_str(" …(cut)");
        }
        out.push('\n');
        out
    }
}

impl Subscriber for Lines {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        // The level can change at a reload: ask `enabled` every time.
        Interest::sometimes()
    }

    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        rank(meta.level()) <= self.level.load(Ordering::Relaxed)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        // Anything may be enabled after a reload.
        Some(LevelFilter::TRACE)
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let line = self.line(event, SystemTime::now());
        // One write per line; a failed log write has nowhere to be reported.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// `message` first, then ` name=value` for each other field.
#[derive(Default)]
struct TextFields {
    out: String,
}

impl TextFields {
    fn sep(&mut self) {
        if !self.out.is_empty() {
            self.out.push(' ');
        }
    }
}

fn name(field: &Field) -> &str {
    let n = field.name();
    n.strip_prefix("r#").unwrap_or(n)
}

impl Visit for TextFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            // The message leads the line, whatever order it was recorded in.
            let mut m = String::new();
            let _ = write!(m, "{value:?}");
            if !self.out.is_empty() {
                m.push(' ');
            }
            self.out.insert_str(0, &m);
        } else {
            self.sep();
            let _ = write!(self.out, "{}={value:?}", name(field));
        }
    }
}

/// `"name":value` pairs, comma separated.
#[derive(Default)]
struct JsonFields {
    out: String,
}

impl JsonFields {
    fn key(&mut self, field: &Field) {
        if !self.out.is_empty() {
            self.out.push(',');
        }
        json_str(&mut self.out, name(field));
        self.out.push(':');
    }
}

impl Visit for JsonFields {
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        let _ = write!(self.out, "{value}");
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        let _ = write!(self.out, "{value}");
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        let _ = write!(self.out, "{value}");
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if value.is_finite() {
            let _ = write!(self.out, "{value}");
        } else {
            self.out.push_str("null");
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        json_str(&mut self.out, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.key(field);
        let mut s = String::new();
        let _ = write!(s, "{value:?}");
        json_str(&mut self.out, &s);
    }
}

/// `s` as a JSON string (RFC 8259 escapes).
fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// RFC 3339 UTC with microseconds, as `tracing-subscriber` wrote it. A
/// clock before 1970 (an unset device clock) prints as the epoch.
fn timestamp(now: SystemTime) -> String {
    let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, dd) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (H. Hinnant's `civil_from_days`, for non-negative day counts).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;

    /// Captures the lines `Lines` would write, through the same formatter.
    struct Capture {
        inner: Lines,
        lines: Arc<Mutex<Vec<String>>>,
    }

    impl Subscriber for Capture {
        fn register_callsite(&self, m: &'static Metadata<'static>) -> Interest {
            self.inner.register_callsite(m)
        }
        fn enabled(&self, m: &Metadata<'_>) -> bool {
            self.inner.enabled(m)
        }
        fn new_span(&self, a: &Attributes<'_>) -> Id {
            self.inner.new_span(a)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, e: &Event<'_>) {
            let at = UNIX_EPOCH + Duration::from_micros(1_765_113_382_123_456);
            self.lines.lock().unwrap().push(self.inner.line(e, at));
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    fn capture(format: Format, level: LevelFilter, f: impl FnOnce()) -> Vec<String> {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sub = Capture {
            inner: Lines::new(format, level),
            lines: lines.clone(),
        };
        tracing::subscriber::with_default(sub, f);
        lines.lock().unwrap().clone()
    }

    #[test]
    fn text_lines_are_what_the_fmt_layer_wrote() {
        let reason = "replayed";
        let lines = capture(Format::Text, LevelFilter::INFO, || {
            tracing::info!(target: "screengate::audit", event = "rejected", reason, peer_uid = 1000u32, "handshake refused");
            tracing::warn!(end = %"client_stalled", "session closed");
            tracing::info!(ok = true);
        });
        assert_eq!(
            lines,
            vec![
                "2025-12-07T13:16:22.123456Z  INFO screengate::audit: handshake refused event=\"rejected\" reason=\"replayed\" peer_uid=1000\n",
                "2025-12-07T13:16:22.123456Z  WARN screengate_server::logfmt::tests: session closed end=client_stalled\n",
                "2025-12-07T13:16:22.123456Z  INFO screengate_server::logfmt::tests: ok=true\n",
            ]
        );
    }

    #[test]
    fn json_lines_parse_and_carry_target_level_and_fields() {
        let lines = capture(Format::Json, LevelFilter::INFO, || {
            tracing::info!(target: "screengate::audit", event = "rejected", reason = "bad_origin", n = 3u64, x = -2i64, "quote \" and \\ and \n");
        });
        assert_eq!(lines.len(), 1);
        let j: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(j["target"], "screengate::audit");
        assert_eq!(j["level"], "INFO");
        assert_eq!(j["timestamp"], "2025-12-07T13:16:22.123456Z");
        assert_eq!(j["fields"]["event"], "rejected");
        assert_eq!(j["fields"]["reason"], "bad_origin");
        assert_eq!(j["fields"]["n"], 3);
        assert_eq!(j["fields"]["x"], -2);
        assert_eq!(j["fields"]["message"], "quote \" and \\ and \n");
    }

    #[test]
    fn the_level_filters_and_a_reload_changes_it() {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sub = Arc::new(Capture {
            inner: Lines::new(Format::Text, LevelFilter::WARN),
            lines: lines.clone(),
        });
        let s2 = sub.clone();
        tracing::subscriber::with_default(ArcSub(sub), || {
            tracing::info!("hidden");
            tracing::error!("shown");
            s2.inner.set_level(LevelFilter::DEBUG);
            tracing::debug!("now shown");
            tracing::trace!("still hidden");
            s2.inner.set_level(LevelFilter::OFF);
            tracing::error!("off");
        });
        let got = lines.lock().unwrap().clone();
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].ends_with("shown\n") && got[1].ends_with("now shown\n"));
    }

    struct ArcSub(Arc<Capture>);
    impl Subscriber for ArcSub {
        fn register_callsite(&self, m: &'static Metadata<'static>) -> Interest {
            self.0.register_callsite(m)
        }
        fn enabled(&self, m: &Metadata<'_>) -> bool {
            self.0.enabled(m)
        }
        fn new_span(&self, a: &Attributes<'_>) -> Id {
            self.0.new_span(a)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, e: &Event<'_>) {
            self.0.event(e)
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    #[test]
    fn a_huge_field_is_cut_and_control_bytes_are_escaped() {
        let big = "x".repeat(MAX_LINE * 2);
        let lines = capture(Format::Json, LevelFilter::INFO, || {
            tracing::info!(v = %big, c = "\u{1}\u{7f}");
        });
        assert!(lines[0].len() <= MAX_LINE + 16 && lines[0].ends_with("…(cut)\n"));
        let lines = capture(Format::Json, LevelFilter::INFO, || {
            tracing::info!(c = "\u{1}\u{7f}");
        });
        assert!(lines[0].contains("\\u0001\\u007f"), "{}", lines[0]);
    }

    /// What `tracing-subscriber`'s `fmt` layer (the server's logger
    /// before) writes for `f`, without timestamps.
    fn reference(json: bool, f: impl FnOnce()) -> Vec<String> {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let w = buf.clone();
        let b = tracing_subscriber::fmt()
            .with_writer(move || w.clone())
            .with_ansi(false)
            .without_time();
        if json {
            tracing::subscriber::with_default(b.json().finish(), f);
        } else {
            tracing::subscriber::with_default(b.finish(), f);
        }
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        text.lines().map(|l| format!("{l}\n")).collect()
    }

    fn events() {
        let reason = "replayed";
        let err = std::io::Error::other("boom");
        tracing::info!(target: "screengate::audit", event = "rejected", reason, peer_uid = 1000u32, "handshake refused");
        tracing::warn!(end = %"client_stalled", n = -3i64, ok = false, "session closed");
        tracing::info!(ok = true);
        tracing::error!(error = %err, path = ?std::path::Path::new("/a b"), "quote \" and \\");
        tracing::info!(r#type = "x", "raw name");
    }

    #[test]
    fn text_is_byte_for_byte_the_fmt_layers_after_the_timestamp() {
        let ours = capture(Format::Text, LevelFilter::TRACE, events);
        let theirs = reference(false, events);
        assert_eq!((ours.len(), theirs.len()), (5, 5));
        for (o, t) in ours.iter().zip(&theirs) {
            // ours: "<27-char timestamp> <rest>", theirs: "<rest>"
            assert_eq!(&o[28..], t.as_str());
        }
    }

    #[test]
    fn json_is_the_fmt_layers_but_for_the_timestamp() {
        let ours = capture(Format::Json, LevelFilter::TRACE, events);
        let theirs = reference(true, events);
        assert_eq!((ours.len(), theirs.len()), (5, 5));
        for (o, t) in ours.iter().zip(&theirs) {
            let mut o: serde_json::Value = serde_json::from_str(o).unwrap();
            let t: serde_json::Value = serde_json::from_str(t).unwrap();
            o.as_object_mut().unwrap().remove("timestamp");
            assert_eq!(o, t);
        }
    }

    #[test]
    fn dates_are_proleptic_gregorian() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(59), (1970, 3, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_429), (2025, 12, 7));
        assert_eq!(
            timestamp(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00.000000Z"
        );
    }
}
