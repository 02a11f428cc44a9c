//! Query cancellation across cores.
//!
//! Each client gets its own (pid, secret) from the gateway, never a backend's. The pid carries
//! the number of the core that owns the client, so a CancelRequest arriving on any core finds
//! the right shard at once. Each shard is written only on client connect and disconnect by its
//! core; the per-client slot is updated by the owning core whenever it takes or returns a
//! server connection (an uncontended lock).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// Where to send a CancelRequest for a client's current query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendKey {
    /// The backend server.
    pub addr: SocketAddr,
    /// The backend's process id.
    pub pid: i32,
    /// The backend's secret key.
    pub secret: i32,
}

/// The server connection a client holds right now, if any.
#[derive(Debug, Default)]
pub struct CancelSlot {
    current: Mutex<Option<BackendKey>>,
    /// A CancelRequest with this client's key arrived (for waits the gateway itself runs,
    /// such as a statement held for review, which no backend can cancel).
    requested: std::sync::atomic::AtomicBool,
}

impl CancelSlot {
    /// Records the server connection the client now holds (or none).
    pub fn set(&self, key: Option<BackendKey>) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = key;
    }

    /// The server connection the client holds now.
    pub fn get(&self) -> Option<BackendKey> {
        *self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes (and clears) the flag a CancelRequest for this client sets.
    pub fn take_cancel_request(&self) -> bool {
        self.requested
            .swap(false, std::sync::atomic::Ordering::AcqRel)
    }
}

const CORE_BITS: u32 = 8;
const SERIAL_BITS: u32 = 31 - CORE_BITS;

struct Entry {
    secret: i32,
    slot: Arc<CancelSlot>,
}

/// All clients' cancel keys, one shard per core.
pub struct CancelRegistry {
    shards: Vec<Mutex<HashMap<i32, Entry>>>,
    serials: Vec<AtomicU32>,
}

impl CancelRegistry {
    /// A registry for `cores` cores (at most 256).
    pub fn new(cores: usize) -> Self {
        let cores = cores.clamp(1, 1 << CORE_BITS);
        Self {
            shards: (0..cores).map(|_| Mutex::new(HashMap::new())).collect(),
            serials: (0..cores).map(|_| AtomicU32::new(1)).collect(),
        }
    }

    /// Registers a new client of `core`; returns its (pid, secret) and its slot. The caller
    /// must call [`CancelRegistry::unregister`] when the client goes.
    pub fn register(&self, core: usize) -> (i32, i32, Arc<CancelSlot>) {
        let core = core % self.shards.len();
        let mut shard = self.shards[core].lock().unwrap_or_else(|e| e.into_inner());
        let slot = Arc::new(CancelSlot::default());
        let secret: i32 = rand::random();
        loop {
            let serial =
                self.serials[core].fetch_add(1, Ordering::Relaxed) & ((1 << SERIAL_BITS) - 1);
            // Positive pids: core in the high bits, serial below; serial 0 is skipped so a pid is never 0.
            let pid = i32::try_from(((core as u32) << SERIAL_BITS) | serial).expect("31 bits fit");
            if serial == 0 || shard.contains_key(&pid) {
                continue;
            }
            shard.insert(
                pid,
                Entry {
                    secret,
                    slot: slot.clone(),
                },
            );
            return (pid, secret, slot);
        }
    }

    /// Forgets a client.
    pub fn unregister(&self, pid: i32) {
        if let Some(shard) = self.shard_of(pid) {
            shard.lock().unwrap_or_else(|e| e.into_inner()).remove(&pid);
        }
    }

    /// The backend to cancel for a CancelRequest, if the pid and secret match a client that
    /// holds a server connection now.
    pub fn lookup(&self, pid: i32, secret: i32) -> Option<BackendKey> {
        let shard = self
            .shard_of(pid)?
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let entry = shard.get(&pid)?;
        // Compare without an early exit, so timing does not reveal how much of the secret matched.
        if (entry.secret ^ secret) != 0 {
            return None;
        }
        entry
            .slot
            .requested
            .store(true, std::sync::atomic::Ordering::Release);
        entry.slot.get()
    }

    fn shard_of(&self, pid: i32) -> Option<&Mutex<HashMap<i32, Entry>>> {
        let pid = u32::try_from(pid).ok()?;
        self.shards.get((pid >> SERIAL_BITS) as usize)
    }

    /// Number of registered clients (for metrics).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// True when no client is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_by_core_and_secret() {
        let r = CancelRegistry::new(2);
        let (pid0, secret0, slot0) = r.register(0);
        let (pid1, secret1, slot1) = r.register(1);
        assert_ne!(pid0, pid1);
        assert!(pid0 > 0 && pid1 > 0);
        let key = BackendKey {
            addr: "127.0.0.1:5432".parse().unwrap(),
            pid: 42,
            secret: 7,
        };
        assert_eq!(r.lookup(pid0, secret0), None, "no server held yet");
        slot0.set(Some(key));
        assert_eq!(r.lookup(pid0, secret0), Some(key));
        assert_eq!(r.lookup(pid0, secret0.wrapping_add(1)), None);
        assert_eq!(r.lookup(pid1, secret1), None);
        slot1.set(Some(key));
        assert_eq!(r.lookup(pid1, secret1), Some(key));
        r.unregister(pid0);
        assert_eq!(r.lookup(pid0, secret0), None);
        assert_eq!(r.lookup(-5, 0), None);
        assert_eq!(r.len(), 1);
    }
}
