//! Pure formatting of log entries: the log file's `text` and `json` lines and
//! the escaped values the terminal shows.
//!
//! Takes a `LogEvent` and the time it was logged, returns a `String` (one
//! line, no newline). Nothing here does I/O, so the Logger's handler can
//! format on the async thread and hand the line to a drain thread, and tests
//! can pin the output with a fixed time.
//!
//! Escaping is what keeps one event on one line and keeps file names from
//! driving a terminal: in `text`, control characters, `"` and `\` are
//! escaped and invalid UTF-8 bytes are written `\xNN`; in `json`, strings
//! follow JSON's rules and paths are `RelPath::escaped()`.

use crate::contract::messages::{LogEvent, LogValue, Verb};
use crate::contract::relpath::{escape_bytes, RelPath};
use std::fmt::Write as _;
use std::time::SystemTime;

/// Format of the log file (`--log-format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// One line of the log file for `ev`, logged at `ts`, without the newline.
pub fn file_line(format: LogFormat, ts: SystemTime, ev: &LogEvent) -> String {
    match format {
        LogFormat::Text => text_line(ts, ev),
        LogFormat::Json => json_line(ts, ev),
    }
}

/// RFC 3339 in UTC with milliseconds, as the log contract asks.
pub fn timestamp(ts: SystemTime) -> String {
    humantime::format_rfc3339_millis(ts).to_string()
}

/// `ts LEVEL verb path=… key=value … dry_run=true`.
pub fn text_line(ts: SystemTime, ev: &LogEvent) -> String {
    let mut out = String::with_capacity(96);
    out.push_str(&timestamp(ts));
    out.push(' ');
    out.push_str(ev.level().as_str());
    out.push(' ');
    out.push_str(ev.verb.as_str());
    if let Some(path) = &ev.path {
        out.push_str(" path=");
        out.push_str(&text_path(path));
    }
    for (key, value) in &ev.fields {
        out.push(' ');
        out.push_str(key);
        out.push('=');
        push_text_value(&mut out, value);
    }
    if ev.dry_run {
        out.push_str(" dry_run=true");
    }
    out
}

/// `{"ts":…,"level":…,"msg":verb,"path":…,fields…,"dry_run":true}`, keys in
/// that order.
pub fn json_line(ts: SystemTime, ev: &LogEvent) -> String {
    let mut out = String::with_capacity(128);
    out.push_str("{\"ts\":");
    push_json_str(&mut out, &timestamp(ts));
    out.push_str(",\"level\":");
    push_json_str(&mut out, ev.level().as_str());
    out.push_str(",\"msg\":");
    push_json_str(&mut out, ev.verb.as_str());
    if let Some(path) = &ev.path {
        out.push_str(",\"path\":");
        push_json_str(&mut out, &path.escaped());
    }
    for (key, value) in &ev.fields {
        out.push(',');
        push_json_str(&mut out, key);
        out.push(':');
        push_json_value(&mut out, value);
    }
    if ev.dry_run {
        out.push_str(",\"dry_run\":true");
    }
    out.push('}');
    out
}

/// The terminal's line for a `tick` entry: what was done, how much, how
/// fast, e.g. `sync 3: 2 copied, 1 deleted; 5.2 MB in 0.31 s (16.8 MB/s)`.
pub fn tick_summary(ev: &LogEvent) -> String {
    let n = |key: &str| match ev.field(key) {
        Some(LogValue::U64(v)) => *v,
        _ => 0,
    };
    let mut done: Vec<String> = [
        ("copy", "copied"),
        ("update", "updated"),
        ("meta", "metadata set"),
        ("symlink", "links set"),
        ("move", "moved"),
        ("link", "hard-linked"),
        ("mkdir", "folders made"),
        ("delete", "deleted"),
        ("rmdir", "folders removed"),
        ("skip", "skipped"),
        ("warn", "warnings"),
    ]
    .iter()
    .filter(|(key, _)| n(key) > 0)
    .map(|(key, word)| format!("{} {word}", n(key)))
    .collect();
    // The stages' own counts (`TickCx::count`), by their keys.
    let known = |key: &str| {
        Verb::COUNTED.iter().any(|v| v.as_str() == key)
            || ["seq", "bytes", "errors", "elapsed_ms", "rescanned"].contains(&key)
    };
    for (key, value) in &ev.fields {
        match value {
            LogValue::U64(v) if *v > 0 && !known(key) => done.push(format!("{v} {key}")),
            _ => {}
        }
    }
    if n("errors") > 0 {
        done.push(format!("{} errors", n("errors")));
    }
    if done.is_empty() {
        done.push("nothing to do".into());
    }
    let secs = n("elapsed_ms") as f64 / 1000.0;
    let bytes = n("bytes");
    let mut line = format!("sync {}: {}", n("seq"), done.join(", "));
    if bytes > 0 && secs > 0.0 {
        line.push_str(&format!(
            "; {} in {secs:.2} s ({}/s)",
            human_bytes(bytes as f64),
            human_bytes(bytes as f64 / secs)
        ));
    } else if bytes > 0 {
        // Under a millisecond (a sparse file's few blocks): no rate to say.
        line.push_str(&format!("; {} in {secs:.2} s", human_bytes(bytes as f64)));
    } else {
        line.push_str(&format!(" in {secs:.2} s"));
    }
    if let Some(LogValue::Str(mode)) = ev.field("mode") {
        line.push_str(&format!(" [{mode}, {} folders listed]", n("rescanned")));
    }
    for flag in ["guard", "interrupted"] {
        if ev.field(flag).is_some() {
            line.push_str(&format!(" [{flag}]"));
        }
    }
    if ev.dry_run {
        line.push_str(" [dry run]");
    }
    line
}

/// `512 B`, `5.2 MB`: decimal units, as the summary and the progress bar
/// show sizes.
pub(crate) fn human_bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = b;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A path as the text format and the terminal show it.
pub fn text_path(path: &RelPath) -> String {
    if path.is_root() {
        return ".".to_string();
    }
    let mut out = String::with_capacity(path.as_bytes().len() + 2);
    push_text_bytes(&mut out, path.as_bytes());
    out
}

/// A value as the text format and the terminal show it.
pub fn text_value(value: &LogValue) -> String {
    let mut out = String::new();
    push_text_value(&mut out, value);
    out
}

fn push_text_value(out: &mut String, value: &LogValue) {
    match value {
        LogValue::U64(n) => push_display(out, n),
        LogValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        LogValue::Str(s) => push_text_bytes(out, s.as_bytes()),
        LogValue::Bytes(b) => push_text_bytes(out, b),
    }
}

/// Quoted when a reader splitting on spaces and `=` would misread it.
fn needs_quotes(bytes: &[u8]) -> bool {
    bytes.is_empty() || bytes.iter().any(|b| matches!(b, b' ' | b'"' | b'='))
}

/// Valid UTF-8 is kept with its special characters escaped; each invalid
/// byte becomes `\xNN`. Escaping works on the raw bytes (not on
/// `RelPath::escaped()`) so that a literal backslash (`\\`) and an invalid
/// byte (`\xFF`) stay distinct.
fn push_text_bytes(out: &mut String, bytes: &[u8]) {
    let quoted = needs_quotes(bytes);
    if quoted {
        out.push('"');
    }
    for chunk in bytes.utf8_chunks() {
        chunk.valid().chars().for_each(|c| push_text_char(out, c));
        chunk.invalid().iter().for_each(|&b| push_hex_byte(out, b));
    }
    if quoted {
        out.push('"');
    }
}

fn push_text_char(out: &mut String, c: char) {
    match c {
        '"' => out.push_str("\\\""),
        '\\' => out.push_str("\\\\"),
        '\n' => out.push_str("\\n"),
        '\t' => out.push_str("\\t"),
        '\r' => out.push_str("\\r"),
        // C0 controls and DEL: below 0x80, so `\xNN` cannot be mistaken for
        // an invalid UTF-8 byte (those are 0x80 and up).
        c if (c as u32) < 0x20 || c == '\u{7f}' => push_hex_byte(out, c as u8),
        // C1 controls (some terminals obey them) and the Unicode line
        // separators: valid characters, written as code points.
        c if is_unsafe_unicode(c) => push_display(out, format_args!("\\u{{{:04X}}}", c as u32)),
        c => out.push(c),
    }
}

/// Characters above ASCII that a terminal or a line-oriented reader could
/// act on.
fn is_unsafe_unicode(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

fn push_hex_byte(out: &mut String, b: u8) {
    push_display(out, format_args!("\\x{b:02X}"));
}

fn push_json_value(out: &mut String, value: &LogValue) {
    match value {
        LogValue::U64(n) => push_display(out, n),
        LogValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        LogValue::Str(s) => push_json_str(out, s),
        LogValue::Bytes(b) => push_json_str(out, &escape_bytes(b)),
    }
}

/// A JSON string literal. Beyond what JSON requires, DEL, C1 controls and
/// U+2028/U+2029 are `\u` escaped too, so that `cat` on the log cannot
/// drive a terminal; a JSON parser reads back the same string.
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if is_unsafe_unicode(c) => push_display(out, format_args!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Writing to a `String` cannot fail, so the `fmt::Result` carries nothing.
fn push_display(out: &mut String, value: impl std::fmt::Display) {
    let _ = write!(out, "{value}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    /// 2026-11-26T11:15:55.123Z: a fixed time keeps snapshots stable.
    fn fixed_time() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_795_691_755_123)
    }

    fn path(bytes: &[u8]) -> RelPath {
        RelPath::new(bytes).expect("valid test path")
    }

    fn op(verb: Verb, p: &[u8]) -> LogEvent {
        LogEvent::op(verb, &path(p))
    }

    /// One event per verb, then the names that need escaping.
    fn sample_events() -> Vec<LogEvent> {
        vec![
            op(Verb::Mkdir, b"docs"),
            op(Verb::Copy, b"docs/a.txt").with_u64("bytes", 512),
            op(Verb::Update, b"docs/b.txt").with_u64("bytes", 0),
            op(Verb::Meta, b"docs/c.txt"),
            op(Verb::Symlink, b"docs/link")
                .with("target", LogValue::Bytes((*b"../a b\xff").into())),
            op(Verb::Delete, b"old.txt"),
            op(Verb::Rmdir, b"old"),
            op(Verb::Skip, b"dev/fifo").with_str("reason", "special file"),
            LogEvent::error(
                Some(&path(b"locked.txt")),
                "copy",
                "Permission denied (os error 13)",
            ),
            LogEvent::new(Verb::Warn, Some(path(b"kept")))
                .with_str("reason", "holds excluded entries"),
            LogEvent::new(Verb::Tick, None)
                .with_u64("seq", 3)
                .with_u64("copy", 1)
                .with_u64("bytes", 512)
                .with_u64("errors", 1)
                .with_u64("elapsed_ms", 42)
                .with_str("mode", "full"),
            op(Verb::Copy, b"docs/a.txt")
                .with_u64("bytes", 512)
                .dry_run(true),
            op(Verb::Copy, b"caf\xe9/\xff\xfe.bin").with_u64("bytes", 1),
            op(Verb::Copy, b"new\nline\ttab\x1b[31mred\x7f"),
            op(Verb::Copy, b"quote\"and\\back\\xFF slash=eq"),
            op(Verb::Copy, "c1\u{9b}sep\u{2028}é".as_bytes()),
            LogEvent::new(Verb::Warn, None)
                .with_str("reason", "")
                .with("flag", LogValue::Bool(false)),
        ]
    }

    fn render(f: fn(SystemTime, &LogEvent) -> String) -> String {
        let lines: Vec<String> = sample_events()
            .iter()
            .map(|ev| f(fixed_time(), ev))
            .collect();
        lines.join("\n")
    }

    #[test]
    fn text_lines() {
        insta::assert_snapshot!("text_lines", render(text_line));
    }

    #[test]
    fn json_lines() {
        insta::assert_snapshot!("json_lines", render(json_line));
    }

    #[test]
    fn one_event_is_one_line() {
        for ev in sample_events() {
            for format in [LogFormat::Text, LogFormat::Json] {
                let line = file_line(format, fixed_time(), &ev);
                let bad = line.chars().any(|c| c.is_control() || c == '\u{2028}');
                assert!(!bad, "{line:?}");
            }
        }
    }

    #[test]
    fn text_keeps_backslash_and_invalid_byte_apart() {
        let literal = text_path(&path(b"a\\xFF"));
        let invalid = text_path(&path(b"a\xff"));
        assert_eq!(literal, "a\\\\xFF");
        assert_eq!(invalid, "a\\xFF");
    }

    #[test]
    fn text_quotes_only_when_needed() {
        assert_eq!(text_value(&LogValue::Str("plain".into())), "plain");
        assert_eq!(text_value(&LogValue::Str(String::new())), "\"\"");
        assert_eq!(text_value(&LogValue::Str("a b".into())), "\"a b\"");
        assert_eq!(text_value(&LogValue::Str("k=v".into())), "\"k=v\"");
        assert_eq!(text_value(&LogValue::Str("a\"b".into())), "\"a\\\"b\"");
        assert_eq!(text_value(&LogValue::U64(7)), "7");
    }

    #[test]
    fn text_timestamp_is_utc_with_millis() {
        let line = text_line(fixed_time(), &op(Verb::Mkdir, b"d"));
        assert_eq!(line, "2026-11-26T11:15:55.123Z INFO mkdir path=d");
    }

    fn parse(line: &str) -> serde_json::Map<String, serde_json::Value> {
        match serde_json::from_str(line) {
            Ok(serde_json::Value::Object(map)) => map,
            other => panic!("not a JSON object: {line}: {other:?}"),
        }
    }

    /// Keys in the order the contract gives, read from the raw line (a
    /// parsed map may reorder them).
    fn key_order(line: &str, keys: &[&str]) -> bool {
        let positions: Vec<Option<usize>> = keys
            .iter()
            .map(|k| line.find(&format!("\"{k}\":")))
            .collect();
        positions.iter().all(Option::is_some) && positions.windows(2).all(|w| w[0] < w[1])
    }

    #[test]
    fn json_lines_parse_with_keys_and_types() {
        for ev in sample_events() {
            let line = json_line(fixed_time(), &ev);
            let obj = parse(&line);
            assert_eq!(obj["ts"], "2026-11-26T11:15:55.123Z");
            assert_eq!(obj["level"], ev.level().as_str());
            assert_eq!(obj["msg"], ev.verb.as_str());
            let path = ev.path.as_ref().map(|p| p.escaped());
            assert_eq!(obj.get("path").and_then(|v| v.as_str()), path.as_deref());
            assert_eq!(
                obj.get("dry_run").and_then(|v| v.as_bool()),
                ev.dry_run.then_some(true)
            );
            for (key, value) in &ev.fields {
                let got = &obj[*key];
                match value {
                    LogValue::U64(n) => assert_eq!(got.as_u64(), Some(*n), "{line}"),
                    LogValue::Bool(b) => assert_eq!(got.as_bool(), Some(*b), "{line}"),
                    LogValue::Str(s) => assert_eq!(got.as_str(), Some(s.as_str()), "{line}"),
                    LogValue::Bytes(b) => assert_eq!(got.as_str(), Some(escape_bytes(b).as_str())),
                }
            }
            let mut keys = vec!["ts", "level", "msg"];
            keys.extend(ev.path.as_ref().map(|_| "path"));
            keys.extend(ev.fields.iter().map(|(k, _)| *k));
            keys.extend(ev.dry_run.then_some("dry_run"));
            assert!(key_order(&line, &keys), "{line}");
            assert_eq!(obj.len(), keys.len(), "{line}");
        }
    }

    #[test]
    fn json_reads_back_control_characters() {
        let ev = op(Verb::Copy, b"a\nb\x1b\"\\");
        let obj = parse(&json_line(fixed_time(), &ev));
        assert_eq!(obj["path"], "a\nb\u{1b}\"\\");
    }

    #[test]
    fn tick_summary_reads_as_a_sentence() {
        let tick = LogEvent::new(Verb::Tick, None)
            .with_u64("seq", 3)
            .with_u64("copy", 2)
            .with_u64("delete", 1)
            .with_u64("bytes", 5_200_000)
            .with_u64("errors", 0)
            .with_u64("elapsed_ms", 310);
        assert_eq!(
            tick_summary(&tick),
            "sync 3: 2 copied, 1 deleted; 5.2 MB in 0.31 s (16.8 MB/s)"
        );
        // A stage's own count shows by its key, before the errors.
        let tick = LogEvent::new(Verb::Tick, None)
            .with_u64("seq", 3)
            .with_u64("copy", 2)
            .with_u64("delete", 1)
            .with_u64("backup", 4)
            .with_u64("bytes", 5_200_000)
            .with_u64("errors", 1)
            .with_u64("elapsed_ms", 310);
        assert_eq!(
            tick_summary(&tick),
            "sync 3: 2 copied, 1 deleted, 4 backup, 1 errors; 5.2 MB in 0.31 s (16.8 MB/s)"
        );
        let idle = LogEvent::new(Verb::Tick, None)
            .with_u64("seq", 9)
            .with_u64("elapsed_ms", 2)
            .with_str("mode", "incremental")
            .with_u64("rescanned", 0);
        assert_eq!(
            tick_summary(&idle),
            "sync 9: nothing to do in 0.00 s [incremental, 0 folders listed]"
        );
        // Bytes in under a millisecond: no rate, rather than "0 B/s".
        let sparse = LogEvent::new(Verb::Tick, None)
            .with_u64("seq", 1)
            .with_u64("copy", 1)
            .with_u64("bytes", 1 << 30)
            .with_u64("elapsed_ms", 0);
        assert_eq!(tick_summary(&sparse), "sync 1: 1 copied; 1.1 GB in 0.00 s");
    }
}
