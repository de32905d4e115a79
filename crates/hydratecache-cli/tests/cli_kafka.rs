//! `hydratecache` against a private `tansu` broker (Kafka protocol).

mod common;

use std::process::Command;
use std::time::Duration;

use common::{publish, Tail};
use hydratecache_conformance::unique_topic;
use hydratecache_testkit::kafka::TansuServer;

fn server() -> TansuServer {
    TansuServer::start().unwrap_or_else(|e| panic!("{e:#}"))
}

/// Tail and publish create missing topics on Kafka only when asked.
const CREATE: &[&str] = &["--create-topic"];

/// Produces one record without hydratecache's headers with Python's
/// `confluent-kafka` (librdkafka), as a foreign producer would.
fn foreign_record(bootstrap: &str, topic: &str) {
    let script = "\
import sys
from confluent_kafka import Producer
p = Producer({'bootstrap.servers': sys.argv[1]})
p.produce(sys.argv[2], key=b'foreign', value=b'garbage\\x00\\xff')
left = p.flush(20)
sys.exit(1 if left else 0)
";
    let out = Command::new("python3")
        .args(["-c", script, bootstrap, topic])
        .output()
        .unwrap_or_else(|e| {
            panic!("run python3 (install python3 and `pip install confluent-kafka`): {e}")
        });
    assert!(
        out.status.success(),
        "the foreign producer failed (needs `pip install confluent-kafka`; cargo xtask itest kafka installs it): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn tail_shows_what_publish_sends() {
    let server = server();
    let url = server.url();
    let topic = unique_topic("text");
    server.create_topic(&topic, 1).expect("create topic");
    common::tail_shows_what_publish_sends(&url, &topic, &[]);
}

#[test]
fn garbage_from_a_foreign_producer_is_an_error_line_and_tail_goes_on() {
    let server = server();
    let url = server.url();
    let topic = unique_topic("garbage");
    server.create_topic(&topic, 1).expect("create topic");
    common::garbage_is_an_error_line(&url, &topic, &[], || {
        foreign_record(&server.bootstrap(), &topic);
    });
}

#[test]
fn broker_restart_is_a_gap_line_then_delivery_again() {
    let mut server = server();
    let url = server.url();
    let topic = unique_topic("restart");
    // tansu's memory storage forgets every topic and record on a restart;
    // publish --create-topic makes the topic again. One attempt every 15 s:
    // the subscriber must see the new log's high watermark below its
    // position to know that the log was reset.
    common::restart_shows_a_gap(
        &url,
        &topic,
        CREATE,
        CREATE,
        Duration::from_secs(15),
        || {
            server.kill9();
            server.start_again().expect("restart tansu");
        },
    );
}

#[test]
fn from_beginning_replays_what_is_retained() {
    let server = server();
    let url = server.url();
    let topic = unique_topic("replay");
    let p1 = publish(&url, &topic, "a", &["1", "--create-topic"], None);
    let p2 = publish(&url, &topic, "b", &["2"], None);
    let mut tail = Tail::start(&[
        &url,
        &topic,
        "--from-beginning",
        "--count",
        "2",
        "--timeout",
        "60s",
    ]);
    let first = tail.next_line("first retained message");
    let second = tail.next_line("second retained message");
    assert!(
        first.contains("key=a") && first.contains(&format!("publisher={}", &p1[..8])),
        "{first}"
    );
    assert!(
        second.contains("key=b") && second.contains(&format!("publisher={}", &p2[..8])),
        "{second}"
    );
    assert_eq!(tail.wait(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn missing_topic_says_how_to_create_it() {
    let server = server();
    let out = common::run(
        &["publish", &server.url(), &unique_topic("missing"), "k", "1"],
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--create-topic"), "{stderr}");
}

#[test]
fn sigint_ends_tail_with_exit_0() {
    let server = server();
    common::sigint_ends_tail(&server.url(), &unique_topic("sigint"), CREATE);
}

#[test]
fn refused_connection_is_exit_1_with_one_line() {
    let port = hydratecache_testkit::free_port().expect("port");
    common::refused_is_exit_1_and_one_line(&format!("kafka://127.0.0.1:{port}"));
}

#[test]
fn check_reports_limits_and_round_trip() {
    let server = server();
    let out = common::check_works(&server.url(), "kafka", "not reported by kafka");
    assert!(out.contains("replay       yes"), "{out}");
    assert!(
        out.contains("note         the Kafka topic hydratecache-check-"),
        "{out}"
    );
}
