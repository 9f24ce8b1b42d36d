//! The idle-tunnel pool policy, free of I/O: it counts tunnels and says how many to open.
//!
//! Each tunnel is in one of three states: *opening* (the `Tunnel` RPC was started but
//! the host has not answered its headers yet), *parked* (waiting for the host's `Dial`)
//! or *active* (carrying a connection). Opening and parked tunnels are both *idle*: the
//! host will be able to claim them.
//!
//! Rules:
//! - While connected, keep `idle >= target`, where `target` starts at `min_idle`.
//! - A claim opens its replacement at once.
//! - A claim that leaves no parked tunnel means demand outran supply: `target` doubles so
//!   the next burst finds headroom instead of waiting a round trip per tunnel.
//! - Never more than `max_streams` tunnels in total (idle plus active).
//! - A parked tunnel unused for the idle timeout closes if `idle > min_idle`, and
//!   `target` follows idle back down.

/// Tunnel counts and the idle target. Every method that can create room returns how
/// many tunnels the caller must open now; those are already counted as opening.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    min_idle: usize,
    max_streams: usize,
    target: usize,
    opening: usize,
    parked: usize,
    active: usize,
    connected: bool,
}

impl Pool {
    /// An empty, disconnected pool.
    pub fn new(min_idle: usize, max_streams: usize) -> Self {
        let min_idle = min_idle.min(max_streams);
        Self { min_idle, max_streams, target: min_idle, opening: 0, parked: 0, active: 0, connected: false }
    }

    /// Tunnels the host can claim or soon will (opening + parked).
    pub fn idle(&self) -> usize {
        self.opening + self.parked
    }

    /// Tunnels the host has acknowledged and not claimed.
    pub fn parked(&self) -> usize {
        self.parked
    }

    /// Tunnels carrying a connection.
    pub fn active(&self) -> usize {
        self.active
    }

    /// Idle plus active.
    pub fn total(&self) -> usize {
        self.idle() + self.active
    }

    /// Current idle target.
    pub fn target(&self) -> usize {
        self.target
    }

    fn top_up(&mut self) -> usize {
        if !self.connected {
            return 0;
        }
        let want = self.target.saturating_sub(self.idle());
        let room = self.max_streams.saturating_sub(self.total());
        let n = want.min(room);
        self.opening += n;
        n
    }

    /// A session was established: open the initial tunnels.
    pub fn connected(&mut self) -> usize {
        self.connected = true;
        self.target = self.min_idle;
        self.top_up()
    }

    /// The session ended (lost, draining after `GoAway`, or shutting down): open nothing
    /// until the next [`connected`](Self::connected). Active tunnels keep their count.
    pub fn disconnected(&mut self) {
        self.connected = false;
        self.target = self.min_idle;
    }

    /// The host answered an opening tunnel: it is parked now.
    pub fn parked_ok(&mut self) {
        debug_assert!(self.opening > 0);
        self.opening = self.opening.saturating_sub(1);
        self.parked += 1;
    }

    fn drop_idle(&mut self, was_parked: bool) {
        if was_parked {
            debug_assert!(self.parked > 0);
            self.parked = self.parked.saturating_sub(1);
        } else {
            debug_assert!(self.opening > 0);
            self.opening = self.opening.saturating_sub(1);
        }
    }

    /// The host claimed an idle tunnel (`Dial`). Returns how many to open.
    pub fn claimed(&mut self, was_parked: bool) -> usize {
        self.drop_idle(was_parked);
        self.active += 1;
        if self.parked == 0 {
            self.target = (self.target.saturating_mul(2)).clamp(self.min_idle, self.max_streams);
        }
        self.top_up()
    }

    /// An idle tunnel ended without being claimed (the host closed it, it failed to open,
    /// or it was cancelled). Returns how many to open.
    pub fn idle_closed(&mut self, was_parked: bool) -> usize {
        self.drop_idle(was_parked);
        self.top_up()
    }

    /// An idle tunnel ended because its session is failing: stop counting it but open
    /// nothing, since a replacement on the same connection would fail the same way.
    pub fn idle_failed(&mut self, was_parked: bool) {
        self.drop_idle(was_parked);
    }

    /// An active tunnel finished. Returns how many to open (only non-zero when the
    /// ceiling had held replacements back).
    pub fn active_closed(&mut self) -> usize {
        debug_assert!(self.active > 0);
        self.active = self.active.saturating_sub(1);
        self.top_up()
    }

    /// A parked tunnel sat unused for the idle timeout. Returns true if it should close
    /// (it is then no longer counted); false keeps it parked for another period.
    pub fn idle_expired(&mut self) -> bool {
        if self.parked == 0 || self.idle() <= self.min_idle {
            return false;
        }
        self.parked -= 1;
        self.target = self.target.min(self.idle()).max(self.min_idle);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Connect and let every opening tunnel park.
    fn connected(min_idle: usize, max: usize) -> Pool {
        let mut p = Pool::new(min_idle, max);
        let n = p.connected();
        for _ in 0..n {
            p.parked_ok();
        }
        p
    }

    fn park_all(p: &mut Pool) {
        while p.idle() > p.parked() {
            p.parked_ok();
        }
    }

    #[test]
    fn connect_opens_min_idle() {
        let mut p = Pool::new(4, 1000);
        assert_eq!(p.connected(), 4);
        assert_eq!((p.idle(), p.parked()), (4, 0));
        p.parked_ok();
        assert_eq!((p.idle(), p.parked()), (4, 1));
    }

    #[test]
    fn claim_opens_one_replacement_while_parked_remain() {
        let mut p = connected(4, 1000);
        assert_eq!(p.claimed(true), 1);
        assert_eq!((p.idle(), p.active(), p.target()), (4, 1, 4));
        // A claim of a tunnel whose headers had not arrived yet counts the same.
        assert_eq!(p.claimed(false), 1);
        assert_eq!(p.active(), 2);
    }

    #[test]
    fn draining_the_parked_tunnels_doubles_the_target() {
        let mut p = connected(4, 1000);
        assert_eq!(p.claimed(true), 1);
        assert_eq!(p.claimed(true), 1);
        assert_eq!(p.claimed(true), 1);
        // The fourth claim leaves nothing parked: 3 are opening, target becomes 8.
        assert_eq!(p.claimed(true), 5);
        assert_eq!((p.idle(), p.target(), p.active()), (8, 8, 4));
        park_all(&mut p);
        for _ in 0..7 {
            assert_eq!(p.claimed(true), 1);
        }
        assert_eq!(p.claimed(true), 9, "drained again: target 16");
        assert_eq!(p.target(), 16);
    }

    #[test]
    fn never_exceeds_max_streams() {
        let mut p = connected(4, 6);
        let mut opened = 0;
        for _ in 0..4 {
            opened += p.claimed(true);
            park_all(&mut p);
        }
        assert!(p.total() <= 6, "{p:?}");
        assert_eq!(p.active(), 4);
        assert_eq!(p.idle(), 2);
        assert!(opened <= 2 + 4);
        // Claim the last two: nothing more may open.
        assert_eq!(p.claimed(true), 0);
        assert_eq!(p.claimed(true), 0);
        assert_eq!((p.total(), p.idle()), (6, 0));
        // Room appears when an active tunnel finishes.
        assert_eq!(p.active_closed(), 1);
        assert_eq!(p.total(), 6);
    }

    #[test]
    fn min_idle_is_capped_by_max_streams() {
        let mut p = Pool::new(10, 3);
        assert_eq!(p.connected(), 3);
    }

    #[test]
    fn host_closing_a_parked_tunnel_reopens_it() {
        let mut p = connected(4, 1000);
        assert_eq!(p.idle_closed(true), 1);
        assert_eq!(p.idle(), 4);
        // A tunnel that failed before parking is replaced too.
        assert_eq!(p.idle_closed(false), 1);
        // One that failed because the session is broken is not.
        p.idle_failed(false);
        assert_eq!(p.idle(), 3);
    }

    #[test]
    fn active_close_normally_opens_nothing() {
        let mut p = connected(4, 1000);
        p.claimed(true);
        park_all(&mut p);
        assert_eq!(p.active_closed(), 0);
        assert_eq!((p.idle(), p.active()), (4, 0));
    }

    #[test]
    fn only_surplus_idle_tunnels_expire_and_target_follows() {
        let mut p = connected(4, 1000);
        assert!(!p.idle_expired(), "at the floor nothing expires");
        for _ in 0..4 {
            p.claimed(true);
        }
        park_all(&mut p);
        assert_eq!((p.idle(), p.target()), (8, 8));
        for _ in 0..4 {
            p.active_closed();
        }
        let mut expired = 0;
        while p.idle_expired() {
            expired += 1;
        }
        assert_eq!(expired, 4);
        assert_eq!((p.idle(), p.target()), (4, 4));
        assert_eq!(p.idle_closed(true), 1, "target came back to the floor, not the burst size");
    }

    #[test]
    fn disconnected_pool_opens_nothing_and_reconnect_restarts_at_min_idle() {
        let mut p = connected(4, 1000);
        p.claimed(true);
        for _ in 0..3 {
            p.claimed(true);
        }
        p.disconnected();
        // Parked tunnels of the old session are cancelled; nothing replaces them.
        while p.parked() > 0 {
            assert_eq!(p.idle_closed(true), 0);
        }
        while p.idle() > 0 {
            assert_eq!(p.idle_closed(false), 0);
        }
        assert_eq!(p.active_closed(), 0);
        assert_eq!(p.active(), 3, "active tunnels of the old session keep running");
        assert_eq!(p.connected(), 4);
    }
}
