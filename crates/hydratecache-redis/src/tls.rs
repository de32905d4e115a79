//! Whether a URL asks for TLS, and refusing it when no TLS is compiled in:
//! fred alone would then connect in plaintext and only log a warning.

use hydratecache_core::{Error, Result};

use crate::BACKEND;

/// Whether this build can speak TLS.
pub(crate) const COMPILED: bool = cfg!(any(
    feature = "enable-rustls-ring",
    feature = "enable-native-tls"
));

/// Whether `url`'s scheme asks for TLS: `rediss` or `valkeys`, with or
/// without fred's `-cluster` / `-sentinel` suffix (as fred reads them).
pub(crate) fn wants_tls(url: &str) -> bool {
    let scheme = url
        .split_once("://")
        .map(|(scheme, _)| scheme.trim().to_ascii_lowercase())
        .unwrap_or_default();
    scheme.starts_with("rediss") || scheme.starts_with("valkeys")
}

/// Refuses a TLS URL when this build has no TLS.
pub(crate) fn check_url(url: &str) -> Result<()> {
    if wants_tls(url) && !COMPILED {
        return Err(Error::Unsupported {
            backend: BACKEND,
            what: "TLS in this build (the URL asks for it with rediss:// or valkeys://): \
                   enable the cargo feature `enable-rustls-ring` (or `enable-native-tls`) of \
                   hydratecache-redis; nothing was connected",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_schemes_are_recognised() {
        for url in [
            "rediss://h:6380",
            "REDISS://h",
            "rediss-cluster://h:1?node=b:2",
            "rediss-sentinel://h/0?sentinelServiceName=s",
            "valkeys://h",
            " rediss://h",
        ] {
            assert!(wants_tls(url), "{url}");
        }
        for url in [
            "redis://h:6379",
            "redis-cluster://h",
            "redis-sentinel://h",
            "valkey://h",
            "redis+unix:///tmp/s",
            "h:6379",
            "",
        ] {
            assert!(!wants_tls(url), "{url}");
        }
    }

    /// With TLS compiled in, a TLS URL passes the check (the TLS tests in
    /// tests/tls.rs then connect through it).
    #[cfg(any(feature = "enable-rustls-ring", feature = "enable-native-tls"))]
    #[test]
    fn a_tls_url_passes_with_a_tls_feature() {
        const { assert!(COMPILED) };
        assert!(check_url("rediss://127.0.0.1:6380").is_ok());
    }

    /// Without a TLS feature, `rediss://` to a plaintext server must fail
    /// before connecting, naming the features; fred alone would connect in
    /// plaintext and only log a warning.
    #[cfg(not(any(feature = "enable-rustls-ring", feature = "enable-native-tls")))]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tls_url_is_refused_without_a_tls_feature() {
        use crate::RedisTransport;

        let redis = match hydratecache_testkit::redis::shared_or_private() {
            Ok(r) => r,
            Err(e) => panic!("no Redis: {e:#}"),
        };
        let plain = redis.url();
        let Some(rest) = plain.strip_prefix("redis://") else {
            panic!("unexpected URL {plain}");
        };
        for scheme in ["rediss", "REDISS", "valkeys"] {
            let url = format!("{scheme}://{rest}");
            match RedisTransport::connect(&url).await {
                Err(e @ Error::Unsupported { .. }) => {
                    let text = e.to_string();
                    println!("{scheme}: {text}");
                    assert!(
                        text.contains("enable-rustls-ring") && text.contains("enable-native-tls"),
                        "the error does not name the features: {text}"
                    );
                }
                Err(other) => panic!("{scheme}: unexpected error {other:?}"),
                Ok(_) => panic!("{scheme}:// connected without TLS"),
            }
        }
    }
}
