#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod builder;
mod cache;
mod clock;
mod config;
mod entry;
mod error;
#[cfg(feature = "metrics")]
mod export;
mod hydrate;
mod inner;
mod load;
mod loader;
mod repair;
mod sequences;
mod stats;
mod store;
#[cfg(test)]
mod tests;

pub use builder::LocalCacheBuilder;
pub use cache::LocalCache;
pub use config::{
    RepairPolicy, Weigher, DEFAULT_CAPACITY, DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_LOAD_TIMEOUT,
    DEFAULT_TOMBSTONE_TTL,
};
pub use error::{Error, Result};
pub use loader::{Loaded, Loader};
pub use stats::CacheStats;

// The workspace README's code blocks, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct WorkspaceReadme;
