//! Counting what one source address holds open, with a cap: the agent port counts
//! connections with it, the ingress connections and requests in progress.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Things open per source address, shared by the counter and its slots.
type OpenCounts = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// Things open per source address, capped.
pub struct PerAddress {
    cap: usize,
    open: OpenCounts,
}

/// One counted thing of one address; dropping it gives the place back.
#[derive(Default)]
pub struct AddressSlot(Option<(IpAddr, OpenCounts)>);

impl PerAddress {
    /// At most `cap` per address (0: no cap, nothing counted).
    pub fn new(cap: usize) -> Self {
        Self { cap, open: Default::default() }
    }

    /// A place for one more from `ip`, or `None` when it holds `cap` already. IPv4-mapped
    /// IPv6 addresses count as their IPv4 address.
    pub fn acquire(&self, ip: IpAddr) -> Option<AddressSlot> {
        if self.cap == 0 {
            return Some(AddressSlot::default());
        }
        let ip = ip.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.cap {
            return None;
        }
        *n += 1;
        Some(AddressSlot(Some((ip, self.open.clone()))))
    }

    /// The cap (0: none).
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Addresses holding something now.
    pub fn addresses(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        if let Some((ip, open)) = self.0.take() {
            let mut open = open.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = open.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    // Only addresses holding something are kept: bounded by what is open.
                    open.remove(&ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_its_cap_and_the_map_forgets_it_when_all_is_given_back() {
        let limit = PerAddress::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let first = limit.acquire(a).unwrap();
        let second = limit.acquire(mapped).unwrap();
        assert!(limit.acquire(a).is_none(), "the mapped address is the same address");
        assert!(limit.acquire("10.0.0.2".parse().unwrap()).is_some());
        drop((first, second));
        assert_eq!(limit.addresses(), 0);
        assert!(PerAddress::new(0).acquire(a).is_some());
    }
}
