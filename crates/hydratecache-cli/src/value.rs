//! Payloads: CBOR (the default codec) to JSON for display, JSON to CBOR for
//! publishing, hex for everything else.

use serde_cbor::Value as Cbor;
use serde_json::{Number, Value as Json};

/// A payload as shown: decoded from CBOR, or hex.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Shown {
    /// The payload was one complete CBOR item.
    Json(Json),
    /// Not CBOR (or `--raw`): the bytes in lowercase hex.
    Hex(String),
}

impl Shown {
    /// `"cbor"` or `"hex"`, the JSON output's `value_encoding`.
    pub(crate) fn encoding(&self) -> &'static str {
        match self {
            Shown::Json(_) => "cbor",
            Shown::Hex(_) => "hex",
        }
    }

    /// The JSON output's `value`.
    pub(crate) fn to_json(&self) -> Json {
        match self {
            Shown::Json(v) => v.clone(),
            Shown::Hex(h) => Json::String(h.clone()),
        }
    }

    /// The text output's value: compact JSON, or `hex:` and the digits.
    pub(crate) fn to_text(&self) -> String {
        match self {
            Shown::Json(v) => v.to_string(),
            Shown::Hex(h) => format!("hex:{h}"),
        }
    }
}

/// Decodes `payload` as CBOR unless `raw`; hex when it is not one complete
/// CBOR item (trailing bytes included).
pub(crate) fn show(payload: &[u8], raw: bool) -> Shown {
    if !raw {
        if let Ok(value) = serde_cbor::from_slice::<Cbor>(payload) {
            return Shown::Json(cbor_to_json(value));
        }
    }
    Shown::Hex(hex(payload))
}

/// Lowercase hex digits of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// A CBOR value as JSON: byte strings become hex strings, map keys that are
/// not strings become their JSON text, tags are dropped (their content
/// stays), integers beyond 64 bits and non-finite floats become strings.
pub(crate) fn cbor_to_json(value: Cbor) -> Json {
    match value {
        Cbor::Null => Json::Null,
        Cbor::Bool(b) => Json::Bool(b),
        Cbor::Integer(i) => {
            if let Ok(n) = i64::try_from(i) {
                Json::Number(n.into())
            } else if let Ok(n) = u64::try_from(i) {
                Json::Number(n.into())
            } else {
                Json::String(i.to_string())
            }
        }
        Cbor::Float(f) => {
            Number::from_f64(f).map_or_else(|| Json::String(f.to_string()), Json::Number)
        }
        Cbor::Bytes(b) => Json::String(hex(&b)),
        Cbor::Text(s) => Json::String(s),
        Cbor::Array(items) => Json::Array(items.into_iter().map(cbor_to_json).collect()),
        Cbor::Map(map) => Json::Object(
            map.into_iter()
                .map(|(k, v)| (key_text(k), cbor_to_json(v)))
                .collect(),
        ),
        Cbor::Tag(_, inner) => cbor_to_json(*inner),
        // serde_cbor's hidden variant: never produced by the decoder.
        _ => Json::Null,
    }
}

fn key_text(key: Cbor) -> String {
    match key {
        Cbor::Text(s) => s,
        other => match cbor_to_json(other) {
            Json::String(s) => s,
            json => json.to_string(),
        },
    }
}

/// JSON text to the CBOR bytes `CborCodec` would write for the same value.
pub(crate) fn json_to_cbor(json: &Json) -> Result<Vec<u8>, serde_cbor::Error> {
    serde_cbor::to_vec(json)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;

    #[test]
    fn cbor_round_trips_through_json() {
        let json = json!({"name": "Ada", "age": 36, "tags": ["a", "b"], "pi": 3.5, "x": null, "ok": true, "neg": -7});
        let bytes = json_to_cbor(&json).expect("encodes");
        assert_eq!(show(&bytes, false), Shown::Json(json));
    }

    #[test]
    fn what_the_default_codec_writes_is_decoded() {
        #[derive(serde::Serialize)]
        struct User {
            id: u32,
            name: String,
            blob: serde_bytes_like::Blob,
        }
        mod serde_bytes_like {
            pub(super) struct Blob(pub(super) Vec<u8>);
            impl serde::Serialize for Blob {
                fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                    s.serialize_bytes(&self.0)
                }
            }
        }
        let user = User {
            id: 7,
            name: "Ada".into(),
            blob: serde_bytes_like::Blob(vec![0xde, 0xad]),
        };
        let bytes = serde_cbor::to_vec(&user).expect("encodes");
        assert_eq!(
            show(&bytes, false),
            Shown::Json(json!({"id": 7, "name": "Ada", "blob": "dead"}))
        );
    }

    #[test]
    fn odd_cbor_becomes_plain_json() {
        let mut map = BTreeMap::new();
        map.insert(Cbor::Integer(1), Cbor::Text("one".into()));
        map.insert(Cbor::Bool(true), Cbor::Integer(u64::MAX.into()));
        map.insert(Cbor::Bytes(vec![1, 2]), Cbor::Integer(-(1i128 << 64)));
        map.insert(Cbor::Array(vec![Cbor::Null]), Cbor::Float(f64::NAN));
        map.insert(
            Cbor::Text("t".into()),
            Cbor::Tag(1, Box::new(Cbor::Integer(1_700_000_000))),
        );
        let bytes = serde_cbor::to_vec(&Cbor::Map(map)).expect("encodes");
        assert_eq!(
            show(&bytes, false),
            Shown::Json(json!({
                "1": "one",
                "true": u64::MAX,
                "0102": (-(1i128 << 64)).to_string(),
                "[null]": "NaN",
                "t": 1_700_000_000,
            }))
        );
    }

    #[test]
    fn not_cbor_is_hex() {
        // "hi": 0x68 starts an 8-byte text string; only one byte follows.
        assert_eq!(show(b"hi", false), Shown::Hex("6869".into()));
        // A complete item with trailing bytes is not one value either.
        assert_eq!(show(&[0x01, 0x02], false), Shown::Hex("0102".into()));
        assert_eq!(show(&[], false), Shown::Hex(String::new()));
        let garbage: Vec<u8> = (0..=255).collect();
        assert!(matches!(show(&garbage, false), Shown::Hex(h) if h.len() == 512));
    }

    #[test]
    fn raw_is_always_hex() {
        let bytes = json_to_cbor(&json!(1)).expect("encodes");
        assert_eq!(show(&bytes, true), Shown::Hex("01".into()));
        assert_eq!(show(&bytes, true).encoding(), "hex");
        assert_eq!(show(&bytes, true).to_text(), "hex:01");
        assert_eq!(show(&bytes, false).to_text(), "1");
    }
}
