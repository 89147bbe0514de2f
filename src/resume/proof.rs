//! What a resumable connection proves it received. TCP acknowledgements lie after a stall
//! (RESUME.md B2: the kernel acked e2 and e3 when the link came back, but pusher-js had already
//! abandoned that socket), so pushbox counts an event as delivered only when a ping written
//! after it got its pong: pusher-js answers `pusher:ping` from its message handler, in order,
//! and stops answering once it abandons a connection. The same holds behind a reverse proxy
//! and over TLS, where TCP's own acknowledgements would come from the proxy.
//!
//! A connection that was written to sends a proof ping at most every [`PROOF_EVERY`] while one
//! is not already out; each ping carries the app's head at the time it was queued (every event
//! up to it was ahead of the ping in the socket's stream). The watermark is the head of the last
//! ping answered. What was delivered but not yet proven when the link died (at most the events
//! of the last interval and a round trip) is replayed once more: the only duplicates a token
//! client can see.

use std::time::{Duration, Instant};

/// The least time between two proof pings on one connection: a connection receiving events
/// all the time sends about four pings a second and reads four pongs (~30 bytes each way).
pub const PROOF_EVERY: Duration = Duration::from_millis(250);

/// Pings whose pongs are awaited, oldest first. At most one proof ping and one liveness ping
/// are out at a time; more means the peer does not answer in order, and proofs stop.
const MAX_OUT: usize = 4;

/// A connection's proof state.
#[derive(Debug, Default)]
pub struct Proof {
    /// Heads of the pings awaiting their pongs, oldest first.
    out: [u64; MAX_OUT],
    n: usize,
    /// Frames were written since the last proof ping was queued.
    dirty: bool,
    last_ping: Option<Instant>,
    /// The peer sent more pongs than pings, or let too many pile up: nothing it says proves
    /// anything any more.
    confused: bool,
}

/// What the transport should do for the proof.
#[derive(Debug, PartialEq, Eq)]
pub enum ProofTick {
    /// Nothing to prove, or a ping is out.
    Idle,
    /// Wake up then and ask again.
    At(Instant),
    /// Queue a ping now (it is already counted as sent).
    PingNow,
}

impl Proof {
    /// The transport wrote frames of this connection.
    pub fn wrote(&mut self) {
        self.dirty = true;
    }

    /// A ping (proof or liveness) is being queued while the app's head is `head`.
    pub fn ping_sent(&mut self, head: u64) {
        if self.n == MAX_OUT {
            self.confused = true;
            return;
        }
        self.out[self.n] = head;
        self.n += 1;
    }

    /// A pong came: the head its ping carried is now proven delivered, if anything is.
    pub fn pong(&mut self) -> Option<u64> {
        if self.n == 0 {
            self.confused = true;
            return None;
        }
        let head = self.out[0];
        self.out.copy_within(1..self.n, 0);
        self.n -= 1;
        (!self.confused).then_some(head)
    }

    /// Whether to send a proof ping, given the app's `head` and what is `proven` already.
    pub fn tick(&mut self, now: Instant, head: u64, proven: u64) -> ProofTick {
        if !self.dirty || self.n > 0 || self.confused {
            return ProofTick::Idle;
        }
        if head <= proven {
            // Only the session's own frames were written: nothing to prove.
            self.dirty = false;
            return ProofTick::Idle;
        }
        if let Some(last) = self.last_ping {
            if now < last + PROOF_EVERY {
                return ProofTick::At(last + PROOF_EVERY);
            }
        }
        self.dirty = false;
        self.last_ping = Some(now);
        self.ping_sent(head);
        ProofTick::PingNow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pong_proves_the_head_of_its_own_ping_in_order() {
        let mut p = Proof::default();
        p.ping_sent(5); // a liveness ping
        p.ping_sent(9); // then a proof ping
        assert_eq!(p.pong(), Some(5), "the first pong answers the first ping");
        assert_eq!(p.pong(), Some(9));
        assert_eq!(p.pong(), None, "a pong nobody asked for proves nothing");
        p.ping_sent(12);
        assert_eq!(p.pong(), None, "and nothing after it either");
    }

    #[test]
    fn proof_pings_go_only_after_writes_one_at_a_time_and_spaced() {
        let t0 = Instant::now();
        let mut p = Proof::default();
        assert_eq!(p.tick(t0, 3, 0), ProofTick::Idle, "nothing written");
        p.wrote();
        assert_eq!(p.tick(t0, 3, 3), ProofTick::Idle, "nothing new to prove");
        p.wrote();
        assert_eq!(p.tick(t0, 4, 3), ProofTick::PingNow);
        p.wrote();
        assert_eq!(p.tick(t0, 5, 3), ProofTick::Idle, "one ping out at a time");
        assert_eq!(p.pong(), Some(4));
        assert_eq!(p.tick(t0, 5, 4), ProofTick::At(t0 + PROOF_EVERY));
        assert_eq!(p.tick(t0 + PROOF_EVERY, 5, 4), ProofTick::PingNow);
        assert_eq!(p.pong(), Some(5));
    }

    #[test]
    fn a_stall_proves_nothing_until_the_pong() {
        // The measured 10 s cut: e1 proven, e2 and e3 written into the cut; the ping after
        // them never gets its pong (pusher-js abandoned the socket), so the watermark stays
        // at e1 whatever TCP acknowledges when the link returns.
        let t0 = Instant::now();
        let mut p = Proof::default();
        p.wrote();
        assert_eq!(p.tick(t0, 1, 0), ProofTick::PingNow);
        assert_eq!(p.pong(), Some(1));
        p.wrote();
        assert_eq!(p.tick(t0 + PROOF_EVERY, 3, 1), ProofTick::PingNow);
        // ...no pong: the connection ends with the watermark at 1.
        assert_eq!(p.tick(t0 + 10 * PROOF_EVERY, 3, 1), ProofTick::Idle);
    }
}
