//! Open connections per source address, per app: the gauge `server.max_connections_per_ip` is
//! checked against. A stranger on the LAN who opens thousands of idle WebSockets or fallback
//! sessions from one laptop fills the app's whole `max_connections` quota and locks real
//! clients out (4004); with this table it fills only its own address's share.
//!
//! The table hands out slot numbers, not handles: a connection keeps a `u32` in its
//! [`ConnectionGuard`](super::ConnectionGuard)'s padding (the guard stays 24 bytes, so an idle
//! WebSocket costs what it did) and gives it back through its app's counters when it drops.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};

/// "No slot": the limit is off, or the connection was counted before it existed.
pub const NO_SLOT: u32 = u32::MAX;

#[derive(Default)]
struct Table {
    by_address: HashMap<IpAddr, u32>,
    /// `(address, open connections)` by slot number; a slot whose count is 0 is free.
    slots: Vec<(IpAddr, u32)>,
    free: Vec<u32>,
}

/// Open connections by source address, with the most one address may hold.
pub struct Addresses {
    limit: u32,
    table: Mutex<Table>,
}

impl std::fmt::Debug for Addresses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Addresses")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl Addresses {
    /// `limit` connections per address; 0 = no limit (nothing is counted).
    pub fn new(limit: u32) -> Addresses {
        Addresses {
            limit,
            table: Mutex::new(Table::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // Counts stay consistent whatever panicked while holding the lock.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one more connection from `ip`: its slot, or `None` when `ip` already holds
    /// `limit` connections. [`NO_SLOT`] when the limit is off.
    pub fn acquire(&self, ip: IpAddr) -> Option<u32> {
        if self.limit == 0 {
            return Some(NO_SLOT);
        }
        let ip = canonical(ip);
        let mut t = self.lock();
        let slot = match t.by_address.get(&ip) {
            Some(&s) => s,
            None => {
                let s = match t.free.pop() {
                    Some(s) => s,
                    None => {
                        let s = u32::try_from(t.slots.len())
                            .ok()
                            .filter(|&s| s != NO_SLOT)?;
                        t.slots.push((ip, 0));
                        s
                    }
                };
                t.slots[s as usize] = (ip, 0);
                t.by_address.insert(ip, s);
                s
            }
        };
        let entry = &mut t.slots[slot as usize];
        if entry.1 >= self.limit {
            return None;
        }
        entry.1 += 1;
        Some(slot)
    }

    /// Gives back a connection counted in `slot`.
    pub fn release(&self, slot: u32) {
        if slot == NO_SLOT {
            return;
        }
        let mut t = self.lock();
        let Some(entry) = t.slots.get_mut(slot as usize) else {
            return;
        };
        entry.1 = entry.1.saturating_sub(1);
        if entry.1 == 0 {
            let ip = entry.0;
            t.by_address.remove(&ip);
            t.free.push(slot);
        }
    }

    /// Open connections from `ip` (for tests and the console).
    pub fn open(&self, ip: IpAddr) -> u32 {
        let t = self.lock();
        let ip = canonical(ip);
        t.by_address.get(&ip).map_or(0, |&s| t.slots[s as usize].1)
    }
}

/// An IPv4 client on a dual-stack listener arrives as `::ffff:a.b.c.d`: one address either way.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_address_up_to_the_limit_and_reuses_slots() {
        let a = Addresses::new(2);
        let (x, y): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let s1 = a.acquire(x).unwrap();
        let s2 = a.acquire(x).unwrap();
        assert_eq!(s1, s2);
        assert_eq!(a.acquire(x), None, "the third from one address");
        let sy = a.acquire(y).unwrap();
        assert_ne!(sy, s1);
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(a.acquire(mapped), None, "v4-mapped is the same address");
        a.release(s1);
        assert_eq!(a.open(x), 1);
        a.release(s2);
        assert_eq!(a.open(x), 0);
        // The freed slot goes to the next new address.
        let z: IpAddr = "10.0.0.3".parse().unwrap();
        assert_eq!(a.acquire(z), Some(s1));
        a.release(NO_SLOT);
        assert_eq!(Addresses::new(0).acquire(x), Some(NO_SLOT), "0 = off");
    }
}
