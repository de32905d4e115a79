//! `cargo xtask release-check` and `cargo xtask release <crate> <version>
//! [--execute]`: what a crate must pass before it is published, and the
//! mechanical part of a release. The policy is `docs/releasing.md`.
//!
//! release-check, for every publishable workspace member (`publish` unset):
//!
//! 1. `cargo deny check` (pinned, installed when missing): licenses, bans,
//!    sources with `deny.toml`, and RustSec advisories when the advisory
//!    database can be fetched (otherwise said loudly, never passed silently).
//! 2. `cargo package --workspace`: every crate packaged and its tarball built
//!    on its own, in dependency order, unpublished workspace dependencies
//!    taken from a local overlay (as the registry will see them).
//! 3. `cargo semver-checks` (pinned, installed when missing) against the
//!    crate's last release tag `<crate>-v<version>`, or before the first
//!    release against the previous commit; a crate that did not exist at the
//!    baseline is skipped with the reason printed.
//! 4. MSRV without the MSRV toolchain: a copy of the workspace resolved the
//!    way a user on the declared `rust-version` resolves it
//!    (`CARGO_RESOLVER_INCOMPATIBLE_RUST_VERSIONS=fallback`), every dependency's
//!    declared `rust-version` compared with ours, each crate checked there with
//!    default, no-default and all features, and clippy's `incompatible_msrv`
//!    lint for standard library items newer than the declared version.
//!
//! One file per step (`package`, `semver`, `deny`, `msrv`), driven by
//! `check`; `plan` is the release command; `version`, `changelog` and
//! `manifest` are the text they edit; `common` and `tools` what the steps
//! share. This file only declares them: none of them uses it.

mod changelog;
mod check;
mod common;
mod deny;
mod manifest;
mod msrv;
mod package;
mod plan;
mod semver;
mod tools;
mod version;

pub(crate) use check::check;
pub(crate) use plan::release;
