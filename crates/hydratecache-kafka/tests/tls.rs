//! TLS to the brokers (feature `tls`). tansu 0.6 has no TLS listener, so the
//! test puts a TLS-terminating proxy in front of it (tansu advertises the
//! proxy's port, so every connection of the client goes through it), with a
//! certificate the test generates (`openssl`).

#![cfg(feature = "tls")]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hydratecache_conformance::{next_message, unique_topic};
use hydratecache_core::{Envelope, PublisherId, SubscribeOptions, Transport};
use hydratecache_kafka::{KafkaBuilder, KafkaConfig, KafkaTransport, TopicSettings};
use hydratecache_testkit::kafka::TansuServer;
use hydratecache_testkit::tls::TestCerts;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// A TLS-terminating proxy on `listener` forwarding to `127.0.0.1:target`;
/// counts the TLS handshakes it completed.
fn tls_proxy(listener: TcpListener, target: u16, certs: &TestCerts) -> Arc<AtomicUsize> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(certs.cert())
        .expect("server.pem")
        .collect::<Result<_, _>>()
        .expect("certificate");
    let key = PrivateKeyDer::from_pem_file(certs.key()).expect("server.key");
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let handshakes = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&handshakes);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let counted = Arc::clone(&counted);
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(socket).await else {
                    return;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                let Ok(mut broker) = TcpStream::connect(("127.0.0.1", target)).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
            });
        }
    });
    handshakes
}

fn client_tls(trusting: Option<&TestCerts>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(certs) = trusting {
        for cert in CertificateDer::pem_file_iter(certs.ca()).expect("ca.pem") {
            roots.add(cert.expect("CA certificate")).expect("add CA");
        }
    }
    Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

struct Setup {
    certs: TestCerts,
    proxy_port: u16,
    handshakes: Arc<AtomicUsize>,
    tansu: TansuServer,
}

async fn setup() -> Setup {
    let certs = match TestCerts::generate() {
        Ok(c) => c,
        Err(e) => panic!("{e:#}"),
    };
    let proxy_port = hydratecache_testkit::free_port().expect("port");
    let listener = TcpListener::bind(("127.0.0.1", proxy_port))
        .await
        .expect("bind the proxy");
    let tansu = match TansuServer::start_advertising(proxy_port) {
        Ok(s) => s,
        Err(e) => panic!("{e:#}"),
    };
    let handshakes = tls_proxy(listener, tansu.port(), &certs);
    Setup {
        certs,
        proxy_port,
        handshakes,
        tansu,
    }
}

fn config(url: &str) -> KafkaConfig {
    KafkaConfig::from_url(url).expect("url")
}

fn builder() -> KafkaBuilder {
    KafkaTransport::builder()
        .request_timeout(Duration::from_secs(3))
        .create_topics(TopicSettings::default())
}

/// A `kafkas://` URL with a rustls configuration trusting the broker's CA:
/// publish and subscribe work, every connection over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_subscribe_over_tls() {
    let s = setup().await;
    let url = format!("kafkas://127.0.0.1:{}", s.proxy_port);
    let t = builder()
        .connect_with(config(&url).tls(client_tls(Some(&s.certs))))
        .await
        .expect("connect over TLS");
    let topic = unique_topic("tls");
    t.ensure_topic(&topic).await.expect("topic");
    let mut sub = t
        .subscribe(&topic, SubscribeOptions::default())
        .await
        .expect("subscribe");
    let publisher = PublisherId::random();
    let envelope = Envelope {
        publisher,
        sequence: 1,
        ..Envelope::update("k", Bytes::from_static(b"over tls"))
    };
    t.publish(&topic, &envelope).await.expect("publish");
    let m = next_message(&mut sub, "the message").await;
    assert_eq!((m.publisher, m.payload), (publisher, envelope.payload));
    let handshakes = s.handshakes.load(Ordering::SeqCst);
    println!("{handshakes} TLS connections through the proxy");
    // Two clients (the transport's and its readers'), each with its
    // bootstrap connection and at least one partition connection.
    assert!(handshakes >= 3, "{handshakes} TLS handshakes");
}

/// TLS never falls back to plaintext: a `kafkas://` URL without a TLS
/// configuration, TLS to the broker's plaintext port, and a certificate the
/// client does not trust all fail to connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_failures_are_errors_not_plaintext() {
    let s = setup().await;
    let url = format!("kafkas://127.0.0.1:{}", s.proxy_port);
    let e = builder()
        .connect_with(config(&url))
        .await
        .expect_err("a kafkas:// URL connected without a TLS configuration");
    let e = format!("{:#}", anyhow::Error::from(e));
    println!("no TLS configuration: {e}");
    assert!(e.contains("TLS"), "{e}");

    let plain = format!("kafkas://127.0.0.1:{}", s.tansu.port());
    let e = builder()
        .connect_with(config(&plain).tls(client_tls(Some(&s.certs))))
        .await
        .expect_err("TLS to a plaintext listener connected");
    println!("TLS to a plaintext listener: {:#}", anyhow::Error::from(e));

    let e = builder()
        .connect_with(config(&url).tls(client_tls(None)))
        .await
        .expect_err("connected to a broker whose certificate is not trusted");
    println!("untrusted certificate: {:#}", anyhow::Error::from(e));
}
