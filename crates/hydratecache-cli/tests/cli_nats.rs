//! `hydratecache` against a private `nats-server`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use hydratecache_conformance::unique_topic;
use hydratecache_testkit::nats::NatsServer;

fn server() -> NatsServer {
    NatsServer::start().unwrap_or_else(|e| panic!("{e:#}"))
}

/// Publishes `payload` on `subject` the way any NATS client does, over the
/// plain text protocol, and waits for the server's PONG (so it was handled).
fn raw_publish(port: u16, subject: &str, payload: &[u8]) {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to nats");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut line = String::new();
    reader.read_line(&mut line).expect("INFO");
    assert!(line.starts_with("INFO "), "{line}");
    let mut w = stream;
    write!(
        w,
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"name\":\"raw\"}}\r\n"
    )
    .expect("write");
    write!(w, "PUB {subject} {}\r\n", payload.len()).expect("write");
    w.write_all(payload).expect("write");
    write!(w, "\r\nPING\r\n").expect("write");
    w.flush().expect("flush");
    loop {
        line.clear();
        reader.read_line(&mut line).expect("PONG");
        assert!(!line.starts_with("-ERR"), "{line}");
        if line.starts_with("PONG") {
            break;
        }
    }
}

#[test]
fn tail_shows_what_publish_sends() {
    let server = server();
    common::tail_shows_what_publish_sends(&server.url(), &unique_topic("text"), &[]);
}

#[test]
fn garbage_from_a_raw_client_is_an_error_line_and_tail_goes_on() {
    let server = server();
    let topic = unique_topic("garbage");
    common::garbage_is_an_error_line(&server.url(), &topic, &[], || {
        raw_publish(server.port(), &topic, b"garbage\x00\xff");
    });
}

#[test]
fn server_restart_is_a_gap_line_then_delivery_again() {
    let mut server = server();
    let url = server.url();
    let topic = unique_topic("restart");
    common::restart_shows_a_gap(&url, &topic, &[], &[], Duration::from_secs(1), || {
        server.kill9();
        server.start_again().expect("restart nats");
    });
}

#[test]
fn sigint_ends_tail_with_exit_0() {
    let server = server();
    common::sigint_ends_tail(&server.url(), &unique_topic("sigint"), &[]);
}

#[test]
fn refused_connection_is_exit_1_with_one_line() {
    let port = hydratecache_testkit::free_port().expect("port");
    common::refused_is_exit_1_and_one_line(&format!("nats://127.0.0.1:{port}"));
}

#[test]
fn check_reports_server_limits_and_round_trip() {
    let server = server();
    let out = common::check_works(&server.url(), "nats", "NATS ");
    assert!(out.contains("  max_payload"), "{out}");
}

#[test]
fn invalid_subject_is_the_adapters_error() {
    let server = server();
    let out = common::run(&["publish", &server.url(), "has space", "k", "1"], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("invalid topic \"has space\""), "{stderr}");
}
