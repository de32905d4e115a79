//! One line per event, as text or JSON.

use std::time::SystemTime;

use hydratecache_core::{Envelope, Gap, InterruptReason, Kind, PublisherId};
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::Serialize;

use crate::value::show;

/// What `tail` prints for one item of a subscription.
#[derive(Debug, Clone)]
pub(crate) struct Line {
    /// When it was received.
    pub(crate) time: SystemTime,
    pub(crate) topic: String,
    pub(crate) body: Body,
}

#[derive(Debug, Clone)]
pub(crate) enum Body {
    Message(Box<Envelope>),
    Gap(Gap),
    /// The path to the server broke (see `Event::Interrupted`).
    Interrupted(InterruptReason),
    /// Delivery is back and nothing was lost (see `Event::Resumed`).
    Resumed,
    Error(String),
}

impl Line {
    fn kind(&self) -> &'static str {
        match &self.body {
            Body::Message(env) => match env.kind {
                Kind::Update => "update",
                Kind::Delete => "delete",
                Kind::Heartbeat => "heartbeat",
                // A kind this build does not know cannot be decoded, so
                // never arrives; name it anyway.
                _ => "unknown",
            },
            Body::Gap(_) => "gap",
            Body::Interrupted(_) => "interrupted",
            Body::Resumed => "resumed",
            Body::Error(_) => "error",
        }
    }
}

/// The JSON object of one line: every field always present, `null` when it
/// does not apply. Documented in the README; change it only by adding fields.
#[derive(Debug, Serialize)]
struct JsonLine<'a> {
    time: String,
    kind: &'static str,
    topic: &'a str,
    key: Option<&'a str>,
    publisher: Option<String>,
    sequence: Option<u64>,
    version: Option<u64>,
    ttl_remaining_ms: Option<u64>,
    published_at: Option<String>,
    value: Option<serde_json::Value>,
    value_encoding: Option<&'static str>,
    reason: Option<String>,
    missed: Option<u64>,
    error: Option<&'a str>,
}

/// Formats lines for one output format.
#[derive(Debug)]
pub(crate) struct Printer {
    json: bool,
    raw: bool,
    full: bool,
    width: usize,
    tz: TimeZone,
}

impl Printer {
    pub(crate) fn new(json: bool, raw: bool, full: bool) -> Printer {
        Printer {
            json,
            raw,
            full,
            width: terminal_width(),
            tz: TimeZone::system(),
        }
    }

    #[cfg(test)]
    fn for_test(json: bool, raw: bool, full: bool, width: usize) -> Printer {
        Printer {
            json,
            raw,
            full,
            width,
            tz: TimeZone::UTC,
        }
    }

    /// The line's text, without the newline.
    pub(crate) fn format(&self, line: &Line) -> String {
        if self.json {
            self.json_line(line)
        } else {
            self.text_line(line)
        }
    }

    fn json_line(&self, line: &Line) -> String {
        let mut out = JsonLine {
            time: rfc3339(line.time),
            kind: line.kind(),
            topic: &line.topic,
            key: None,
            publisher: None,
            sequence: None,
            version: None,
            ttl_remaining_ms: None,
            published_at: None,
            value: None,
            value_encoding: None,
            reason: None,
            missed: None,
            error: None,
        };
        match &line.body {
            Body::Message(env) => {
                if env.kind != Kind::Heartbeat {
                    out.key = Some(&env.key);
                }
                out.publisher = Some(env.publisher.to_string());
                out.sequence = Some(env.sequence);
                out.version = env.version;
                out.ttl_remaining_ms = env.ttl.map(|ttl| {
                    u64::try_from(ttl.remaining_at(line.time).as_millis()).unwrap_or(u64::MAX)
                });
                out.published_at = Some(rfc3339(env.published_at));
                if env.kind == Kind::Update {
                    let shown = show(&env.payload, self.raw);
                    out.value = Some(shown.to_json());
                    out.value_encoding = Some(shown.encoding());
                }
            }
            Body::Gap(gap) => {
                out.reason = Some(gap.reason.to_string());
                out.missed = gap.missed;
            }
            Body::Interrupted(reason) => out.reason = Some(reason.to_string()),
            Body::Resumed => {}
            Body::Error(message) => out.error = Some(message),
        }
        // Serialising plain strings and numbers cannot fail.
        serde_json::to_string(&out).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    fn text_line(&self, line: &Line) -> String {
        let mut text = format!("{} {:<9}", self.local_time(line.time), line.kind());
        match &line.body {
            Body::Message(env) => {
                if env.kind != Kind::Heartbeat {
                    text.push_str(" key=");
                    text.push_str(&quote_if_needed(&env.key));
                }
                text.push_str(" publisher=");
                text.push_str(&self.publisher(env.publisher));
                text.push_str(&format!(" seq={}", env.sequence));
                if let Some(version) = env.version {
                    text.push_str(&format!(" version={version}"));
                }
                if let Some(ttl) = env.ttl {
                    let left = ttl.remaining_at(line.time);
                    if left.is_zero() {
                        text.push_str(" ttl=expired");
                    } else {
                        text.push_str(&format!(" ttl={}", crate::duration::human(left)));
                    }
                }
                if env.kind == Kind::Update {
                    text.push_str(" value=");
                    let value = show(&env.payload, self.raw).to_text();
                    let value = if self.full {
                        value
                    } else {
                        let budget = self.width.saturating_sub(text.chars().count()).max(16);
                        truncate(&value, budget)
                    };
                    text.push_str(&value);
                }
            }
            Body::Gap(gap) => {
                text.push_str(&format!(" reason={}", gap.reason));
                if let Some(missed) = gap.missed {
                    text.push_str(&format!(" missed={missed}"));
                }
                text.push_str(" (messages may have been missed here)");
            }
            Body::Interrupted(reason) => {
                text.push_str(&format!(" reason={reason}"));
                text.push_str(" (messages may be missed until a gap or resumed line)");
            }
            Body::Resumed => text.push_str(" (delivery is back; nothing was missed)"),
            Body::Error(message) => {
                text.push(' ');
                text.push_str(&message.replace(['\n', '\r'], " "));
            }
        }
        text
    }

    fn publisher(&self, id: PublisherId) -> String {
        let hex = id.to_string();
        if self.full {
            hex
        } else {
            hex[..8].to_owned()
        }
    }

    fn local_time(&self, time: SystemTime) -> String {
        match Timestamp::try_from(time) {
            Ok(ts) => ts
                .to_zoned(self.tz.clone())
                .strftime("%H:%M:%S%.3f")
                .to_string(),
            Err(_) => "??:??:??.???".to_owned(),
        }
    }
}

/// `2024-06-19T15:22:45.123456Z`: UTC, always six decimals.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    match Timestamp::try_from(time) {
        Ok(ts) => ts.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        Err(_) => "1970-01-01T00:00:00.000000Z".to_owned(),
    }
}

/// `$COLUMNS` when set to a number, else 120.
fn terminal_width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<usize>().ok())
        .filter(|&c| c > 0)
        .unwrap_or(120)
}

/// At most `max` characters, the last one `…` when cut.
fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Keys as they are, unless they hold spaces, quotes, `=` or control
/// characters: then JSON-quoted, so one line stays one line.
fn quote_if_needed(key: &str) -> String {
    if key.is_empty()
        || key
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '=')
    {
        serde_json::Value::String(key.to_owned()).to_string()
    } else {
        key.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use bytes::Bytes;
    use hydratecache_core::{GapReason, Ttl};
    use serde_json::json;

    use super::*;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    fn update(payload: &[u8]) -> Envelope {
        Envelope {
            kind: Kind::Update,
            key: "user:42".into(),
            payload: Bytes::copy_from_slice(payload),
            ttl: Some(Ttl {
                start: at(1_700_000_000_000),
                duration: Duration::from_secs(30),
            }),
            version: Some(7),
            publisher: PublisherId(0x0102030405060708090a0b0c0d0e0f10),
            sequence: 3,
            published_at: at(1_700_000_000_000),
        }
    }

    fn line(body: Body) -> Line {
        Line {
            time: at(1_700_000_001_500),
            topic: "users".into(),
            body,
        }
    }

    fn cbor(v: serde_json::Value) -> Vec<u8> {
        crate::value::json_to_cbor(&v).expect("cbor")
    }

    #[test]
    fn text_lines() {
        let p = Printer::for_test(false, false, false, 120);
        let msg = line(Body::Message(Box::new(update(&cbor(
            json!({"name": "Ada"}),
        )))));
        assert_eq!(
            p.format(&msg),
            r#"22:13:21.500 update    key=user:42 publisher=01020304 seq=3 version=7 ttl=28.5s value={"name":"Ada"}"#
        );
        let mut del = update(&[]);
        del.kind = Kind::Delete;
        del.ttl = None;
        del.key = "a key".into();
        assert_eq!(
            p.format(&line(Body::Message(Box::new(del)))),
            r#"22:13:21.500 delete    key="a key" publisher=01020304 seq=3 version=7"#
        );
        let gap = line(Body::Gap(Gap {
            reason: GapReason::Lagged,
            missed: Some(12),
        }));
        assert_eq!(
            p.format(&gap),
            "22:13:21.500 gap       reason=lagged missed=12 (messages may have been missed here)"
        );
        let err = line(Body::Error("malformed\nmessage".into()));
        assert_eq!(p.format(&err), "22:13:21.500 error     malformed message");
    }

    #[test]
    fn long_values_are_cut_to_the_width_unless_full() {
        let big = json!("x".repeat(500));
        let msg = line(Body::Message(Box::new(update(&cbor(big)))));
        let cut = Printer::for_test(false, false, false, 120).format(&msg);
        assert_eq!(cut.chars().count(), 120, "{cut}");
        assert!(cut.ends_with('…'));
        let full = Printer::for_test(false, false, true, 100).format(&msg);
        assert!(full.len() > 500 && full.contains("publisher=0102030405060708090a0b0c0d0e0f10"));
    }

    #[test]
    fn raw_and_non_cbor_values_are_hex() {
        let msg = line(Body::Message(Box::new(update(b"hi"))));
        assert!(Printer::for_test(false, false, false, 120)
            .format(&msg)
            .ends_with("value=hex:6869"));
        let msg = line(Body::Message(Box::new(update(&cbor(json!(1))))));
        assert!(Printer::for_test(false, true, false, 120)
            .format(&msg)
            .ends_with("value=hex:01"));
    }

    #[test]
    fn json_lines_have_every_field() {
        let p = Printer::for_test(true, false, false, 120);
        let msg = line(Body::Message(Box::new(update(&cbor(
            json!({"name": "Ada"}),
        )))));
        let v: serde_json::Value = serde_json::from_str(&p.format(&msg)).expect("json");
        assert_eq!(
            v,
            json!({
                "time": "2023-11-14T22:13:21.500000Z",
                "kind": "update",
                "topic": "users",
                "key": "user:42",
                "publisher": "0102030405060708090a0b0c0d0e0f10",
                "sequence": 3,
                "version": 7,
                "ttl_remaining_ms": 28_500,
                "published_at": "2023-11-14T22:13:20.000000Z",
                "value": {"name": "Ada"},
                "value_encoding": "cbor",
                "reason": null,
                "missed": null,
                "error": null,
            })
        );
        let gap = line(Body::Gap(Gap::new(GapReason::Reconnected)));
        let v: serde_json::Value = serde_json::from_str(&p.format(&gap)).expect("json");
        assert_eq!(v["kind"], "gap");
        assert_eq!(v["reason"], "reconnected");
        assert_eq!(v["missed"], serde_json::Value::Null);
        assert_eq!(v.as_object().map(|o| o.len()), Some(14));
        let err = line(Body::Error("bad".into()));
        let v: serde_json::Value = serde_json::from_str(&p.format(&err)).expect("json");
        assert_eq!(
            (v["kind"].as_str(), v["error"].as_str()),
            (Some("error"), Some("bad"))
        );
        let msg = line(Body::Message(Box::new(update(b"hi"))));
        let v: serde_json::Value = serde_json::from_str(&p.format(&msg)).expect("json");
        assert_eq!(
            (v["value"].as_str(), v["value_encoding"].as_str()),
            (Some("6869"), Some("hex"))
        );
    }
}
