//! [`KafkaConfig`]: where and how to reach the brokers.

use hydratecache_core::Error;

use crate::BACKEND;

/// Where and how to reach the brokers: their addresses, the client id and
/// TLS, what rskafka's client is built from. Give it to
/// [`KafkaBuilder::connect_with`](crate::KafkaBuilder::connect_with), or let
/// [`KafkaBuilder::connect`](crate::KafkaBuilder::connect) read it from a URL.
///
/// ```
/// use hydratecache_kafka::KafkaConfig;
///
/// let config = KafkaConfig::from_url("kafka://broker-1:9092,broker-2:9092")?
///     .client_id("billing");
/// assert_eq!(config.brokers(), ["broker-1:9092", "broker-2:9092"]);
/// # Ok::<(), hydratecache_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    pub(crate) brokers: Vec<String>,
    pub(crate) client_id: String,
    /// The URL asked for TLS (`kafkas://`, `ssl://`, `tls://`).
    pub(crate) tls_required: bool,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<TlsConfig>,
}

/// The rustls configuration, shown as a placeholder by `Debug`: a settings
/// dump in a log has no business listing certificates or key handles.
#[cfg(feature = "tls")]
#[derive(Clone)]
pub(crate) struct TlsConfig(pub(crate) std::sync::Arc<rustls::ClientConfig>);

#[cfg(feature = "tls")]
impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("rustls::ClientConfig { .. }")
    }
}

impl KafkaConfig {
    /// Settings for the bootstrap brokers `brokers` (`host:port` each).
    pub fn new<I, S>(brokers: I) -> KafkaConfig
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        KafkaConfig {
            brokers: brokers.into_iter().map(Into::into).collect(),
            client_id: "hydratecache".into(),
            tls_required: false,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Settings from `kafka://host:port[,host:port...]` (the scheme is
    /// optional), or `kafkas://` (also `ssl://`, `tls://`) for TLS.
    ///
    /// TLS needs the crate feature `tls` and a rustls configuration given
    /// with `KafkaConfig::tls` before connecting; without the feature a TLS
    /// URL is refused, naming the feature. SASL is not supported. A URL that
    /// asks for something unsupported is refused rather than connected in
    /// plaintext: a SASL scheme (`sasl_ssl://`, `sasl_plaintext://`),
    /// another scheme, credentials (`user:password@`), query parameters
    /// (`?security.protocol=SSL`) or a path.
    pub fn from_url(url: &str) -> Result<KafkaConfig, Error> {
        let refuse = |reason: String| Err(Error::backend(BACKEND, "parse the broker URL", reason));
        let (rest, tls) = match url.split_once("://") {
            None => (url, false),
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("kafka") => (rest, false),
            Some((scheme, rest))
                if ["kafkas", "ssl", "tls"]
                    .iter()
                    .any(|s| scheme.eq_ignore_ascii_case(s)) =>
            {
                if cfg!(not(feature = "tls")) {
                    return refuse(format!(
                        "{scheme}:// asks for TLS, which is not compiled in: enable the \
                         feature `tls` of hydratecache-kafka (and give the rustls \
                         configuration with KafkaConfig::tls)"
                    ));
                }
                (rest, true)
            }
            Some((scheme, _)) => {
                let asks = if scheme.to_ascii_lowercase().contains("sasl") {
                    "SASL authentication, which this transport does not support"
                } else {
                    "a protocol this transport does not support"
                };
                return refuse(format!(
                    "{scheme}:// asks for {asks} (kafka://host:port, or kafkas://host:port \
                     for TLS; see the crate documentation)"
                ));
            }
        };
        if rest.contains('?') || rest.contains('#') {
            return refuse(
                "query parameters (such as security.protocol, sasl.* or ssl.*) are not \
                 supported: the connection is plaintext without authentication; expected \
                 kafka://host:port[,host:port...]"
                    .to_owned(),
            );
        }
        if rest.contains('@') {
            // Not echoed: the part before '@' holds a password.
            return refuse(
                "credentials in the URL: SASL authentication is not supported; expected \
                 kafka://host:port[,host:port...]"
                    .to_owned(),
            );
        }
        let rest = rest.trim_end_matches('/');
        let brokers: Vec<String> = rest
            .split(',')
            .map(str::trim)
            .filter(|b| !b.is_empty())
            .map(str::to_owned)
            .collect();
        if brokers.is_empty() || rest.contains('/') {
            return refuse(format!(
                "{url:?}: expected kafka://host:port[,host:port...]"
            ));
        }
        if let Some(bad) = brokers.iter().find(|b| !b.contains(':')) {
            return refuse(format!("{url:?}: broker {bad:?} has no port"));
        }
        let mut config = KafkaConfig::new(brokers);
        config.tls_required = tls;
        Ok(config)
    }

    /// Connects to the brokers over TLS with this rustls configuration
    /// (trusted roots, client certificate if any). Each broker's certificate
    /// is checked against its host name as given, or as the cluster's
    /// metadata advertises it.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls(mut self, config: std::sync::Arc<rustls::ClientConfig>) -> KafkaConfig {
        self.tls = Some(TlsConfig(config));
        self
    }

    /// The bootstrap brokers.
    pub fn brokers(&self) -> &[String] {
        &self.brokers
    }

    /// The client id the broker sees (default `hydratecache`).
    pub fn client_id(mut self, client_id: impl Into<String>) -> KafkaConfig {
        self.client_id = client_id.into();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let c = KafkaConfig::from_url("kafka://127.0.0.1:9092").expect("parses");
        assert_eq!(c.brokers(), ["127.0.0.1:9092"]);
        let c = KafkaConfig::from_url("a:1, b:2").expect("parses");
        assert_eq!(c.brokers(), ["a:1", "b:2"]);
        assert!(KafkaConfig::from_url("kafka://").is_err());
        assert!(KafkaConfig::from_url("kafka://host").is_err());
        assert!(KafkaConfig::from_url("kafka://h:1/x").is_err());
        let c = KafkaConfig::from_url("KAFKA://h:1").expect("parses");
        assert_eq!(c.brokers(), ["h:1"]);
    }

    fn refusal(url: &str) -> String {
        match KafkaConfig::from_url(url) {
            Ok(c) => panic!("{url} accepted as plaintext brokers {:?}", c.brokers()),
            Err(e) => {
                let mut text = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    text.push_str(&format!(": {s}"));
                    source = s.source();
                }
                text
            }
        }
    }

    /// Item 17 of issue 18: a URL that asks for TLS (without the `tls`
    /// feature) or SASL is refused with an error saying so, never taken as
    /// plaintext brokers.
    #[test]
    fn urls_asking_for_tls_or_sasl_are_refused() {
        for url in [
            "kafkas://h:9093",
            "ssl://h:9093",
            "SSL://h:9093",
            "tls://h:9093",
        ] {
            if cfg!(feature = "tls") {
                let c = KafkaConfig::from_url(url).expect("a TLS URL with the tls feature");
                assert!(c.tls_required && c.brokers() == ["h:9093"], "{url}");
            } else {
                let e = refusal(url);
                assert!(e.contains("feature `tls`"), "{url}: {e}");
            }
        }
        for url in [
            "sasl_ssl://h:9093",
            "sasl_plaintext://h:9092",
            "SASL_SSL://h:1",
        ] {
            let e = refusal(url);
            assert!(
                e.contains("SASL") && e.contains("not support"),
                "{url}: {e}"
            );
        }
        for url in [
            "kafka://h:9092?security.protocol=SSL",
            "h:9092?sasl.mechanism=PLAIN",
            "kafka://a:1,b:2?tls=true",
        ] {
            let e = refusal(url);
            assert!(e.contains("query parameters"), "{url}: {e}");
        }
        let e = refusal("kafka://alice:s3cret@h:9092");
        assert!(e.contains("SASL") && !e.contains("s3cret"), "{e}");
        let e = refusal("alice:s3cret@h:9092");
        assert!(e.contains("credentials") && !e.contains("s3cret"), "{e}");
        let e = refusal("https://h:9092");
        assert!(e.contains("not support"), "{e}");
    }
}
