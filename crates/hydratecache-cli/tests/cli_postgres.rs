//! `hydratecache` against a private PostgreSQL cluster.

mod common;

use std::time::Duration;

use hydratecache_conformance::unique_topic;
use hydratecache_testkit::postgres::{psql, PostgresServer};

fn server() -> PostgresServer {
    PostgresServer::start().unwrap_or_else(|e| panic!("{e:#}"))
}

#[test]
fn tail_shows_what_publish_sends() {
    let server = server();
    common::tail_shows_what_publish_sends(&server.url(), &unique_topic("text"), &[]);
}

#[test]
fn garbage_from_psql_is_an_error_line_and_tail_goes_on() {
    let server = server();
    let url = server.url();
    let topic = unique_topic("garbage");
    common::garbage_is_an_error_line(&url, &topic, &[], || {
        psql(
            &url,
            &format!("SELECT pg_notify('{topic}', 'garbage, not base64!')"),
        )
        .expect("psql NOTIFY");
    });
}

#[test]
fn server_restart_is_a_gap_line_then_delivery_again() {
    let mut server = server();
    let url = server.url();
    let topic = unique_topic("restart");
    common::restart_shows_a_gap(&url, &topic, &[], &[], Duration::from_secs(1), || {
        server.kill9();
        server.start_again().expect("restart postgres");
    });
}

#[test]
fn terminated_listener_connection_is_a_gap_line() {
    let server = server();
    let url = server.url();
    let topic = unique_topic("terminate");
    common::restart_shows_a_gap(&url, &topic, &[], &[], Duration::from_secs(1), || {
        let out = psql(
            &url,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = 'hydratecache-listener'",
        )
        .expect("pg_terminate_backend");
        assert_eq!(out.trim(), "1", "listener connections terminated");
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
    common::refused_is_exit_1_and_one_line(&format!("postgres://postgres@127.0.0.1:{port}/test"));
}

#[test]
fn check_reports_server_limits_and_round_trip() {
    let server = server();
    let out = common::check_works(&server.url(), "postgres", "PostgreSQL ");
    assert!(out.contains("max message  5997 bytes"), "{out}");
}

#[test]
fn oversize_values_and_bad_topics_are_the_adapters_errors() {
    let server = server();
    let url = server.url();
    let big = format!("\"{}\"", "z".repeat(6000));
    let out = common::run(&["publish", &url, "t", "k", "-"], Some(big.as_bytes()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("over the postgres limit") && stderr.contains("nothing was sent"),
        "{stderr}"
    );
    let long = "x".repeat(64);
    let out = common::run(&["publish", &url, &long, "k", "1"], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("invalid topic") && stderr.contains("63 bytes"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}
