//! Per-agent caps on the tunnels one identity holds on this replica, over all its
//! sessions: open tunnels (parked + active) are counted here; parked ones by the
//! registry ([`TunnelRegistry::register_capped`](burrow_host_core::registry::TunnelRegistry::register_capped)).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::Stream;

type OpenCounts = Arc<Mutex<HashMap<String, usize>>>;

/// Open `Tunnel` RPCs per agent identity, capped.
pub(crate) struct AgentStreams {
    cap: usize,
    open: OpenCounts,
}

/// One counted tunnel; dropping it (the RPC's response stream ends) gives the place back.
#[derive(Default)]
pub(crate) struct StreamSlot(Option<(String, OpenCounts)>);

impl AgentStreams {
    /// At most `cap` open tunnels per agent (0: no cap, nothing counted).
    pub(crate) fn new(cap: usize) -> Self {
        Self { cap, open: Default::default() }
    }

    /// A place for one more tunnel of `agent_id`, or `None` when it holds `cap` already.
    pub(crate) fn acquire(&self, agent_id: &str) -> Option<StreamSlot> {
        if self.cap == 0 {
            return Some(StreamSlot::default());
        }
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(agent_id.to_owned()).or_insert(0);
        if *n >= self.cap {
            return None;
        }
        *n += 1;
        Some(StreamSlot(Some((agent_id.to_owned(), self.open.clone()))))
    }

    #[cfg(test)]
    fn count(&self, agent_id: &str) -> usize {
        self.open.lock().unwrap().get(agent_id).copied().unwrap_or(0)
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Some((agent_id, open)) = self.0.take() {
            let mut open = open.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = open.get_mut(&agent_id) {
                *n -= 1;
                if *n == 0 {
                    // Only agents with open tunnels are kept: bounded by them.
                    open.remove(&agent_id);
                }
            }
        }
    }
}

/// A response stream that holds its tunnel's [`StreamSlot`] for as long as tonic keeps
/// it, that is until the RPC ends, however it ends.
pub(crate) struct Holding<S> {
    inner: S,
    _slot: StreamSlot,
}

impl<S> Holding<S> {
    pub(crate) fn new(inner: S, slot: StreamSlot) -> Self {
        Self { inner, _slot: slot }
    }
}

impl<S: Stream + Unpin> Stream for Holding<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_open_tunnels_per_agent_are_given_back_when_dropped() {
        let streams = AgentStreams::new(2);
        let a = streams.acquire("a").unwrap();
        let _b = streams.acquire("a").unwrap();
        assert!(streams.acquire("a").is_none(), "a third open tunnel is over the cap");
        let _other = streams.acquire("b").expect("another agent has its own count");
        drop(a);
        assert_eq!(streams.count("a"), 1);
        let _c = streams.acquire("a").expect("a closed tunnel makes room");
        assert!(AgentStreams::new(0).acquire("a").is_some(), "0: no cap");
    }
}
