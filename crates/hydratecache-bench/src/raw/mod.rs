//! Each backend's own client moving the same payload bytes, without hydratecache.

pub(crate) mod kafka;
pub(crate) mod nats;
pub(crate) mod postgres;
pub(crate) mod redis;
