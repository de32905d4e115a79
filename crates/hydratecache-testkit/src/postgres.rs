//! postgres server for tests.
