//! How topics map to NATS subjects, and which topics are valid.

use hydratecache_core::{Error, Result};

use crate::BACKEND;

/// Longest subject accepted, in bytes: well under the server's default
/// `max_control_line` (4 KiB), which a `PUB` line must fit in (the server
/// closes the connection of a client that sends a longer line).
pub const MAX_SUBJECT_LEN: usize = 1024;

/// Checks that `topic` is a valid hydratecache topic on NATS: not empty, no
/// whitespace or control characters, no wildcard characters (`*`, `>`), no
/// empty token (no leading, trailing or doubled `.`), at most
/// [`MAX_SUBJECT_LEN`] bytes.
///
/// Dots are allowed and keep their NATS meaning (token separators), so
/// `orders.eu` is the subject `orders.eu`.
///
/// ```
/// use hydratecache_nats::validate_topic;
/// assert!(validate_topic("users.eu").is_ok());
/// assert!(validate_topic("users.*").is_err());
/// assert!(validate_topic("users..eu").is_err());
/// assert!(validate_topic("has space").is_err());
/// ```
pub fn validate_topic(topic: &str) -> Result<()> {
    check_tokens(topic).map_err(|reason| Error::invalid_topic(BACKEND, topic, reason))
}

/// Checks the syntax shared by topics and the subject prefix.
pub(crate) fn check_tokens(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("it is empty; a NATS subject needs at least one token".into());
    }
    if name.len() > MAX_SUBJECT_LEN {
        return Err(format!(
            "it is {} bytes long, over the limit of {MAX_SUBJECT_LEN} bytes",
            name.len()
        ));
    }
    if let Some((i, c)) = name
        .char_indices()
        .find(|(_, c)| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "it contains {c:?} at byte {i}; NATS subjects cannot contain whitespace or control characters"
        ));
    }
    if let Some((i, c)) = name.char_indices().find(|(_, c)| matches!(c, '*' | '>')) {
        return Err(format!(
            "it contains the wildcard character {c:?} at byte {i}; topics name exactly one subject"
        ));
    }
    if name.split('.').any(str::is_empty) {
        return Err(
            "it has an empty token (a leading, trailing or doubled `.`); NATS subjects cannot"
                .into(),
        );
    }
    Ok(())
}

/// The topic → subject mapping: `topic` itself, or `<prefix>.<topic>`.
pub(crate) fn subject_for(prefix: Option<&str>, topic: &str) -> Result<String> {
    validate_topic(topic)?;
    let subject = match prefix {
        Some(prefix) => format!("{prefix}.{topic}"),
        None => return Ok(topic.to_owned()),
    };
    if subject.len() > MAX_SUBJECT_LEN {
        return Err(Error::invalid_topic(
            BACKEND,
            topic,
            format!(
                "with the prefix the subject is {} bytes long, over the limit of {MAX_SUBJECT_LEN} bytes",
                subject.len()
            ),
        ));
    }
    Ok(subject)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(topic: &str) -> String {
        match validate_topic(topic) {
            Err(Error::InvalidTopic {
                backend,
                topic: t,
                reason,
            }) => {
                assert_eq!((backend, t.as_str()), ("nats", topic));
                reason
            }
            other => panic!("{topic:?} gave {other:?}"),
        }
    }

    #[test]
    fn valid_topics() {
        for t in [
            "a",
            "users",
            "users.eu",
            "a.b.c.d",
            "hc_case_1_ab",
            "ключ.キー",
            "dash-and_under:colon",
            "$weird",
        ] {
            assert!(validate_topic(t).is_ok(), "{t:?}");
        }
        assert!(validate_topic(&"x".repeat(MAX_SUBJECT_LEN)).is_ok());
    }

    #[test]
    fn invalid_topics_say_why() {
        assert!(reason("").contains("empty"));
        assert!(reason("a b").contains("whitespace"));
        assert!(reason("a\tb").contains("whitespace"));
        assert!(reason("a\r\nPUB x 1").contains("whitespace"));
        assert!(reason("a\u{0}b").contains("control"));
        assert!(reason("a\u{a0}b").contains("whitespace"));
        assert!(reason("users.*").contains("wildcard"));
        assert!(reason("users.>").contains("wildcard"));
        assert!(reason("a*b").contains("wildcard"));
        assert!(reason(">").contains("wildcard"));
        assert!(reason(".a").contains("empty token"));
        assert!(reason("a.").contains("empty token"));
        assert!(reason("a..b").contains("empty token"));
        assert!(reason(".").contains("empty token"));
        assert!(reason(&"x".repeat(MAX_SUBJECT_LEN + 1)).contains("1025 bytes"));
    }

    #[test]
    fn mapping() {
        assert_eq!(subject_for(None, "users.eu").unwrap(), "users.eu");
        assert_eq!(subject_for(Some("hc"), "users").unwrap(), "hc.users");
        assert!(subject_for(Some("hc"), "a..b").is_err());
        let long = "x".repeat(MAX_SUBJECT_LEN - 2);
        assert!(subject_for(None, &long).is_ok());
        assert!(matches!(
            subject_for(Some("hc"), &long),
            Err(Error::InvalidTopic { .. })
        ));
    }
}
