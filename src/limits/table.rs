//! A fixed-size table of token buckets, keyed by 64-bit hashes: the memory
//! behind each limit (SPEC §5 `[limits]`).
//!
//! Set-associative: a key lives in one set of `WAYS` slots, chosen by its
//! hash, and all the memory is allocated once, when the table is made, so
//! taking a token never allocates, whatever the keys.
//!
//! What is kept is only what matters: a slot whose bucket has filled up
//! again says nothing a fresh key would not (a new key starts full), so it
//! can be forgotten for free. When a new key finds its set full, it takes
//! the slot that forgets least — the one with the most tokens — except a
//! slot whose key was refused within `STRIKE_MEMORY`: an abusive key is
//! never pushed out by keys that were not refused. A flood of distinct keys
//! (each one request, so each within its burst) therefore replaces only
//! itself and idle keys, and an abuser stays remembered. Only when every
//! slot of the set holds a recently refused key does the new key go
//! unremembered, and is let through (counted as `overflow`): refusing it
//! would let a crowd of abusers lock everybody else out; letting it through
//! gives it no more than the burst every new key has, and it needs a
//! whole set of refused keys that its (secretly keyed) hash happens to
//! fall into.
//!
//! Invariants: tokens are kept in thousandths, never above the burst;
//! the hash 0 marks an empty slot (a key hashing to 0 is taken as 1).
//! Never: allocates after `new`, or reads a clock (the caller's `now_ms`).

/// Slots per set.
pub(crate) const WAYS: usize = 8;

/// A refused key keeps its slot against keys that were not refused this
/// long after its last refusal.
pub(crate) const STRIKE_MEMORY_MS: u64 = 1000;

/// Thousandths of a token.
const MILLI: u64 = 1000;

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// The key's hash; 0: empty.
    key: u64,
    /// Tokens (thousandths) as of `at_ms`.
    tokens: u64,
    /// When `tokens` was last brought up to date.
    at_ms: u64,
    /// The last refusal (0: none yet). A millisecond clock that starts at
    /// 0 could refuse at 0; it is stored as 1 then, a millisecond off.
    struck_ms: u64,
}

/// What the table said to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// A token was taken.
    Allowed,
    /// The key's bucket is empty: 4029.
    Refused,
    /// A new key whose set holds only recently refused keys: let through,
    /// not remembered (see the module docs).
    Overflow,
}

/// The buckets of one limit.
#[derive(Debug)]
pub(crate) struct Table {
    slots: Box<[Slot]>,
    // INVARIANT: a power of two; slots.len() == sets * WAYS.
    sets: usize,
    // Thousandths of a token added per millisecond (= tokens per second).
    per_ms: u64,
    // Thousandths of a token a bucket holds at most.
    cap: u64,
}

impl Table {
    /// A table of at least `capacity` slots (rounded up to whole sets, a
    /// power of two of them), each a bucket of `burst` tokens refilled at
    /// `per_s` a second.
    pub(crate) fn new(capacity: usize, per_s: u64, burst: u64) -> Self {
        let sets = capacity.div_ceil(WAYS).max(1).next_power_of_two();
        Table {
            slots: vec![Slot::default(); sets * WAYS].into_boxed_slice(),
            sets,
            per_ms: per_s,
            cap: burst.max(1) * MILLI,
        }
    }

    /// Slots in the table.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Slots holding a key (tests, and the memory figure).
    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.slots.iter().filter(|s| s.key != 0).count()
    }

    /// The tokens of `slot` at `now_ms`.
    fn refilled(&self, slot: &Slot, now_ms: u64) -> u64 {
        let grown = now_ms
            .saturating_sub(slot.at_ms)
            .saturating_mul(self.per_ms);
        slot.tokens.saturating_add(grown).min(self.cap)
    }

    /// Takes one token of `key` at `now_ms`, or says why not.
    pub(crate) fn take(&mut self, key: u64, now_ms: u64) -> Verdict {
        let key = key.max(1);
        let set = (key as usize) & (self.sets - 1);
        let start = set * WAYS;
        let mut victim: Option<(usize, u64)> = None;
        for i in start..start + WAYS {
            let slot = self.slots[i];
            if slot.key == key {
                let tokens = self.refilled(&slot, now_ms);
                let s = &mut self.slots[i];
                s.at_ms = now_ms;
                if tokens >= MILLI {
                    s.tokens = tokens - MILLI;
                    return Verdict::Allowed;
                }
                s.tokens = tokens;
                s.struck_ms = now_ms.max(1);
                return Verdict::Refused;
            }
            // The best slot for a new key: empty, else the most tokens
            // among those not refused lately.
            let worth = if slot.key == 0 {
                u64::MAX
            } else if slot.struck_ms != 0
                && now_ms.saturating_sub(slot.struck_ms) < STRIKE_MEMORY_MS
            {
                continue;
            } else {
                self.refilled(&slot, now_ms)
            };
            if victim.is_none_or(|(_, w)| worth > w) {
                victim = Some((i, worth));
            }
        }
        let Some((i, _)) = victim else {
            return Verdict::Overflow;
        };
        self.slots[i] = Slot {
            key,
            tokens: self.cap - MILLI,
            at_ms: now_ms,
            struck_ms: 0,
        };
        Verdict::Allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_gets_its_burst_then_the_rate() {
        let mut t = Table::new(64, 2, 3);
        for _ in 0..3 {
            assert_eq!(t.take(7, 0), Verdict::Allowed);
        }
        assert_eq!(t.take(7, 0), Verdict::Refused);
        assert_eq!(
            t.take(7, 499),
            Verdict::Refused,
            "2/s: one token per 500 ms"
        );
        assert_eq!(t.take(7, 500), Verdict::Allowed);
        assert_eq!(t.take(7, 500), Verdict::Refused);
        // Idle long enough: the burst again, never more.
        for _ in 0..3 {
            assert_eq!(t.take(7, 60_000), Verdict::Allowed);
        }
        assert_eq!(t.take(7, 60_000), Verdict::Refused);
        assert_eq!(t.take(8, 60_000), Verdict::Allowed, "other keys unaffected");
    }

    #[test]
    fn memory_is_fixed_whatever_the_keys() {
        let mut t = Table::new(1000, 1, 5);
        let cap = t.capacity();
        assert_eq!(cap, 1024);
        for k in 1..=100_000u64 {
            // A spread of keys, as hashes are.
            assert_ne!(
                t.take(k.wrapping_mul(0x9E37_79B9_7F4A_7C15), k / 10),
                Verdict::Refused
            );
        }
        assert_eq!(t.capacity(), cap);
        assert!(t.used() <= cap);
    }

    /// Keys that land in the same set: the set index is the low bits.
    fn same_set(t: &Table, n: usize) -> Vec<u64> {
        (1..=n as u64).map(|i| i * t.sets as u64 + 3).collect()
    }

    #[test]
    fn a_flood_of_new_keys_does_not_push_out_an_abusive_one() {
        let mut t = Table::new(WAYS, 1, 2);
        let keys = same_set(&t, 10_000);
        let abuser = keys[0];
        assert_eq!(t.take(abuser, 0), Verdict::Allowed);
        assert_eq!(t.take(abuser, 0), Verdict::Allowed);
        assert_eq!(t.take(abuser, 0), Verdict::Refused);
        // Thousands of new keys, each once, all in the abuser's set.
        for (i, &k) in keys[1..].iter().enumerate() {
            assert_eq!(t.take(k, i as u64 / 100), Verdict::Allowed);
            if i % 50 == 0 {
                // The abuser keeps trying, and stays refused: it was never
                // forgotten (a new key would get its burst).
                assert_eq!(t.take(abuser, i as u64 / 100), Verdict::Refused, "at {i}");
            }
        }
    }

    #[test]
    fn a_set_full_of_refused_keys_lets_a_new_key_through_unremembered() {
        let mut t = Table::new(WAYS, 1, 1);
        let keys = same_set(&t, WAYS + 1);
        for &k in &keys[..WAYS] {
            assert_eq!(t.take(k, 0), Verdict::Allowed);
            assert_eq!(t.take(k, 0), Verdict::Refused);
        }
        assert_eq!(t.take(keys[WAYS], 0), Verdict::Overflow);
        // Every abuser is still remembered.
        for &k in &keys[..WAYS] {
            assert_eq!(t.take(k, 0), Verdict::Refused);
        }
        // A second later their strikes are old: the newcomer takes the
        // fullest slot.
        let later = STRIKE_MEMORY_MS + 1;
        assert_eq!(t.take(keys[WAYS], later), Verdict::Allowed);
        assert_eq!(t.take(keys[WAYS], later), Verdict::Refused);
    }
}
