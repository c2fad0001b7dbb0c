//! The slots of one half of the shared memory: which ranges are handed out.

use std::collections::BTreeMap;

use super::{ALIGNMENT, SlotRef};

/// First-fit allocation over one half. The ranges in use are few (the
/// batches in flight), so a walk over them is cheaper than a free list;
/// the lowest free range is reused first, which keeps the touched pages few.
#[derive(Debug)]
pub struct Slots {
    start: u64,
    len: u64,
    /// Offset → length of the slots handed out.
    used: BTreeMap<u64, u64>,
}

fn aligned(n: u64) -> Option<u64> {
    n.checked_add(ALIGNMENT - 1).map(|n| n & !(ALIGNMENT - 1))
}

impl Slots {
    /// The half `[start, start + len)`.
    pub fn new(start: u64, len: u64) -> Self {
        Self {
            start,
            len,
            used: BTreeMap::new(),
        }
    }

    /// Whether `slot` lies inside this half.
    pub fn contains(&self, slot: SlotRef) -> bool {
        slot.offset >= self.start
            && slot
                .offset
                .checked_add(slot.length)
                .is_some_and(|end| end <= self.start + self.len)
    }

    /// A free slot of at least `want` bytes, or `None` when none is.
    pub fn alloc(&mut self, want: u64) -> Option<SlotRef> {
        let want = aligned(want.max(1))?;
        let mut at = self.start;
        for (&offset, &length) in &self.used {
            if offset - at >= want {
                break;
            }
            at = aligned(offset + length)?;
        }
        if at.checked_add(want)? > self.start + self.len {
            return None;
        }
        self.used.insert(at, want);
        Some(SlotRef {
            offset: at,
            length: want,
        })
    }

    /// Keeps only the first `keep` bytes of a slot handed out by
    /// [`Slots::alloc`]; the rest is free again.
    pub fn shrink(&mut self, slot: SlotRef, keep: u64) {
        if let (Some(len), Some(keep)) = (self.used.get_mut(&slot.offset), aligned(keep.max(1)))
            && keep < *len
        {
            *len = keep;
        }
    }

    /// Gives a slot back. A slot that was not handed out (as returned by
    /// [`Slots::alloc`] or [`Slots::shrink`]) is the peer's bug: an error.
    pub fn free(&mut self, slot: SlotRef) -> Result<(), String> {
        match self.used.get(&slot.offset) {
            Some(&len) if aligned(slot.length) == Some(len) => {
                self.used.remove(&slot.offset);
                Ok(())
            }
            _ => Err(format!(
                "a release of {} bytes at {}, which is not a slot in use",
                slot.length, slot.offset
            )),
        }
    }

    /// Slots handed out and not given back.
    pub fn in_use(&self) -> usize {
        self.used.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any sequence of allocations, shrinks and frees hands out
        /// aligned slots inside the half that never overlap, and a slot
        /// freed twice or never handed out is refused.
        #[test]
        fn slots_never_overlap(ops in proptest::collection::vec((0u8..3, 1u64..5000, any::<prop::sample::Index>()), 1..200)) {
            let mut s = Slots::new(640, 64 * 300);
            let mut live: Vec<SlotRef> = Vec::new();
            for (op, n, pick) in ops {
                match op {
                    0 => if let Some(slot) = s.alloc(n) {
                        prop_assert!(slot.offset % ALIGNMENT == 0 && slot.length >= n);
                        prop_assert!(s.contains(slot));
                        for other in &live {
                            prop_assert!(slot.offset + slot.length <= other.offset || other.offset + other.length <= slot.offset);
                        }
                        live.push(slot);
                    },
                    1 if !live.is_empty() => {
                        let i = pick.index(live.len());
                        let keep = n.min(live[i].length);
                        s.shrink(live[i], keep);
                        live[i].length = aligned(keep).unwrap().min(live[i].length);
                    }
                    _ if !live.is_empty() => {
                        let slot = live.swap_remove(pick.index(live.len()));
                        prop_assert!(s.free(slot).is_ok());
                        prop_assert!(s.free(slot).is_err());
                    }
                    _ => {}
                }
                prop_assert_eq!(s.in_use(), live.len());
            }
        }
    }

    #[test]
    fn a_full_half_says_so_and_reuses_the_lowest_free_slot() {
        let mut s = Slots::new(0, 256);
        let a = s.alloc(100).unwrap();
        let b = s.alloc(64).unwrap();
        assert_eq!((a.offset, a.length, b.offset), (0, 128, 128));
        assert!(s.alloc(128).is_none());
        s.free(a).unwrap();
        assert_eq!(s.alloc(10).unwrap().offset, 0);
        assert!(
            s.free(SlotRef {
                offset: 192,
                length: 64
            })
            .is_err()
        );
        assert!(!s.contains(SlotRef {
            offset: 200,
            length: 100
        }));
        assert!(!s.contains(SlotRef {
            offset: u64::MAX,
            length: 2
        }));
    }
}
