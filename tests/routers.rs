//! The built-in routers on real pools: real workers, the compiled
//! components the binary embeds.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use pitboss::{CallRequest, Host};
use support::{eventually, start_ready};

/// The worker each of 1,000 sessions is served by, called one at a time.
async fn homes(host: &Host) -> HashMap<String, u32> {
    let mut homes = HashMap::new();
    for n in 0..1000 {
        let session = format!("session-{n}");
        let request = CallRequest { session: Some(session.clone()), ..CallRequest::json("noop", "{}") };
        let output = host.execute("pool", request).await.unwrap();
        homes.insert(session, output.worker);
    }
    homes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_affinity_keeps_most_sessions_on_their_worker_through_a_recycle() {
    let dir = tempfile::tempdir().unwrap();
    let config = support::config(dir.path(), "size = 4\nrouter = \"builtin:session-affinity\"");
    let host = start_ready(config).await;

    let before = homes(&host).await;
    for worker in 0..4 {
        let share = before.values().filter(|w| **w == worker).count();
        assert!((150..=350).contains(&share), "worker {worker} serves {share} of 1,000 sessions");
    }
    assert_eq!(homes(&host).await, before, "the same session goes to the same worker");

    host.recycle("pool", 2).await.unwrap();
    let replaced = eventually(Duration::from_secs(30), async || {
        let status = &host.stats().await[0];
        status.ready == 4 && status.draining == 0 && status.workers.iter().all(|w| w.id != 2)
    })
    .await;
    assert!(replaced, "worker 2 was not replaced: {:#?}", host.stats().await);

    let after = homes(&host).await;
    let kept = before.iter().filter(|(session, worker)| after[*session] == **worker).count();
    assert!(kept >= 700, "only {kept} of 1,000 sessions kept their worker");
    let moved_elsewhere = before.iter().filter(|(s, w)| **w != 2 && after[*s] != **w).count();
    assert_eq!(moved_elsewhere, 0, "only the recycled worker's sessions move");
    host.shutdown().await;
}

/// An adapter whose first worker to start is slow: it claims a marker file.
const ONE_SLOW_WORKER: &str = r#"
import os
import time

from pitboss_worker import Adapter, tool


class OneSlow(Adapter):
    thread_safe = True

    def setup(self):
        try:
            os.close(os.open(os.path.join(os.path.dirname(__file__), "slow.claim"), os.O_CREAT | os.O_EXCL))
            self.slow = True
        except FileExistsError:
            self.slow = False

    @tool
    def work(self):
        time.sleep(0.03 if self.slow else 0.002)
        return self.slow
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_latency_sends_less_to_a_slow_worker() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("one_slow.py"), ONE_SLOW_WORKER).unwrap();
    let settings = "size = 4\nrouter = \"builtin:least-latency\"\n[pool.router_options]\nalpha = \"0.5\"";
    let host = std::sync::Arc::new(start_ready(support::config_for(dir.path(), "one_slow:OneSlow", settings)).await);
    let callers: Vec<_> = (0..2)
        .map(|_| {
            let host = host.clone();
            tokio::spawn(async move {
                let mut slow_calls = 0;
                for _ in 0..150 {
                    let output = host.execute("pool", CallRequest::json("work", "{}")).await.unwrap();
                    slow_calls += u32::from(&output.payload[..] == b"true");
                }
                slow_calls
            })
        })
        .collect();
    let mut slow_calls = 0;
    for caller in callers {
        slow_calls += caller.await.unwrap();
    }
    // A fair share would be 75 of 300.
    assert!(slow_calls <= 20, "the slow worker served {slow_calls} of 300 calls");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_tools_pins_a_tool_to_its_slot_across_a_recycle() {
    let dir = tempfile::tempdir().unwrap();
    let settings = "size = 3\nrouter = \"builtin:weighted-tools\"\n[pool.router_options]\n\"ad*\" = \"2\"";
    let host = start_ready(support::config(dir.path(), settings)).await;
    let served_by = async |tool: &str| {
        let args = if tool == "add" { r#"{"a": 1, "b": 2}"# } else { "{}" };
        host.execute("pool", CallRequest::json(tool, args)).await.unwrap().worker
    };
    let pinned = served_by("add").await;
    for _ in 0..10 {
        assert_eq!(served_by("add").await, pinned);
    }
    assert_ne!(served_by("noop").await, pinned, "other tools go least-loaded, to the lowest id");

    host.recycle("pool", pinned).await.unwrap();
    let replaced = eventually(Duration::from_secs(30), async || {
        let status = &host.stats().await[0];
        status.ready == 3 && status.draining == 0 && status.workers.iter().all(|w| w.id != pinned)
    })
    .await;
    assert!(replaced, "{:#?}", host.stats().await);
    let newest = host.stats().await[0].workers.iter().map(|w| w.id).max().unwrap();
    assert_eq!(served_by("add").await, newest, "the replacement inherits the slot");
    host.shutdown().await;
}
