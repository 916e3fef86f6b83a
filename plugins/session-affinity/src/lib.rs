//! `builtin:session-affinity`: requests with the same session key go to the
//! same worker while it is ready and has room; requests without a session,
//! or whose worker cannot take them now, go least-loaded. It never errors.
//!
//! Sessions hash onto *slots*, not worker ids (rendezvous hashing over the
//! slot numbers). A worker holds a slot from when the policy first sees it
//! until it is draining or gone; its replacement takes the freed slot. So a
//! recycled worker hands exactly its own sessions to its replacement, and
//! every other session stays where it was. Ids cannot serve as the key:
//! a replacement always gets a new id, and hashing on ids would move a
//! share of every worker's sessions onto it.

use pitboss_guest::{has_spare_capacity, Decision, PoolInfo, RequestView, Router, WorkerState, WorkerView};

struct SessionAffinity {
    /// The worker id holding each slot; `None` while the slot is free.
    slots: Vec<Option<u32>>,
    /// The serving workers the slots were last assigned for (ids of those
    /// not draining, in order): reassigning runs only when this changes.
    seen: Vec<u32>,
}

impl Router for SessionAffinity {
    fn init(pool: PoolInfo) -> Result<Self, String> {
        Ok(SessionAffinity { slots: vec![None; pool.size.max(1) as usize], seen: Vec::new() })
    }

    fn route(&mut self, request: &RequestView, workers: &[WorkerView]) -> Decision {
        self.assign_slots(workers);
        let Some(session) = &request.session else { return pitboss_guest::decide_least_loaded(workers) };
        let slot = (0..self.slots.len()).max_by_key(|slot| score(session, *slot)).unwrap_or(0);
        // The host lists workers in id order.
        let preferred = self
            .slots
            .get(slot)
            .copied()
            .flatten()
            .and_then(|id| workers.binary_search_by_key(&id, |w| w.id).ok().map(|index| &workers[index]));
        match preferred {
            Some(worker) if has_spare_capacity(worker) => Decision::Worker(worker.id),
            _ => pitboss_guest::decide_least_loaded(workers),
        }
    }
}

impl SessionAffinity {
    /// Frees the slots of workers that are draining or gone, then gives each
    /// worker without a slot the first free one. There are as many slots as
    /// the pool's size: a replacement that starts while the worker it
    /// replaces still serves waits for that slot (and gets only
    /// least-loaded traffic meanwhile), so the slot count, and with it
    /// every session's slot, never changes.
    fn assign_slots(&mut self, workers: &[WorkerView]) {
        let serving = workers.iter().filter(|w| w.state != WorkerState::Draining).map(|w| w.id);
        if serving.clone().eq(self.seen.iter().copied()) {
            return;
        }
        self.seen = serving.collect();
        let serves = |id: u32| self.seen.binary_search(&id).is_ok();
        for slot in &mut self.slots {
            if slot.is_some_and(|id| !serves(id)) {
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
}

/// Rendezvous weight of `slot` for `session`: FNV-1a over both, then a
/// final mix so that nearby slot numbers spread.
fn score(session: &str, slot: usize) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in session.bytes().chain((slot as u64).to_le_bytes()) {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^ (hash >> 33)
}

pitboss_guest::export_router!(SessionAffinity);

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(id: u32, state: WorkerState) -> WorkerView {
        WorkerView { id, capacity: 1, in_flight: 0, served: 0, age_ms: 0, rss_bytes: 0, state }
    }

    fn request(session: &str) -> RequestView {
        RequestView { tool: "t".into(), session: Some(session.into()), payload_size: 0, metadata: Vec::new() }
    }

    fn place(router: &mut SessionAffinity, workers: &[WorkerView]) -> Vec<u32> {
        (0..1000)
            .map(|n| match router.route(&request(&format!("session-{n}")), workers) {
                Decision::Worker(id) => id,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_recycled_worker_hands_only_its_sessions_to_its_replacement() {
        let info = PoolInfo {
            name: "p".into(),
            profile: pitboss_guest::Profile::Process,
            size: 4,
            threads_per_worker: 1,
            options: Vec::new(),
        };
        let mut router = SessionAffinity::init(info).unwrap();
        let before = place(&mut router, &(0..4).map(|id| worker(id, WorkerState::Ready)).collect::<Vec<_>>());
        for id in 0..4 {
            let share = before.iter().filter(|w| **w == id).count();
            assert!((150..=350).contains(&share), "worker {id} has {share} of 1000 sessions");
        }
        // The replacement 4 starts while 2 still serves, then 2 drains, then
        // it is gone.
        let overlap = [0, 1, 2, 3].map(|id| worker(id, WorkerState::Ready));
        let starting = [&overlap[..], &[worker(4, WorkerState::Starting)]].concat();
        assert_eq!(place(&mut router, &starting), before, "a starting replacement moves nothing");
        let recycling = [
            worker(0, WorkerState::Ready),
            worker(1, WorkerState::Ready),
            worker(2, WorkerState::Draining),
            worker(3, WorkerState::Ready),
            worker(4, WorkerState::Starting),
        ];
        place(&mut router, &recycling);
        let after = place(&mut router, &[0, 1, 3, 4].map(|id| worker(id, WorkerState::Ready)));
        for (was, is) in before.iter().zip(&after) {
            assert_eq!(*is, if *was == 2 { 4 } else { *was });
        }
    }

    #[test]
    fn a_full_preferred_worker_sends_the_request_least_loaded() {
        let mut router = SessionAffinity { slots: vec![None; 2], seen: Vec::new() };
        let mut workers = vec![worker(0, WorkerState::Ready), worker(1, WorkerState::Ready)];
        let Decision::Worker(home) = router.route(&request("s"), &workers) else { panic!() };
        workers[home as usize].in_flight = 1;
        assert!(matches!(router.route(&request("s"), &workers), Decision::Worker(id) if id == 1 - home));
        let no_session = RequestView { session: None, ..request("s") };
        assert!(matches!(router.route(&no_session, &workers), Decision::Worker(id) if id == 1 - home));
    }
}
