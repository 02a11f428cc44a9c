//! A bounded per-core verdict cache keyed by statement text and policy (CLOCK eviction).

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;

use crate::evaluate::Verdict;

struct Slot<V> {
    policy: u64,
    text: Box<str>,
    verdict: V,
    /// CLOCK's reference bit: set on every hit, cleared as the hand passes.
    referenced: Cell<bool>,
}

/// Cached verdicts for one core (not `Sync`; each core owns one).
///
/// Keyed by the exact statement text and [`crate::Policy::cache_key`] (which changes with the
/// snapshot version, so a new snapshot never sees an old verdict). The full text is compared
/// on every hit: a hash collision can only cause a miss, never a wrong verdict. Bounded to
/// `capacity` entries, evicting with CLOCK (an LRU approximation without list updates on hits);
/// texts longer than `max_text` bytes are not cached. The value is a [`Verdict`] unless the
/// caller keeps more per text (the data plane adds what it must do around the statement).
pub struct VerdictCache<V = Verdict> {
    hasher: RandomState,
    /// Hash of (policy, text) → slot index. On a hash collision the newer entry wins.
    index: HashMap<u64, usize>,
    slots: Vec<Slot<V>>,
    capacity: usize,
    max_text: usize,
    hand: usize,
}

impl<V: Clone> VerdictCache<V> {
    /// A cache of at most `capacity` verdicts (at least 1) for texts up to 8 KiB.
    pub fn new(capacity: usize) -> Self {
        Self::with_max_text(capacity, 8 * 1024)
    }

    /// A cache of at most `capacity` verdicts for texts up to `max_text` bytes.
    pub fn with_max_text(capacity: usize, max_text: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            hasher: RandomState::new(),
            index: HashMap::with_capacity(capacity),
            slots: Vec::with_capacity(capacity),
            capacity,
            max_text,
            hand: 0,
        }
    }

    fn key(&self, policy: u64, text: &str) -> u64 {
        self.hasher.hash_one((policy, text))
    }

    /// The cached verdict for `text` under the policy with `policy_key`, if any.
    pub fn get(&self, policy_key: u64, text: &str) -> Option<&V> {
        let i = *self.index.get(&self.key(policy_key, text))?;
        let slot = &self.slots[i];
        if slot.policy == policy_key && &*slot.text == text {
            slot.referenced.set(true);
            Some(&slot.verdict)
        } else {
            None
        }
    }

    /// Remembers a verdict (ignored for texts longer than the limit).
    pub fn insert(&mut self, policy_key: u64, text: &str, verdict: V) {
        if text.len() > self.max_text {
            return;
        }
        let key = self.key(policy_key, text);
        let slot = Slot {
            policy: policy_key,
            text: text.into(),
            verdict,
            referenced: Cell::new(false),
        };
        if let Some(&i) = self.index.get(&key) {
            self.slots[i] = slot;
            return;
        }
        let i = if self.slots.len() < self.capacity {
            self.slots.push(slot);
            self.slots.len() - 1
        } else {
            // Advance the hand past recently used slots, giving each a second chance.
            loop {
                let s = &self.slots[self.hand];
                if s.referenced.replace(false) {
                    self.hand = (self.hand + 1) % self.capacity;
                    continue;
                }
                break;
            }
            let i = self.hand;
            self.hand = (self.hand + 1) % self.capacity;
            let old = std::mem::replace(&mut self.slots[i], slot);
            let old_key = self.key(old.policy, &old.text);
            if self.index.get(&old_key) == Some(&i) {
                self.index.remove(&old_key);
            }
            i
        };
        self.index.insert(key, i);
    }

    /// The cached verdict, or `compute()` judged now and remembered.
    pub fn get_or_insert_with(
        &mut self,
        policy_key: u64,
        text: &str,
        compute: impl FnOnce() -> V,
    ) -> V {
        if let Some(v) = self.get(policy_key, text) {
            return v.clone();
        }
        let v = compute();
        self.insert(policy_key, text, v.clone());
        v
    }

    /// Number of cached verdicts.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Drops every entry (e.g. when a new snapshot arrives, to free memory early).
    pub fn clear(&mut self) {
        self.index.clear();
        self.slots.clear();
        self.hand = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RuleId;

    fn deny(n: u32) -> Verdict {
        Verdict::Deny {
            rule: RuleId::new(format!("r{n}")),
            message: String::new(),
        }
    }

    #[test]
    fn keyed_by_text_and_policy() {
        let mut c: VerdictCache = VerdictCache::new(4);
        c.insert(1, "SELECT 1", Verdict::Allow);
        assert_eq!(c.get(1, "SELECT 1"), Some(&Verdict::Allow));
        assert_eq!(c.get(2, "SELECT 1"), None);
        assert_eq!(c.get(1, "SELECT 2"), None);
        c.insert(1, "SELECT 1", deny(1));
        assert_eq!(c.get(1, "SELECT 1"), Some(&deny(1)));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn bounded_and_keeps_hot_entries() {
        let mut c: VerdictCache = VerdictCache::new(3);
        for i in 0..3 {
            c.insert(1, &format!("q{i}"), deny(i));
        }
        assert!(c.get(1, "q0").is_some()); // q0 is hot
        c.insert(1, "q3", deny(3));
        assert_eq!(c.len(), 3);
        assert!(c.get(1, "q0").is_some());
        assert!(c.get(1, "q3").is_some());
        assert_eq!(
            ["q1", "q2"]
                .iter()
                .filter(|q| c.get(1, q).is_some())
                .count(),
            1
        );
        for i in 0..100 {
            c.insert(1, &format!("x{i}"), Verdict::Allow);
        }
        assert_eq!(c.len(), 3);
        assert_eq!(c.index.len(), 3);
    }

    #[test]
    fn long_texts_are_not_cached() {
        let mut c: VerdictCache = VerdictCache::with_max_text(4, 10);
        c.insert(1, "SELECT 12345678", Verdict::Allow);
        assert!(c.is_empty());
    }
}
