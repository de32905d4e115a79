//! Publishing inside the caller's transaction: PostgreSQL sends the
//! notification at commit, and never on rollback.

use std::time::SystemTime;

use bytes::Bytes;
use hydratecache_core::adapter::{envelope_for, truncate_to_micros};
use hydratecache_core::{Codec, Envelope, Error, Kind, PublishOptions, PublisherId, Result};
use sqlx::Postgres;

use crate::transport::PostgresTransport;
use crate::wire::{self, validate_topic};
use crate::BACKEND;

impl PostgresTransport {
    /// Publishes `envelope` on `topic` through `executor`, typically the
    /// caller's open transaction (`&mut *tx`) or connection: PostgreSQL
    /// delivers the notification when, and only if, that transaction commits.
    ///
    /// The envelope is sent as it is: its publisher id and sequence are the
    /// caller's ([`publish_value_tx`](Self::publish_value_tx) fills them in).
    /// Oversize envelopes fail with [`Error::PayloadTooLarge`] before anything
    /// is sent.
    pub async fn publish_tx<'c, E>(executor: E, topic: &str, envelope: &Envelope) -> Result<()>
    where
        E: sqlx::Executor<'c, Database = Postgres>,
    {
        validate_topic(topic)?;
        let text = wire::encode(envelope)?;
        notify(executor, topic, &text).await
    }

    /// Encodes `value` with `codec` and publishes it as an update of `key`
    /// through `executor` (your transaction: delivered if and only if it
    /// commits). Returns the envelope sent.
    ///
    /// The envelope is built as [`Channel`](hydratecache_core::Channel) builds
    /// it (TTL starting now, version from `options`), except that each
    /// transactional publish is its own publisher with sequence 1: a
    /// transaction that rolls back then leaves no hole in anyone's sequence
    /// numbers, and transactions may commit in any order.
    pub async fn publish_value_tx<'c, E, T, C>(
        executor: E,
        topic: &str,
        codec: &C,
        key: &str,
        value: &T,
        options: PublishOptions,
    ) -> Result<Envelope>
    where
        E: sqlx::Executor<'c, Database = Postgres>,
        C: Codec<T> + ?Sized,
    {
        let envelope = value_envelope(codec, key, value, options)?;
        Self::publish_tx(executor, topic, &envelope).await?;
        Ok(envelope)
    }

    /// Publishes a delete (invalidation) of `key` through `executor`, like
    /// [`publish_value_tx`](Self::publish_value_tx) (the TTL is ignored).
    pub async fn delete_tx<'c, E>(
        executor: E,
        topic: &str,
        key: &str,
        options: PublishOptions,
    ) -> Result<Envelope>
    where
        E: sqlx::Executor<'c, Database = Postgres>,
    {
        let envelope = delete_envelope(key, options);
        Self::publish_tx(executor, topic, &envelope).await?;
        Ok(envelope)
    }
}

/// The envelope of a transactional update of `key` to `value`.
pub(crate) fn value_envelope<T, C: Codec<T> + ?Sized>(
    codec: &C,
    key: &str,
    value: &T,
    options: PublishOptions,
) -> Result<Envelope> {
    let payload = codec.encode(value).map_err(|source| Error::Encode {
        key: key.to_owned(),
        source,
    })?;
    Ok(tx_envelope(Kind::Update, key, payload.into(), options))
}

/// The envelope of a transactional delete of `key` (a TTL is ignored).
pub(crate) fn delete_envelope(key: &str, options: PublishOptions) -> Envelope {
    tx_envelope(Kind::Delete, key, Bytes::new(), options)
}

/// A transactional publish's envelope: its own publisher with sequence 1 (a
/// rollback leaves no hole in anyone's sequence numbers), stamped in whole
/// microseconds, as the wire carries them, so that the envelope returned
/// equals the one subscribers receive.
pub(crate) fn tx_envelope(
    kind: Kind,
    key: &str,
    payload: Bytes,
    options: PublishOptions,
) -> Envelope {
    let now = truncate_to_micros(SystemTime::now());
    Envelope {
        sequence: 1,
        ..envelope_for(kind, key, payload, options, PublisherId::random(), now)
    }
}

/// `SELECT pg_notify($1, $2)`: channel and payload are bind parameters.
async fn notify<'c, E>(executor: E, topic: &str, text: &str) -> Result<()>
where
    E: sqlx::Executor<'c, Database = Postgres>,
{
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(topic)
        .bind(text)
        .execute(executor)
        .await
        .map(|_| ())
        .map_err(|e| Error::backend(BACKEND, format!("pg_notify on topic {topic:?}"), e))
}
