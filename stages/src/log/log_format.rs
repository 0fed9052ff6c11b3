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
//! follow JSON's rules and paths are `RelPath::escaped()`. That lossy form
//! cannot tell the byte 0xFF from the four characters `\xFF`, so a JSON
//! path or byte-valued field that is not valid UTF-8 also gets a `KEY_b64`
//! key right after it, the raw bytes in standard base64; a valid name (the
//! common case) has no such key.

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
        push_json_b64(&mut out, "path", path.as_bytes());
    }
    for (key, value) in &ev.fields {
        out.push(',');
        push_json_str(&mut out, key);
        out.push(':');
        push_json_value(&mut out, value);
        if let LogValue::Bytes(b) = value {
            push_json_b64(&mut out, key, b);
        }
    }
    if ev.dry_run {
        out.push_str(",\"dry_run\":true");
    }
    out.push('}');
    out
}

/// The terminal's line for a `tick` entry: what was done, how much, how
/// fast, e.g. `sync 3: 2 copied, 1 deleted; 5.2 MB in 0.31 s (16.8 MB/s)`.
/// Counts of things take the noun's number (`1 folder made`, `2 errors`);
/// a dry run copied nothing, so it shows no rate.
pub fn tick_summary(ev: &LogEvent) -> String {
    let n = |key: &str| match ev.field(key) {
        Some(LogValue::U64(v)) => *v,
        _ => 0,
    };
    // Key, then the words for one and for more.
    let mut done: Vec<String> = [
        ("copy", "copied", "copied"),
        ("update", "updated", "updated"),
        ("meta", "metadata set", "metadata set"),
        ("symlink", "link set", "links set"),
        ("move", "moved", "moved"),
        ("link", "hard-linked", "hard-linked"),
        ("mkdir", "folder made", "folders made"),
        ("delete", "deleted", "deleted"),
        ("rmdir", "folder removed", "folders removed"),
        ("skip", "skipped", "skipped"),
        ("warn", "warning", "warnings"),
    ]
    .iter()
    .filter(|(key, ..)| n(key) > 0)
    .map(|&(key, one, many)| counted(n(key), one, many))
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
    // Failures are something the sync met: never "nothing to do".
    if n("errors") > 0 {
        done.push(counted(n("errors"), "error", "errors"));
    }
    if done.is_empty() {
        done.push("nothing to do".into());
    }
    let secs = n("elapsed_ms") as f64 / 1000.0;
    let bytes = n("bytes");
    // One pair of several (`--config`): which.
    let pair = match ev.field("pair") {
        Some(LogValue::Str(name)) => format!(" ({name})"),
        _ => String::new(),
    };
    let mut line = format!("sync {}{pair}: {}", n("seq"), done.join(", "));
    if bytes > 0 && secs > 0.0 && !ev.dry_run {
        line.push_str(&format!(
            "; {} in {secs:.2} s ({}/s)",
            human_bytes(bytes as f64),
            human_bytes(bytes as f64 / secs)
        ));
    } else if bytes > 0 {
        // Under a millisecond (a sparse file's few blocks), or a dry run
        // (the bytes it would copy): no rate to say.
        line.push_str(&format!("; {} in {secs:.2} s", human_bytes(bytes as f64)));
    } else {
        line.push_str(&format!(" in {secs:.2} s"));
    }
    if let Some(LogValue::Str(mode)) = ev.field("mode") {
        let listed = n("rescanned");
        let folders = counted(listed, "folder", "folders");
        line.push_str(&format!(" [{mode}, {folders} listed]"));
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

/// `1 folder made`, `0 folders made`, `2 folders made`.
fn counted(count: u64, one: &str, many: &str) -> String {
    format!("{count} {}", if count == 1 { one } else { many })
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

/// `,"KEY_b64":"…"` when `bytes` are not valid UTF-8: `KEY`'s own value is
/// then lossy (`\xNN` for each invalid byte, and a literal `\xNN` reads
/// the same), this one is exact.
fn push_json_b64(out: &mut String, key: &str, bytes: &[u8]) {
    if std::str::from_utf8(bytes).is_ok() {
        return;
    }
    out.push(',');
    push_json_str(out, &format!("{key}_b64"));
    out.push_str(":\"");
    push_base64(out, bytes);
    out.push('"');
}

/// Standard base64 (RFC 4648, section 4) with `=` padding.
fn push_base64(out: &mut String, bytes: &[u8]) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
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
            let b64 = |key: &str, bytes: &[u8]| {
                let b64 = std::str::from_utf8(bytes)
                    .is_err()
                    .then(|| format!("{key}_b64"));
                std::iter::once(key.to_string()).chain(b64)
            };
            let mut keys: Vec<String> = ["ts", "level", "msg"].map(String::from).into();
            keys.extend(ev.path.iter().flat_map(|p| b64("path", p.as_bytes())));
            for (key, value) in &ev.fields {
                match value {
                    LogValue::Bytes(b) => keys.extend(b64(key, b)),
                    _ => keys.push(key.to_string()),
                }
            }
            keys.extend(ev.dry_run.then(|| "dry_run".to_string()));
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
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
            "sync 3: 2 copied, 1 deleted, 4 backup, 1 error; 5.2 MB in 0.31 s (16.8 MB/s)"
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

    fn tick(seq: u64, counts: &[(&'static str, u64)]) -> LogEvent {
        let ev = LogEvent::new(Verb::Tick, None).with_u64("seq", seq);
        counts.iter().fold(ev, |ev, &(key, n)| ev.with_u64(key, n))
    }

    #[test]
    fn tick_summary_says_one_thing_in_the_singular() {
        let one = tick(
            4,
            &[
                ("symlink", 1),
                ("mkdir", 1),
                ("rmdir", 1),
                ("warn", 1),
                ("errors", 1),
                ("elapsed_ms", 20),
            ],
        );
        assert_eq!(
            tick_summary(&one),
            "sync 4: 1 link set, 1 folder made, 1 folder removed, 1 warning, 1 error in 0.02 s"
        );
        let many = tick(
            5,
            &[
                ("symlink", 2),
                ("mkdir", 3),
                ("rmdir", 4),
                ("warn", 5),
                ("errors", 6),
                ("elapsed_ms", 20),
            ],
        );
        assert_eq!(
            tick_summary(&many),
            "sync 5: 2 links set, 3 folders made, 4 folders removed, 5 warnings, 6 errors in 0.02 s"
        );
        let listed = |n| {
            tick(6, &[("elapsed_ms", 1)])
                .with_str("mode", "incremental")
                .with_u64("rescanned", n)
        };
        assert_eq!(
            tick_summary(&listed(1)),
            "sync 6: nothing to do in 0.00 s [incremental, 1 folder listed]"
        );
        assert_eq!(
            tick_summary(&listed(2)),
            "sync 6: nothing to do in 0.00 s [incremental, 2 folders listed]"
        );
    }

    #[test]
    fn tick_summary_of_a_dry_run_has_no_rate() {
        let dry = tick(
            2,
            &[("copy", 3), ("bytes", 12_300_000), ("elapsed_ms", 1000)],
        )
        .dry_run(true);
        assert_eq!(
            tick_summary(&dry),
            "sync 2: 3 copied; 12.3 MB in 1.00 s [dry run]"
        );
        let applied = dry.dry_run(false);
        assert_eq!(
            tick_summary(&applied),
            "sync 2: 3 copied; 12.3 MB in 1.00 s (12.3 MB/s)"
        );
    }

    #[test]
    fn tick_summary_with_only_errors_is_not_nothing_to_do() {
        let failed = tick(3, &[("errors", 2), ("bytes", 0), ("elapsed_ms", 10)]);
        assert_eq!(tick_summary(&failed), "sync 3: 2 errors in 0.01 s");
        let failed_watching = tick(3, &[("errors", 1), ("elapsed_ms", 10)])
            .with_str("mode", "full")
            .with_u64("rescanned", 7);
        assert_eq!(
            tick_summary(&failed_watching),
            "sync 3: 1 error in 0.01 s [full, 7 folders listed]"
        );
    }

    /// Standard base64, decoded here rather than by the code under test.
    fn decode_b64(text: &str) -> Vec<u8> {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        assert_eq!(text.len() % 4, 0, "unpadded base64: {text}");
        let mut bits = 0u32;
        let mut held = 0;
        let mut out = Vec::new();
        for c in text.bytes().filter(|&c| c != b'=') {
            let v = ALPHABET.iter().position(|&a| a == c);
            let v = v.unwrap_or_else(|| panic!("not base64: {text}"));
            bits = bits << 6 | v as u32;
            held += 6;
            if held >= 8 {
                held -= 8;
                out.push((bits >> held) as u8);
            }
        }
        out
    }

    #[test]
    fn base64_is_the_standard_one() {
        // RFC 4648, section 10.
        for (raw, want) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"fooba", "Zm9vYmE="),
            (b"foobar", "Zm9vYmFy"),
            (b"\xff\xfe\xfd", "//79"),
            (b"\xfb\xff", "+/8="),
        ] {
            let mut got = String::new();
            push_base64(&mut got, raw);
            assert_eq!(got, want);
            assert_eq!(decode_b64(&got), raw);
        }
    }

    #[test]
    fn json_tells_an_invalid_byte_from_its_escape() {
        let invalid = op(Verb::Copy, b"a\xff.txt").with_u64("bytes", 1);
        let literal = op(Verb::Copy, b"a\\xFF.txt").with_u64("bytes", 1);
        let (invalid, literal) = (
            json_line(fixed_time(), &invalid),
            json_line(fixed_time(), &literal),
        );
        assert_ne!(invalid, literal);
        let (invalid, literal) = (parse(&invalid), parse(&literal));
        // The readable key is the same lossy text for both ...
        assert_eq!(invalid["path"], "a\\xFF.txt");
        assert_eq!(literal["path"], "a\\xFF.txt");
        // ... and only the name that is not UTF-8 carries its exact bytes.
        let b64 = invalid["path_b64"].as_str().expect("path_b64");
        assert_eq!(decode_b64(b64), b"a\xff.txt");
        assert_eq!(literal.get("path_b64"), None);
    }

    #[test]
    fn json_byte_fields_carry_their_bytes_when_not_utf8() {
        for key in ["from", "to", "target"] {
            let ev =
                op(Verb::Move, b"new\xff").with(key, LogValue::Bytes((*b"old\xfe/\\xFE").into()));
            let line = json_line(fixed_time(), &ev);
            let obj = parse(&line);
            assert_eq!(obj[key], "old\\xFE/\\xFE", "{line}");
            let b64 = obj[&format!("{key}_b64")].as_str().expect("b64 key");
            assert_eq!(decode_b64(b64), b"old\xfe/\\xFE", "{line}");
            assert_eq!(decode_b64(obj["path_b64"].as_str().unwrap()), b"new\xff");
            // Each `_b64` key follows the key it spells.
            assert!(key_order(
                &line,
                &["path", "path_b64", key, &format!("{key}_b64")]
            ));
        }
        let valid = op(Verb::Symlink, "été/\\x".as_bytes())
            .with("target", LogValue::Bytes("../é".as_bytes().into()));
        let line = json_line(fixed_time(), &valid);
        assert!(!line.contains("_b64"), "{line}");
    }
}
