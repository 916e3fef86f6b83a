//! [`WorkerSlots`]: stable positions for a pool's workers. Worker ids never
//! repeat (a recycled worker's replacement gets a new one), so a policy
//! that keys anything on "which worker" — session affinity, tools pinned
//! to some workers — keys it on a slot instead: a worker holds its slot
//! until it drains or goes, and its replacement takes the freed slot.

use crate::{WorkerState, WorkerView};

/// One slot per worker of the pool (its configured size).
#[derive(Clone, Debug)]
pub struct WorkerSlots {
    /// The worker id holding each slot; `None` while the slot is free.
    slots: Vec<Option<u32>>,
    /// The serving workers the slots were last assigned for (ids of those
    /// not draining, in order): reassigning runs only when this changes.
    seen: Vec<u32>,
}

impl WorkerSlots {
    /// `size` slots, all free (`PoolInfo::size`; at least one).
    pub fn new(size: u32) -> Self {
        WorkerSlots { slots: vec![None; size.max(1) as usize], seen: Vec::new() }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Brings the slots up to date with `workers` (as the host passes them,
    /// in id order): the slots of workers that are draining or gone are
    /// freed, then each serving worker without a slot takes the first free
    /// one. A replacement that starts while the worker it replaces still
    /// serves waits for that slot, so the number of slots, and with it
    /// anything hashed onto them, never changes. Cheap when nothing changed.
    pub fn update(&mut self, workers: &[WorkerView]) {
        let serving = workers.iter().filter(|w| w.state != WorkerState::Draining).map(|w| w.id);
        if serving.clone().eq(self.seen.iter().copied()) {
            return;
        }
        self.seen = serving.collect();
        let seen = &self.seen;
        for slot in &mut self.slots {
            if slot.is_some_and(|id| seen.binary_search(&id).is_err()) {
                *slot = None;
            }
        }
        let mut held: Vec<u32> = self.slots.iter().flatten().copied().collect();
        held.sort_unstable();
        for id in &self.seen {
            if held.binary_search(id).is_ok() {
                continue;
            }
            if let Some(free) = self.slots.iter_mut().find(|slot| slot.is_none()) {
                *free = Some(*id);
            }
        }
    }

    /// The worker in `slot` now, looked up in `workers` (in id order).
    pub fn worker<'w>(&self, slot: usize, workers: &'w [WorkerView]) -> Option<&'w WorkerView> {
        let id = self.slots.get(slot).copied().flatten()?;
        workers.binary_search_by_key(&id, |w| w.id).ok().map(|index| &workers[index])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::worker;

    #[test]
    fn a_replacement_takes_the_slot_of_the_worker_it_replaces() {
        let mut slots = WorkerSlots::new(3);
        let ready = |ids: &[u32]| ids.iter().map(|id| worker(*id, WorkerState::Ready)).collect::<Vec<_>>();
        let first = ready(&[0, 1, 2]);
        slots.update(&first);
        let ids = |slots: &WorkerSlots, workers: &[WorkerView]| {
            (0..3).map(|slot| slots.worker(slot, workers).map(|w| w.id)).collect::<Vec<_>>()
        };
        assert_eq!(ids(&slots, &first), [Some(0), Some(1), Some(2)]);
        let overlap = [&first[..], &[worker(3, WorkerState::Starting)]].concat();
        slots.update(&overlap);
        assert_eq!(ids(&slots, &overlap), [Some(0), Some(1), Some(2)], "the newcomer waits");
        let draining = [
            worker(0, WorkerState::Ready),
            worker(1, WorkerState::Draining),
            worker(2, WorkerState::Ready),
            worker(3, WorkerState::Starting),
        ];
        slots.update(&draining);
        assert_eq!(ids(&slots, &draining), [Some(0), Some(3), Some(2)]);
    }
}
