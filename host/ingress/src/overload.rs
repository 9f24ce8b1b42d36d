//! Caps on what users hold on the ingress: connections (with upgraded pipes) and requests
//! in progress, for the whole port and per source address. Past a connection cap the
//! socket is closed at once; past a request cap the request is answered at once (429 for
//! one address over its share, 503 for the whole port) with `Retry-After`, before any
//! plugin runs. Nothing waits in a queue.
//!
//! Addresses are the TCP peer's: behind a proxy (`trust_forwarded`) every user shares the
//! proxy's address, so the per-address caps should be off (0) or sized for it.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub(crate) use burrow_host_core::limits::{AddressSlot, PerAddress};

/// Requests in progress on the port, and per address.
pub(crate) struct RequestLimits {
    max: usize,
    in_progress: Arc<AtomicUsize>,
    per_address: PerAddress,
}

/// Which request cap refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Over {
    /// The source address holds its share (429).
    Address { limit: usize },
    /// The whole port is at its cap (503).
    Port { limit: usize },
}

/// One request in progress; held by its response body until that ends.
pub(crate) struct RequestPermit {
    port: Option<Arc<AtomicUsize>>,
    _address: AddressSlot,
}

impl Drop for RequestPermit {
    fn drop(&mut self) {
        if let Some(port) = self.port.take() {
            port.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl RequestLimits {
    /// `max` requests in progress on the port and `per_address` from one address (0: no cap).
    pub(crate) fn new(max: usize, per_address: usize) -> Self {
        Self { max, in_progress: Default::default(), per_address: PerAddress::new(per_address) }
    }

    /// Admits one request from `ip`, or says which cap it is over. The address is checked
    /// first: one address over its share is told so (429) even while the port is full.
    pub(crate) fn admit(&self, ip: IpAddr) -> Result<RequestPermit, Over> {
        let address = self.per_address.acquire(ip).ok_or(Over::Address { limit: self.per_address.cap() })?;
        if self.max == 0 {
            return Ok(RequestPermit { port: None, _address: address });
        }
        // Optimistic increment, undone when over: no lock on the hot path.
        if self.in_progress.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.in_progress.fetch_sub(1, Ordering::AcqRel);
            return Err(Over::Port { limit: self.max });
        }
        Ok(RequestPermit { port: Some(self.in_progress.clone()), _address: address })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_requests_per_address_and_per_port_are_given_back_when_done() {
        let limits = RequestLimits::new(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let a1 = limits.admit(a).unwrap();
        let _a2 = limits.admit(a).unwrap();
        assert_eq!(limits.admit(a).err(), Some(Over::Address { limit: 2 }));
        let _b1 = limits.admit(b).unwrap();
        // Three in progress: the port is full for everyone, b included.
        assert_eq!(limits.admit(b).err(), Some(Over::Port { limit: 3 }));
        drop(a1);
        // Room again; and the port's refusal gave back the place it had taken for b.
        let _b2 = limits.admit(b).expect("a finished request makes room");
        assert_eq!(limits.admit(b).err(), Some(Over::Address { limit: 2 }));
    }

    #[test]
    fn zero_means_no_cap_and_v4_mapped_addresses_count_as_v4() {
        let limits = RequestLimits::new(0, 0);
        let held: Vec<_> = (0..100).map(|_| limits.admit([127, 0, 0, 1].into()).unwrap()).collect();
        assert_eq!(held.len(), 100);
        let per = PerAddress::new(1);
        let _v4 = per.acquire("192.0.2.1".parse().unwrap()).unwrap();
        assert!(per.acquire("::ffff:192.0.2.1".parse().unwrap()).is_none());
    }
}
