//! TLS for real: private nats-servers with a certificate the test generates
//! (`openssl`), checked from the server's side (`/connz` shows the TLS
//! version of each TLS connection).

mod common;

use std::time::{Duration, Instant};

use common::next_item;
use hydratecache_conformance::unique_topic;
use hydratecache_core::{Envelope, Event, GapReason, PublisherId, SubscribeOptions, Transport};
use hydratecache_nats::async_nats::ConnectOptions;
use hydratecache_nats::NatsTransport;
use hydratecache_testkit::free_port;
use hydratecache_testkit::nats::{monitor_get, NatsServer};
use hydratecache_testkit::tls::TestCerts;

fn certs() -> TestCerts {
    match TestCerts::generate() {
        Ok(c) => c,
        Err(e) => panic!("{e:#}"),
    }
}

fn server(config: &str) -> NatsServer {
    match NatsServer::start_with_config(Some(config)) {
        Ok(s) => s,
        Err(e) => panic!("cannot start nats-server: {e:#}"),
    }
}

fn tls_url(server: &NatsServer) -> String {
    format!("tls://127.0.0.1:{}", server.port())
}

fn trusting(certs: &TestCerts) -> ConnectOptions {
    ConnectOptions::new()
        .name("tls-test")
        .add_root_certificates(certs.ca())
}

/// The TLS version of each client connection named `tls-test` on `server`
/// (`None` for a plaintext one).
fn connections(server: &NatsServer) -> Vec<Option<String>> {
    let body = monitor_get(&server.monitor_url(), "/connz").expect("connz");
    let connz: serde_json::Value = serde_json::from_str(&body).expect("connz json");
    connz["connections"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter(|c| c["name"] == "tls-test")
                .map(|c| c["tls_version"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn message(sequence: u64) -> Envelope {
    Envelope {
        sequence,
        publisher: PublisherId(9),
        ..Envelope::update("k", &b"secret"[..])
    }
}

/// async-nats 0.51 with the `ring` feature has TLS built in: a `tls://` URL
/// to a server that requires TLS works, over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_url_works_over_tls() {
    let certs = certs();
    let server = server(&certs.nats_config(false));
    let t = NatsTransport::builder()
        .connect_with(tls_url(&server), trusting(&certs))
        .await
        .expect("connect over TLS");
    let topic = unique_topic("tls");
    let mut sub = t
        .subscribe(&topic, SubscribeOptions::default())
        .await
        .expect("subscribe");
    t.publish(&topic, &message(1)).await.expect("publish");
    match next_item(&mut sub, "the message").await {
        Ok(Event::Message(m)) => assert_eq!(m.sequence, 1),
        other => panic!("expected the message, got {other:?}"),
    }
    let seen = connections(&server);
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        seen.iter().all(Option::is_some),
        "a plaintext connection: {seen:?}"
    );
}

/// A `tls://` URL to a server without TLS fails to connect; it never goes on
/// in plaintext. So does a certificate the client does not trust.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_url_never_falls_back_to_plaintext() {
    let certs = certs();
    let plain = server("");
    let r = NatsTransport::builder()
        .connect_with(tls_url(&plain), trusting(&certs))
        .await;
    let e = r.expect_err("a tls:// URL connected to a server without TLS");
    println!("tls:// to a plaintext server: {e}");
    assert!(connections(&plain).is_empty());

    let tls = server(&certs.nats_config(false));
    let r = NatsTransport::builder()
        .connect_with(tls_url(&tls), ConnectOptions::new().name("tls-test"))
        .await;
    let e = r.expect_err("connected to a server whose certificate is not trusted");
    println!("untrusted certificate: {e}");
}

/// Item 17 of issue 18: a client that connected with a `tls://` URL and
/// fails over to a cluster member it discovered from the server's INFO
/// (listed as plain host:port) stays on TLS, even though that member also
/// accepts plaintext (`allow_non_tls`). async-nats alone reconnects in
/// plaintext there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_url_stays_tls_after_failover_to_a_discovered_server() {
    let certs = certs();
    let (route_a, route_b) = (free_port().expect("port"), free_port().expect("port"));
    let member = |own: u16, other: u16| {
        format!(
            "{}cluster {{\n  name: \"hc\"\n  listen: \"127.0.0.1:{own}\"\n  \
             routes: [\"nats-route://127.0.0.1:{other}\"]\n}}\n",
            certs.nats_config(true)
        )
    };
    let mut a = server(&member(route_a, route_b));
    let b = server(&member(route_b, route_a));
    // The client learns the other member from INFO when it connects: wait
    // until A knows B's client address.
    let deadline = Instant::now() + Duration::from_secs(15);
    let b_client = format!("127.0.0.1:{}", b.port());
    while !monitor_get(&a.monitor_url(), "/varz")
        .unwrap_or_default()
        .contains(&b_client)
    {
        assert!(Instant::now() < deadline, "the cluster did not form");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let t = NatsTransport::builder()
        .connect_with(tls_url(&a), trusting(&certs))
        .await
        .expect("connect over TLS");
    let topic = unique_topic("tlsfailover");
    let mut sub = t
        .subscribe(&topic, SubscribeOptions::default())
        .await
        .expect("subscribe");
    assert_eq!(connections(&a).len(), 1);
    assert!(connections(&a).iter().all(Option::is_some));

    a.kill9();
    // The subscription reports the loss at once, and the reconnection once
    // it is on B.
    match next_item(&mut sub, "the interruption").await {
        Ok(Event::Interrupted(_)) => {}
        other => panic!("expected the interruption, got {other:?}"),
    }
    match next_item(&mut sub, "the gap of the failover").await {
        Ok(Event::Gap(gap)) => assert_eq!(gap.reason, GapReason::Reconnected),
        other => panic!("expected a reconnection gap, got {other:?}"),
    }
    let seen = connections(&b);
    println!("on the discovered server: {seen:?}");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        seen.iter().all(Option::is_some),
        "the tls:// client reconnected in plaintext to the discovered server"
    );
    t.publish(&topic, &message(2)).await.expect("publish");
    match next_item(&mut sub, "a message after the failover").await {
        Ok(Event::Message(m)) => assert_eq!(m.sequence, 2),
        other => panic!("expected the message, got {other:?}"),
    }
}

/// A `wss://` URL (NATS over websockets, which this build of async-nats
/// does not have) is refused: async-nats would dial it as plain TCP and skip
/// TLS for it, so it connected in plaintext to a server without TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_urls_are_refused_not_connected_in_plaintext() {
    let plain = server("");
    for scheme in ["wss", "ws"] {
        let url = format!("{scheme}://127.0.0.1:{}", plain.port());
        let r = NatsTransport::builder()
            .connect_with(url.as_str(), ConnectOptions::new().name("tls-test"))
            .await;
        let seen = connections(&plain);
        let e = match r {
            Ok(_) => panic!("{url} connected, TLS versions on the server: {seen:?}"),
            Err(e) => std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(": "),
        };
        assert!(e.contains("websockets"), "{url}: {e}");
        assert!(seen.is_empty(), "{seen:?}");
    }
}
