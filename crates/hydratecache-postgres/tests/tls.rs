//! TLS for real: a private server with a certificate from a CA the test
//! generates, reached with `sslmode=verify-full`; the server's own view
//! (`pg_stat_ssl`) says whether each connection is encrypted.

#![cfg(any(feature = "tls-rustls", feature = "tls-native-tls"))]

mod common;

use std::path::PathBuf;

use common::*;
use hydratecache_conformance::{next_message, unique_topic};
use hydratecache_core::PublisherId;
use hydratecache_postgres::{sqlx, PostgresTransport};
use hydratecache_testkit::postgres::PostgresServer;
use hydratecache_testkit::tls::TestCerts;

fn tls_server(certs: &TestCerts) -> PostgresServer {
    let read = |path: PathBuf| std::fs::read(path).expect("read a generated file");
    let (crt, key) = (read(certs.cert()), read(certs.key()));
    match PostgresServer::start_with(
        &[
            ("ssl", "on"),
            ("ssl_cert_file", "server.crt"),
            ("ssl_key_file", "server.key"),
        ],
        &[("server.crt", &crt), ("server.key", &key)],
    ) {
        Ok(server) => server,
        Err(e) => panic!("start a PostgreSQL with TLS: {e:#}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_connects_over_tls_for_publishing_and_listening() {
    let certs = TestCerts::generate().expect("generate test certificates");
    let ca = certs.ca();
    let server = tls_server(&certs);
    let url = format!(
        "postgres://postgres@localhost:{}/test?sslmode=verify-full&sslrootcert={}",
        server.port(),
        ca.display()
    );
    let t = transport(&url).await;
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(t.pool())
        .await
        .expect("ask pg_stat_ssl");
    assert!(ssl, "the publishing connection is not encrypted");
    let topic = unique_topic("tls");
    let mut sub = subscribe(&t, &topic).await;
    let listener = listener_pid(&t).await;
    let (listener_ssl, version): (bool, Option<String>) =
        sqlx::query_as("SELECT ssl, version FROM pg_stat_ssl WHERE pid = $1")
            .bind(listener)
            .fetch_one(t.pool())
            .await
            .expect("ask pg_stat_ssl about the listener");
    assert!(listener_ssl, "the listener connection is not encrypted");
    publish(&t, &topic, &envelope(PublisherId::random(), 1, "secret")).await;
    assert_eq!(next_message(&mut sub, "over TLS").await.key, "secret");
    println!("verify-full: publishing and listener connections encrypted ({version:?})");

    // `prefer` with TLS compiled in uses it when the server offers it.
    let prefer = format!(
        "postgres://postgres@localhost:{}/test?sslmode=prefer",
        server.port()
    );
    let t = transport(&prefer).await;
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(t.pool())
        .await
        .expect("ask pg_stat_ssl");
    assert!(ssl, "sslmode=prefer with TLS compiled in did not use TLS");

    // A certificate from another CA is refused: verification is real.
    let other = TestCerts::generate().expect("generate test certificates");
    let wrong_ca = other.ca();
    let wrong = format!(
        "postgres://postgres@localhost:{}/test?sslmode=verify-full&sslrootcert={}",
        server.port(),
        wrong_ca.display()
    );
    match PostgresTransport::connect(&wrong).await {
        Err(e) => println!("verify-full with the wrong CA: {e}"),
        Ok(_) => panic!("connected with a CA that did not sign the server's certificate"),
    }
}
