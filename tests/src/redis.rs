//! Real `redis-server` processes for the cluster tests (the harness is its own crate so the
//! host's unit tests use the same one).

pub use burrow_test_redis::*;
