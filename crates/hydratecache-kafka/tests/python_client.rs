//! Cross-client check with Python's `confluent-kafka` (librdkafka): it reads
//! the keys, values, tombstones and headers this crate writes, and a record
//! it writes with the same headers is read back here. librdkafka's
//! `murmur2` partitioner puts a key where this crate does.
//!
//! Optional: skipped, loudly, when Python lacks `confluent_kafka`
//! (`pip install confluent-kafka`).

mod common;

use std::process::Command;
use std::time::{Duration, SystemTime};

use hydratecache_conformance::{next_message, unique_topic};
use hydratecache_core::{Envelope, PublisherId, StartFrom, SubscribeOptions, Transport, Ttl};
use hydratecache_kafka::record::{partition_for, to_record};
use hydratecache_kafka::KafkaTransport;
use hydratecache_testkit::kafka;

const SCRIPT: &str = r#"
import json, struct, sys, time
from confluent_kafka import Consumer, Producer, TopicPartition

bootstrap, topic, partitions, expected = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
c = Consumer({"bootstrap.servers": bootstrap, "group.id": "hc-xclient",
              "enable.auto.commit": False, "api.version.request": True})
c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
seen = []
deadline = time.time() + 30
while len(seen) < expected and time.time() < deadline:
    m = c.poll(0.5)
    if m is None:
        continue
    if m.error():
        print("consumer error:", m.error(), file=sys.stderr)
        continue
    seen.append({
        "partition": m.partition(),
        "key": None if m.key() is None else m.key().hex(),
        "value": None if m.value() is None else m.value().hex(),
        "headers": {k: (None if v is None else v.hex()) for k, v in (m.headers() or [])},
    })
c.close()

# A record written by Python with hydratecache's headers.
delivered = []
p = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2"})
headers = [
    ("hc-v", bytes([1])),
    ("hc-kind", bytes([1])),
    ("hc-pub", (4242).to_bytes(16, "big")),
    ("hc-seq", struct.pack(">Q", 1)),
    ("hc-ts", struct.pack(">Q", 1_700_000_000_000_000)),
    ("hc-ver", struct.pack(">Q", 12)),
]
p.produce(topic, key=b"py-key", value=b"from python", headers=headers,
          on_delivery=lambda err, msg: delivered.append((err, msg.partition())))
p.flush(30)
if not delivered or delivered[0][0] is not None:
    print("delivery failed:", delivered, file=sys.stderr)
    sys.exit(1)
print(json.dumps({"seen": seen, "python_partition": delivered[0][1]}))
"#;

fn python_has_confluent_kafka() -> bool {
    Command::new("python3")
        .args(["-c", "import confluent_kafka"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluent_kafka_reads_what_we_write_and_writes_what_we_read() {
    if !python_has_confluent_kafka() {
        eprintln!(
            "\n!!!!!!!!\n!!! SKIPPED confluent_kafka_reads_what_we_write_and_writes_what_we_read: \
             python3 lacks confluent_kafka (pip install confluent-kafka)\n!!!!!!!!\n"
        );
        return;
    }
    let server = match kafka::shared_or_private() {
        Ok(s) => s,
        Err(e) => panic!("no Kafka broker: {e:#}"),
    };
    let admin = common::plain_client(&server.bootstrap())
        .await
        .expect("admin");
    let topic = unique_topic("python");
    common::create_topic(&admin, &topic, 3)
        .await
        .expect("topic");
    let t = KafkaTransport::connect(&server.url())
        .await
        .expect("connect");
    let at = SystemTime::UNIX_EPOCH + Duration::from_micros(1_700_000_000_000_007);
    let publisher = PublisherId(0xabcdef);
    let sent = [
        Envelope {
            ttl: Some(Ttl {
                start: at,
                duration: Duration::from_secs(60),
            }),
            version: Some(5),
            published_at: at,
            publisher,
            sequence: 1,
            ..Envelope::update("user:42", &b"\x00\x01binary\xff"[..])
        },
        Envelope {
            published_at: at,
            publisher,
            sequence: 2,
            ..Envelope::delete("user:42")
        },
        Envelope {
            published_at: at,
            publisher,
            sequence: 3,
            ..Envelope::update("ключ 🔑", &b"v"[..])
        },
    ];
    for e in &sent {
        t.publish(&topic, e).await.expect("publish");
    }
    let script = run_python(SCRIPT, &[&server.bootstrap(), &topic, "3", "3"]).await;
    let out: serde_json::Value = match serde_json::from_str(script.trim()) {
        Ok(v) => v,
        Err(e) => panic!("python output {script:?}: {e}"),
    };
    let seen = out["seen"].as_array().expect("seen");
    assert_eq!(seen.len(), 3, "python read {seen:?}");
    for e in &sent {
        let record = to_record(e);
        let key = hex(e.key.as_bytes());
        let got = seen
            .iter()
            .find(|m| {
                m["key"] == key.as_str()
                    && m["headers"]["hc-seq"] == hex(&e.sequence.to_be_bytes()).as_str()
            })
            .unwrap_or_else(|| panic!("python did not see {e:?}: {seen:?}"));
        assert_eq!(
            got["partition"].as_u64(),
            Some(partition_for(e.key.as_bytes(), 3) as u64)
        );
        match &record.value {
            Some(v) => assert_eq!(got["value"], hex(v).as_str()),
            None => assert!(
                got["value"].is_null(),
                "delete is not a tombstone for python"
            ),
        }
        let headers = got["headers"].as_object().expect("headers");
        assert_eq!(headers.len(), record.headers.len(), "{headers:?}");
        for (name, value) in &record.headers {
            assert_eq!(headers[name], hex(value).as_str(), "header {name}");
        }
    }
    // librdkafka's murmur2 partitioner agrees with ours.
    let py_partition = out["python_partition"].as_u64().expect("partition");
    assert_eq!(py_partition, partition_for(b"py-key", 3) as u64);
    // And the record Python wrote is a message here.
    let mut replay = t
        .subscribe(&topic, SubscribeOptions::starting(StartFrom::Earliest))
        .await
        .expect("subscribe");
    let mut from_python = None;
    for _ in 0..4 {
        let m = next_message(&mut replay, "a replayed message").await;
        if m.key == "py-key" {
            from_python = Some(m);
        }
    }
    let m = from_python.expect("python's message");
    assert_eq!(m.publisher, PublisherId(4242));
    assert_eq!((m.sequence, m.version), (1, Some(12)));
    assert_eq!(&m.payload[..], b"from python");
}

/// Runs the Python `script` with `args`, returning its stdout; panics with
/// its stderr when it fails. The script bounds its own waits (30 s).
async fn run_python(script: &str, args: &[&str]) -> String {
    let script = script.to_owned();
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .args(args)
            .output()
    })
    .await
    .expect("join")
    .expect("run python3");
    assert!(
        out.status.success(),
        "python failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
