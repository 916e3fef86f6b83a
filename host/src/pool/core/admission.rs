//! Admission: a request is refused, queued or placed; placed calls carry a
//! deadline, and their outcome frees the worker again.

use std::time::Instant;

use super::{Caller, Completion, Core, Effect, Queued, Sent, Worker};
use crate::config::Profile;
use crate::pool::call::{CallError, CallRequest, ErrorKind};
use crate::pool::lifecycle::Reason;
use crate::pool::routing::{has_room, least_loaded, Decision, RequestView, WorkerState, WorkerView};

impl<R: Caller> Core<R> {
    pub(super) fn submit(&mut self, request: CallRequest, reply: R, avoid: Option<u32>, now: Instant) {
        if self.shutdown.is_some() {
            self.fail(reply, self.shutting_down());
            return;
        }
        if let Some(tools) = &self.tools {
            if !tools.contains(&request.tool) {
                let message = format!(
                    "pool `{}` has no tool `{}`; its tools are: {}",
                    self.config.name,
                    request.tool,
                    tools.join(", ")
                );
                self.fail(reply, CallError::new(ErrorKind::UnknownTool, message));
                return;
            }
        }
        // A call sent again (a retry, or one its worker died before
        // starting) was accepted once already: it is not refused as
        // saturated now, and goes ahead of the calls that came after it.
        let sent_again = avoid.is_some();
        if !sent_again && self.queue.len() >= self.config.queue_limit && !self.queue.is_empty() {
            self.fail(reply, self.saturated());
            return;
        }
        let queued = Queued { request, reply, deadline: now + self.config.queue_timeout, enqueued_at: now, avoid };
        // Otherwise behind anything already waiting, so the queue stays in
        // order; the router places it now if it can.
        if sent_again {
            self.queue.push_front(queued);
        } else {
            self.queue.push_back(queued);
        }
        self.pump(now);
        if self.config.queue_limit == 0 && !sent_again {
            if let Some(unplaced) = self.queue.pop_back() {
                self.fail(unplaced.reply, self.saturated());
            }
        }
    }

    pub(super) fn fail(&mut self, reply: R, error: CallError) {
        *self.errors.entry(error.kind).or_default() += 1;
        self.effects.push(Effect::Fail { reply, error });
    }

    pub(super) fn shutting_down(&self) -> CallError {
        CallError::new(ErrorKind::ShuttingDown, format!("pool `{}` is shutting down", self.config.name))
    }

    fn saturated(&self) -> CallError {
        CallError::new(
            ErrorKind::Saturated,
            format!(
                "pool `{}` is saturated: every worker is busy and {} requests are queued (queue_limit)",
                self.config.name,
                self.queue.len()
            ),
        )
    }

    /// Places queued requests, oldest first, while the router finds workers.
    pub(super) fn pump(&mut self, now: Instant) {
        while let Some(front) = self.queue.front() {
            if front.reply.has_left() {
                self.queue.pop_front();
                continue;
            }
            let avoid = front.avoid;
            let view = RequestView {
                tool: front.request.tool.clone(),
                session: front.request.session.clone(),
                payload_size: front.request.payload.len() as u64,
                metadata: front.request.metadata.clone(),
            };
            match self.decide(&view, avoid, now) {
                Decision::Worker(id) => {
                    let queued = self.queue.pop_front().expect("front exists");
                    self.dispatch(id, queued, now);
                }
                Decision::Queue => break,
                Decision::Reject(reason) => {
                    let queued = self.queue.pop_front().expect("front exists");
                    self.fail(queued.reply, CallError::new(ErrorKind::Rejected, reason));
                }
            }
        }
    }

    /// Asks the router where `request` goes, showing it every worker (a
    /// retry's `avoid` as draining, so it lands elsewhere).
    fn decide(&mut self, request: &RequestView, avoid: Option<u32>, now: Instant) -> Decision {
        let capacity = self.threads().saturating_add(self.reserve());
        self.views.clear();
        self.views.extend(self.workers.iter().map(|w| WorkerView {
            id: w.id,
            capacity,
            in_flight: w.in_flight(),
            served: w.served,
            age_ms: now.duration_since(w.spawned_at).as_millis() as u64,
            rss_bytes: w.rss_bytes,
            state: if Some(w.id) == avoid { WorkerState::Draining } else { w.router_state() },
        }));
        match self.router.route(request, &self.views) {
            // A router behind the trait may be any code: the table stays
            // consistent whatever it answers.
            Decision::Worker(id) if !self.views.iter().any(|w| w.id == id && has_room(w)) => {
                tracing::error!(pool = %self.config.name, worker = id,
                    "the router chose a worker that cannot take a call; placing it by least-loaded instead");
                least_loaded(&self.views)
            }
            decision => decision,
        }
    }

    fn dispatch(&mut self, worker_id: u32, queued: Queued<R>, now: Instant) {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let Queued { request, reply, enqueued_at, .. } = queued;
        let retry =
            reply.attempt() <= self.config.retries && !reply.streams() && self.idempotent.contains(&request.tool);
        // A caller may ask for less time than the pool allows, never more.
        let timeout =
            request.timeout.map_or(self.config.request_timeout, |asked| asked.min(self.config.request_timeout));
        let worker = self.worker_mut(worker_id).expect("decide only answers with workers that have room");
        worker.sent.push_back(Sent { request_id, timeout, deadline: None });
        worker.dispatched += 1;
        let used_up = worker.limits.calls_used_up(worker.dispatched);
        let nearly_used_up = worker.limits.calls_nearly_used_up(worker.dispatched);
        self.arm_started(worker_id, now);
        let queued = now.duration_since(enqueued_at);
        self.effects.push(Effect::Call { worker: worker_id, request_id, request, reply, timeout, queued, retry });
        if used_up {
            self.retire(worker_id, Reason::MaxRequests, now);
        } else if nearly_used_up {
            self.prestart_successor(worker_id, now);
        }
    }

    /// Starts the request timeout of each call on `worker_id` that may have
    /// started by `now`: its `threads` oldest. A process worker's thread
    /// takes the next call as it sends an answer, so the call behind starts
    /// when the core hears of that answer, give or take the answer's trip.
    fn arm_started(&mut self, worker_id: u32, now: Instant) {
        let threads = self.threads() as usize;
        let Some(worker) = self.workers.iter_mut().find(|w| w.id == worker_id) else { return };
        for sent in worker.sent.iter_mut().take(threads).filter(|sent| sent.deadline.is_none()) {
            let deadline = now + sent.timeout;
            sent.deadline = Some(deadline);
            self.call_deadlines.insert((deadline, sent.request_id, worker_id));
        }
    }

    /// Takes call `request_id` off `worker_id` with its deadline, and
    /// starts the clock of the call that moves up in its place.
    fn take_off(&mut self, worker_id: u32, request_id: u64, now: Instant) {
        let Some(worker) = self.workers.iter_mut().find(|w| w.id == worker_id) else { return };
        let Some(position) = worker.sent.iter().position(|sent| sent.request_id == request_id) else { return };
        let sent = worker.sent.remove(position).expect("the position exists");
        if let Some(deadline) = sent.deadline {
            self.call_deadlines.remove(&(deadline, request_id, worker_id));
        }
        self.arm_started(worker_id, now);
    }

    /// Forgets the deadlines of the calls on a worker that is gone; their
    /// outcomes come from its driver.
    pub(super) fn forget_calls(&mut self, worker: &Worker) {
        for sent in &worker.sent {
            if let Some(deadline) = sent.deadline {
                self.call_deadlines.remove(&(deadline, sent.request_id, worker.id));
            }
        }
    }

    pub(super) fn finished(&mut self, call: Completion, now: Instant) {
        let Completion { worker: worker_id, request_id, tool, error, latency, timed_out, started } = call;
        self.take_off(worker_id, request_id, now);
        if !started {
            // Its worker is gone: the call comes back as a new submission.
            if let Some(worker) = self.worker_mut(worker_id) {
                worker.lost = true;
            }
            self.advance_recycles(now);
            return;
        }
        self.served += 1;
        let ok = error.is_none();
        match &error {
            None => self.backoff.reset(),
            Some(error) => {
                self.failed += 1;
                *self.errors.entry(error.kind).or_default() += 1;
            }
        }
        if let Some(worker) = self.worker_mut(worker_id) {
            worker.served += 1;
            if let Some(error) = error {
                worker.lost |= error.kind == ErrorKind::WorkerCrashed;
                worker.last_error = Some(format!("{}: {}", error.kind.as_str(), error.message));
            }
        }
        // A worker that overran may still be computing the abandoned call
        // (its late answer is dropped: request ids are never reused). A
        // process worker is killed at once; a thread worker drains, so its
        // other calls finish, and the stop steps end the stuck one.
        if timed_out {
            match self.profile {
                Profile::Process => self.kill(worker_id, Reason::Timeout),
                Profile::Thread => self.retire(worker_id, Reason::Timeout, now),
            }
        }
        self.router.on_complete(worker_id, &tool, ok, latency);
        self.advance_recycles(now);
        self.pump(now);
    }

    /// Gives up on calls past their request timeout: the driver abandons
    /// each, its caller gets a timeout error, and the [`super::Input::Finished`]
    /// that follows retires the worker. A call that ended meanwhile is left
    /// alone.
    pub(super) fn expire_calls(&mut self, now: Instant) {
        while let Some(&(deadline, request_id, worker)) = self.call_deadlines.first() {
            if deadline > now {
                break;
            }
            self.call_deadlines.pop_first();
            if self.worker(worker).is_some_and(|w| w.has_started()) {
                self.effects.push(Effect::Abandon { worker, request_id });
            }
        }
    }

    pub(super) fn expire_queue(&mut self, now: Instant) {
        while self.queue.front().is_some_and(|q| q.deadline <= now) {
            let queued = self.queue.pop_front().expect("front exists");
            let message = format!(
                "no worker of pool `{}` took the request within {:?} (queue_timeout)",
                self.config.name, self.config.queue_timeout
            );
            self.fail(queued.reply, CallError::new(ErrorKind::QueueTimeout, message));
        }
    }
}
