//! Codec micro-benchmarks: envelope encode/decode and Channel value codecs,
//! for payloads of 128 B, 1 KiB and 64 KiB.
//!
//! Run: `cargo xtask bench codec` (or `cargo bench -p hydratecache-core --bench codec`).
//! Bytes on the wire are printed once per size as `wire-bytes <name> <n>`.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hydratecache_core::{CborCodec, Codec, Envelope, PublisherId, Ttl};
use serde::{Deserialize, Serialize};

const SIZES: &[(&str, usize)] = &[("128B", 128), ("1KiB", 1024), ("64KiB", 64 * 1024)];

fn envelope(payload: usize) -> Envelope {
    Envelope {
        ttl: Some(Ttl::starting_now(Duration::from_secs(30))),
        version: Some(42),
        publisher: PublisherId::random(),
        sequence: 123_456,
        ..Envelope::update("user:12345", vec![0xa5u8; payload])
    }
}

/// A small struct as a service would cache it; `blob` sets its size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Profile {
    id: u64,
    name: String,
    email: String,
    active: bool,
    score: f64,
    tags: Vec<String>,
    #[serde(with = "serde_bytes_compat")]
    blob: Vec<u8>,
}

/// Serialise `Vec<u8>` as a CBOR byte string in every codec compared.
mod serde_bytes_compat {
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        d.deserialize_byte_buf(V)
    }
}

fn profile(total: usize) -> Profile {
    let mut p = Profile {
        id: 12345,
        name: "Ada Lovelace".into(),
        email: "ada@example.com".into(),
        active: true,
        score: 98.6,
        tags: vec!["admin".into(), "beta".into()],
        blob: Vec::new(),
    };
    let base = CborCodec::new().encode(&p).map(|v| v.len()).unwrap_or(0);
    p.blob = vec![7u8; total.saturating_sub(base + 3)];
    p
}

fn bench_envelope(c: &mut Criterion) {
    let mut group = c.benchmark_group("envelope");
    for &(label, size) in SIZES {
        let env = envelope(size);
        let wire = Bytes::from(env.encode().expect("encode"));
        println!("wire-bytes envelope/{label} {}", wire.len());
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("encode", label), &env, |b, env| {
            b.iter(|| black_box(env.encode().expect("encode")))
        });
        group.bench_with_input(BenchmarkId::new("decode", label), &wire, |b, wire| {
            b.iter(|| black_box(Envelope::decode_bytes(wire).expect("decode")))
        });
        group.bench_with_input(BenchmarkId::new("encode+decode", label), &env, |b, env| {
            b.iter(|| {
                let wire = Bytes::from(env.encode().expect("encode"));
                black_box(Envelope::decode_bytes(&wire).expect("decode"))
            })
        });
    }
    group.finish();
}

fn bench_values(c: &mut Criterion) {
    let mut group = c.benchmark_group("value");
    for &(label, size) in SIZES {
        let value = profile(size);
        let named = CborCodec::new().encode(&value).expect("encode");
        let packed = CborCodec::packed().encode(&value).expect("encode");
        let mut cib = Vec::new();
        ciborium::into_writer(&value, &mut cib).expect("ciborium");
        println!("wire-bytes value-serde_cbor/{label} {}", named.len());
        println!(
            "wire-bytes value-serde_cbor-packed/{label} {}",
            packed.len()
        );
        println!("wire-bytes value-ciborium/{label} {}", cib.len());
        let back: Profile = ciborium::from_reader(&named[..]).expect("ciborium reads serde_cbor");
        assert_eq!(back, value);
        group.throughput(Throughput::Bytes(named.len() as u64));
        group.bench_with_input(
            BenchmarkId::new("serde_cbor-encode", label),
            &value,
            |b, v| b.iter(|| black_box(CborCodec::new().encode(v).expect("encode"))),
        );
        group.bench_with_input(
            BenchmarkId::new("serde_cbor-decode", label),
            &named,
            |b, bytes| {
                b.iter(|| {
                    black_box(Codec::<Profile>::decode(&CborCodec::new(), bytes).expect("decode"))
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("serde_cbor-packed-encode", label),
            &value,
            |b, v| b.iter(|| black_box(CborCodec::packed().encode(v).expect("encode"))),
        );
        group.bench_with_input(
            BenchmarkId::new("serde_cbor-packed-decode", label),
            &packed,
            |b, bytes| {
                b.iter(|| {
                    black_box(Codec::<Profile>::decode(&CborCodec::new(), bytes).expect("decode"))
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("ciborium-encode", label),
            &value,
            |b, v| {
                b.iter(|| {
                    let mut out = Vec::new();
                    ciborium::into_writer(v, &mut out).expect("encode");
                    black_box(out)
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("ciborium-decode", label),
            &cib,
            |b, bytes| {
                b.iter(|| {
                    black_box(ciborium::from_reader::<Profile, _>(&bytes[..]).expect("decode"))
                })
            },
        );
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! { name = benches; config = config(); targets = bench_envelope, bench_values }
criterion_main!(benches);
