//! `builtin:session-affinity`: requests with the same session key go to the
//! same worker while it is ready and has room; requests without a session,
//! or whose worker cannot take them now, go least-loaded. It never errors.
//!
//! Sessions hash onto worker slots ([`WorkerSlots`]), not worker ids
//! (rendezvous hashing over the slot numbers), so a recycled worker hands
//! exactly its own sessions to its replacement and every other session
//! stays where it was. Ids cannot serve as the key: a replacement always
//! gets a new id, and hashing on ids would move a share of every worker's
//! sessions onto it.

use pitboss_guest::{has_spare_capacity, Decision, PoolInfo, RequestView, Router, WorkerSlots, WorkerView};

struct SessionAffinity {
    slots: WorkerSlots,
}

impl Router for SessionAffinity {
    fn init(pool: PoolInfo) -> Result<Self, String> {
        Ok(SessionAffinity { slots: WorkerSlots::new(pool.size) })
    }

    fn route(&mut self, request: &RequestView, workers: &[WorkerView]) -> Decision {
        self.slots.update(workers);
        let Some(session) = &request.session else { return pitboss_guest::decide_least_loaded(workers) };
        let slot = (0..self.slots.len()).max_by_key(|slot| score(session, *slot)).unwrap_or(0);
        match self.slots.worker(slot, workers) {
            Some(worker) if has_spare_capacity(worker) => Decision::Worker(worker.id),
            _ => pitboss_guest::decide_least_loaded(workers),
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
    use pitboss_guest::testing::worker;
    use pitboss_guest::WorkerState;

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
        let info = pitboss_guest::testing::pool(4, &[]);
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
        let mut router = SessionAffinity { slots: WorkerSlots::new(2) };
        let mut workers = vec![worker(0, WorkerState::Ready), worker(1, WorkerState::Ready)];
        let Decision::Worker(home) = router.route(&request("s"), &workers) else { panic!() };
        workers[home as usize].in_flight = 1;
        assert!(matches!(router.route(&request("s"), &workers), Decision::Worker(id) if id == 1 - home));
        let no_session = RequestView { session: None, ..request("s") };
        assert!(matches!(router.route(&no_session, &workers), Decision::Worker(id) if id == 1 - home));
    }
}
