//! Where the host is in its life: serving, draining, shutting down. Read on every request
//! path, so it is two flags and no lock.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::CancellationToken;

/// The host's drain and shutdown state, shared by every part that must react to it.
#[derive(Debug, Default)]
pub struct Lifecycle {
    draining: AtomicBool,
    shutdown: CancellationToken,
}

impl Lifecycle {
    /// Serving.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks the host as draining: readiness turns false, other replicas stop choosing
    /// it, local tunnels are no longer offered to forwarded work.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// True once the drain began.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Cancelled when the servers stop taking new work (after the drain began).
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// True once the servers were told to stop.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }
}
