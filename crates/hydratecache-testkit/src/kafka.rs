//! kafka server for tests.
