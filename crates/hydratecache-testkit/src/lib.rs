//! Private backend servers for tests: each on its own port and in its own
//! temporary directory, killed when dropped (also when a test panics). Also
//! what the benchmarks and the chaos run share: the [`workload`] and, with
//! the `connect` feature, a backend URL to its transport (`connect`); and a
//! [`Proxy`] that can stop forwarding without closing (a half-open connection).
//!
//! A server binary is looked up in `HYDRATECACHE_<NAME>_BIN`, then on `PATH`
//! and in the usual install directories; when it is missing the error names
//! the package to install (`cargo xtask itest` installs it).
//!
//! Tests that only need *a* server call `<backend>::shared_or_private()`,
//! which uses `HYDRATECACHE_<BACKEND>_URL` when set; tests that restart or kill
//! the server always start their own.

#[cfg(feature = "connect")]
pub mod connect;
pub mod kafka;
pub mod nats;
pub mod postgres;
pub mod process;
pub mod proxy;
pub mod redis;
pub mod tls;
pub mod workload;

pub use process::{find_binary, free_port, memory_kib, wait_for_port, Process, TempDir};
pub use proxy::Proxy;
