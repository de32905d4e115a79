//! What a connection URL's `sslmode` becomes, with or without TLS compiled in.

use hydratecache_core::{Error, Result};
use sqlx::postgres::PgConnectOptions;

use crate::publisher::redacted_address;
use crate::{BACKEND, TLS_COMPILED};

/// What [`PostgresBuilder::connect`](crate::PostgresBuilder::connect) does with the URL's `sslmode`:
///
/// - `require`, `verify-ca`, `verify-full`: used as they are when TLS is
///   compiled in ([`TLS_COMPILED`]); refused with [`Error::Unsupported`]
///   naming the features otherwise, before any connection is made.
/// - `prefer` (PostgreSQL's default when the URL says nothing) and `allow`:
///   with TLS compiled in, used as they are (TLS when the server offers it,
///   without any certificate check, else plaintext); without it, plaintext,
///   as sqlx would do silently, with a warning in the log. Either way a
///   connection that must be encrypted needs `require` or `verify-*`.
/// - `disable`: plaintext.
pub fn tls_policy(options: PgConnectOptions) -> Result<PgConnectOptions> {
    use sqlx::postgres::PgSslMode;
    match options.get_ssl_mode() {
        PgSslMode::Require | PgSslMode::VerifyCa | PgSslMode::VerifyFull if !TLS_COMPILED => {
            Err(Error::Unsupported {
                backend: BACKEND,
                what:
                    "TLS (sslmode=require, verify-ca or verify-full) in this build: \
                       enable the `tls-rustls` or `tls-native-tls` feature of hydratecache-postgres",
            })
        }
        PgSslMode::Prefer | PgSslMode::Allow if !TLS_COMPILED => {
            tracing::warn!(
                server = %redacted_address(&options),
                "sslmode prefer/allow without a TLS feature: connecting in plaintext \
                 (enable `tls-rustls` or `tls-native-tls`, and use sslmode=verify-full, for TLS)"
            );
            Ok(options.ssl_mode(PgSslMode::Disable))
        }
        _ => Ok(options),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn options(url: &str) -> PgConnectOptions {
        PgConnectOptions::from_str(url).expect("a valid URL")
    }

    /// Runs with `--no-default-features` in `cargo xtask itest postgres`:
    /// a URL that asks for TLS is refused, naming the feature to enable.
    #[cfg(not(any(feature = "tls-rustls", feature = "tls-native-tls")))]
    #[tokio::test]
    async fn without_tls_a_url_asking_for_tls_is_refused_naming_the_feature() {
        use crate::PostgresTransport;
        use std::time::Duration;
        for mode in ["require", "verify-ca", "verify-full"] {
            let url = format!("postgres://u:secret@127.0.0.1:1/db?sslmode={mode}");
            let connecting = PostgresTransport::builder()
                .connect_timeout(Duration::from_millis(100))
                .connect(&url);
            match tokio::time::timeout(Duration::from_secs(30), connecting).await {
                Ok(Err(e @ Error::Unsupported { .. })) => {
                    let text = e.to_string();
                    assert!(text.contains("`tls-rustls`"), "{text}");
                    assert!(text.contains("`tls-native-tls`"), "{text}");
                }
                Ok(Err(e)) => panic!("sslmode={mode} without TLS: {e}"),
                Ok(Ok(_)) => panic!("sslmode={mode} without TLS connected"),
                Err(_) => panic!("sslmode={mode} without TLS: no answer"),
            }
        }
        // prefer (also the default) becomes an explicit plaintext connection.
        for url in [
            "postgres://u@127.0.0.1:1/db?sslmode=prefer",
            "postgres://u@127.0.0.1:1/db",
        ] {
            let checked = tls_policy(options(url)).expect("prefer is accepted");
            assert!(matches!(
                checked.get_ssl_mode(),
                sqlx::postgres::PgSslMode::Disable
            ));
        }
    }

    #[cfg(any(feature = "tls-rustls", feature = "tls-native-tls"))]
    #[test]
    fn with_tls_every_sslmode_passes_through() {
        use sqlx::postgres::PgSslMode;
        for (mode, expected) in [
            ("prefer", PgSslMode::Prefer),
            ("require", PgSslMode::Require),
            ("verify-full", PgSslMode::VerifyFull),
            ("disable", PgSslMode::Disable),
        ] {
            let url = format!("postgres://u@127.0.0.1:1/db?sslmode={mode}");
            let checked = tls_policy(options(&url)).expect("accepted");
            assert_eq!(
                std::mem::discriminant(&checked.get_ssl_mode()),
                std::mem::discriminant(&expected)
            );
        }
    }
}
