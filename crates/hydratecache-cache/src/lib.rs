#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod apply;
mod builder;
mod cache;
mod clock;
mod config;
mod entry;
mod error;
#[cfg(feature = "metrics")]
mod export;
mod health;
mod hydrate;
mod inner;
mod leases;
mod load;
mod loader;
mod repair;
mod sequences;
mod stats;
mod store;
#[cfg(test)]
mod tests;
mod tracking;
mod watchdog;

pub use builder::LocalCacheBuilder;
pub use cache::LocalCache;
pub use config::{
    RepairPolicy, Weigher, DEFAULT_CAPACITY, DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_LOAD_TIMEOUT,
    DEFAULT_MAX_STALENESS, DEFAULT_TOMBSTONE_TTL,
};
pub use error::{Error, Result};
pub use health::{Health, Untrusted};
pub use loader::{Loaded, Loader};
pub use stats::CacheStats;

// The workspace README's code blocks, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct WorkspaceReadme;
