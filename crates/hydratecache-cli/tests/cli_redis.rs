//! `hydratecache` against a private `redis-server`.

mod common;

use std::time::{Duration, Instant};

use common::{field, publish, run, run_ok, Tail};
use hydratecache_conformance::unique_topic;
use hydratecache_testkit::redis::{self, RedisServer};

fn server() -> RedisServer {
    RedisServer::start().unwrap_or_else(|e| panic!("{e:#}"))
}

#[test]
fn tail_shows_what_publish_sends() {
    let server = server();
    common::tail_shows_what_publish_sends(&server.url(), &unique_topic("text"), &[]);
}

#[test]
fn garbage_from_redis_cli_is_an_error_line_and_tail_goes_on() {
    let server = server();
    let url = server.url();
    let topic = unique_topic("garbage");
    common::garbage_is_an_error_line(&url, &topic, &[], || {
        redis::cli(&url, &["PUBLISH", &topic], Some(b"garbage\x00\xff"))
            .expect("redis-cli PUBLISH");
    });
}

#[test]
fn server_restart_is_a_gap_line_then_delivery_again() {
    let mut server = server();
    let url = server.url();
    let topic = unique_topic("restart");
    common::restart_shows_a_gap(&url, &topic, &[], &[], Duration::from_secs(1), || {
        server.kill9();
        server.start_again().expect("restart redis");
    });
}

#[test]
fn killed_connection_is_a_gap_line() {
    let server = server();
    let url = server.url();
    let topic = unique_topic("clientkill");
    common::restart_shows_a_gap(&url, &topic, &[], &[], Duration::from_secs(1), || {
        let killed = redis::kill_pubsub_clients(&url).expect("CLIENT KILL");
        assert!(killed >= 1, "no subscriber connection to kill");
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
    common::refused_is_exit_1_and_one_line(&format!("redis://127.0.0.1:{port}"));
}

#[test]
fn check_reports_server_limits_and_round_trip() {
    let server = server();
    let out = common::check_works(&server.url(), "redis", "Redis ");
    assert!(out.contains("max message  1048576 bytes"), "{out}");
    assert!(out.contains("replay       no"), "{out}");
}

#[test]
fn count_and_timeout_end_tail_for_scripts() {
    let server = server();
    let url = server.url();
    let topic = unique_topic("count");
    // --count: exit 0 after N messages.
    let mut tail = Tail::start(&[&url, &topic, "--count", "2", "--timeout", "60s"]);
    for i in 0..3 {
        publish(&url, &topic, &format!("k{i}"), &["1"], None);
    }
    assert!(tail.next_line("first").contains("key=k0"));
    assert!(tail.next_line("second").contains("key=k1"));
    assert_eq!(tail.wait(Duration::from_secs(10)).code(), Some(0));

    // --timeout alone: exit 0 when it passes.
    let started = Instant::now();
    let out = run(&["tail", &url, &topic, "--timeout", "500ms"], None);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(started.elapsed() < Duration::from_secs(10));

    // --timeout before --count is reached: exit 1 saying so.
    let out = run(
        &["tail", &url, &topic, "--timeout", "300ms", "--count", "1"],
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("timed out after 300ms: 0 of 1 messages"),
        "{stderr}"
    );
}

#[test]
fn full_and_raw_change_how_values_show() {
    let server = server();
    let url = server.url();
    let topic = unique_topic("full");
    let long = format!("\"{}\"", "y".repeat(400));
    let mut cut = Tail::start(&[&url, &topic]);
    let mut full = Tail::start(&[&url, &topic, "--full", "--raw"]);
    let publisher = publish(&url, &topic, "long", &[&long], None);
    let line = cut.next_line("truncated");
    // COLUMNS=200 in the tests.
    assert_eq!(line.chars().count(), 200, "{line}");
    assert!(line.ends_with('…'), "{line}");
    let line = full.next_line("full");
    assert_eq!(
        field(&line, "publisher"),
        publisher,
        "--full shows the whole id"
    );
    // CBOR text string of 400 bytes: 0x79 0x0190 then the bytes.
    assert_eq!(
        field(&line, "value"),
        format!("hex:790190{}", "79".repeat(400))
    );
}

#[test]
fn user_errors_are_exit_2_and_runtime_errors_exit_1() {
    let server = server();
    let url = server.url();
    for (args, needle) in [
        (
            vec!["publish", url.as_str(), "t", "k", "not json"],
            "VALUE is not JSON",
        ),
        (vec!["publish", url.as_str(), "t", "k"], "VALUE is missing"),
        (
            vec!["publish", url.as_str(), "t", "k", "1", "--delete"],
            "a delete carries no value",
        ),
        (vec!["tail", "ftp://x", "t"], "unsupported URL scheme"),
        (
            vec!["tail", url.as_str(), "t", "--timeout", "5"],
            "add a unit",
        ),
        (vec!["tail", url.as_str()], "required"),
        (vec!["frobnicate"], "unrecognized subcommand"),
    ] {
        let out = run(&args, None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // Over the adapter's 1 MiB limit: its own error, nothing sent, exit 1.
    let mut tail = Tail::start(&[&url, "big"]);
    let big = vec![0u8; 1024 * 1024];
    let out = run(&["publish", &url, "big", "k", "--raw"], Some(&big));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("over the redis limit of 1048576 bytes")
            && stderr.contains("nothing was sent"),
        "{stderr}"
    );
    tail.expect_no_line(Duration::from_millis(300));
    // --help has examples.
    for cmd in ["tail", "publish", "check"] {
        let help = run_ok(&[cmd, "--help"], None);
        assert!(help.contains("Examples:\n  hydratecache "), "{cmd}: {help}");
    }
}

#[test]
fn a_password_with_url_delimiters_never_reaches_the_output() {
    // Nothing listens on port 1: every command fails, and its message names
    // the URL with the password hidden, whatever the password holds.
    for secret in ["Zq1/Xw2", "Zq1?Xw2", "Zq1#Xw2", "Zq1@Xw2"] {
        let url = format!("redis://:{secret}@127.0.0.1:1/0");
        for args in [
            vec!["check", url.as_str(), "--connect-timeout", "2s"],
            vec![
                "publish",
                url.as_str(),
                "t",
                "k",
                "1",
                "--connect-timeout",
                "2s",
            ],
            vec!["tail", url.as_str(), "t", "--connect-timeout", "2s"],
        ] {
            let out = run(&args, None);
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert_ne!(out.status.code(), Some(0), "{args:?}: {text}");
            assert!(
                !text.contains("Zq1") && !text.contains("Xw2"),
                "{args:?} shows the password: {text}"
            );
        }
    }
}

#[test]
fn the_longest_durations_never_panic() {
    let server = server();
    let url = server.url();
    // Near the largest duration the parser takes (2^64 s): far past the
    // range of Instant, and doubling it overflows.
    let longest = "10000000000000000000s";
    let mut tail = Tail::start(&[
        &url,
        "longest",
        "--timeout",
        longest,
        "--connect-timeout",
        longest,
    ]);
    let out = run(
        &[
            "publish",
            &url,
            "longest",
            "k",
            "1",
            "--connect-timeout",
            longest,
        ],
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(tail.next_line("published").contains("key=k"));
    let out = run(
        &[
            "check",
            &url,
            "--connect-timeout",
            longest,
            "--round-trip-timeout",
            longest,
        ],
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}
