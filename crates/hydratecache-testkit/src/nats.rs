//! nats server for tests.
