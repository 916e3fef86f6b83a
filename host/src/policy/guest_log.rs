//! Guest stdout/stderr, line by line into the host log, rate-limited so a
//! plugin printing in a loop cannot flood it.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Longest line passed on; the rest of a longer line is dropped.
const MAX_LINE_BYTES: usize = 1000;
/// Bytes a guest may hand over per write call.
const WRITE_BUDGET: usize = 64 * 1024;

/// Lines a policy's instances printed, shared with the pool's router
/// statistics so they outlive any one instance.
#[derive(Default)]
pub(super) struct LogCounters {
    pub(super) emitted: AtomicU64,
    pub(super) dropped: AtomicU64,
}

/// The log sink of one store: both streams share its rate limit.
#[derive(Clone)]
pub(super) struct GuestLog {
    state: Arc<Mutex<LogState>>,
}

struct LogState {
    policy: String,
    lines_per_second: u32,
    window_start: Instant,
    lines_in_window: u32,
    suppressed: u64,
    counters: Arc<LogCounters>,
}

impl GuestLog {
    pub(super) fn new(policy: &str, lines_per_second: u32, counters: Arc<LogCounters>) -> Self {
        GuestLog {
            state: Arc::new(Mutex::new(LogState {
                policy: policy.to_owned(),
                lines_per_second,
                window_start: Instant::now(),
                lines_in_window: 0,
                suppressed: 0,
                counters,
            })),
        }
    }

    pub(super) fn stream(&self, name: &'static str) -> GuestStream {
        GuestStream { log: self.clone(), name, pending: Arc::new(Mutex::new(Vec::new())) }
    }
}

impl LogState {
    fn emit(&mut self, stream: &str, line: &[u8]) {
        let now = Instant::now();
        if now.duration_since(self.window_start) >= Duration::from_secs(1) {
            if self.suppressed > 0 {
                tracing::warn!(target: "pitboss::plugin", policy = %self.policy, suppressed = self.suppressed,
                    "plugin output over {} lines/s was dropped", self.lines_per_second);
                self.suppressed = 0;
            }
            self.window_start = now;
            self.lines_in_window = 0;
        }
        if self.lines_in_window >= self.lines_per_second {
            self.suppressed += 1;
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.lines_in_window += 1;
        self.counters.emitted.fetch_add(1, Ordering::Relaxed);
        let text = String::from_utf8_lossy(line);
        tracing::info!(target: "pitboss::plugin", policy = %self.policy, stream, "{}", text.trim_end());
    }
}

/// One of a store's output streams. wasmtime asks for fresh handles to the
/// same stream; they share the partial-line buffer.
#[derive(Clone)]
pub(super) struct GuestStream {
    log: GuestLog,
    name: &'static str,
    pending: Arc<Mutex<Vec<u8>>>,
}

impl GuestStream {
    fn accept(&self, mut bytes: &[u8]) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(newline) = bytes.iter().position(|&b| b == b'\n') {
            pending.extend_from_slice(&bytes[..newline]);
            self.flush_line(&mut pending);
            bytes = &bytes[newline + 1..];
        }
        pending.extend_from_slice(bytes);
        if pending.len() >= MAX_LINE_BYTES {
            self.flush_line(&mut pending);
        }
    }

    fn flush_line(&self, pending: &mut Vec<u8>) {
        pending.truncate(MAX_LINE_BYTES);
        self.log.state.lock().unwrap_or_else(|e| e.into_inner()).emit(self.name, pending);
        pending.clear();
    }
}

impl IsTerminal for GuestStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for GuestStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.accept(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_BUDGET)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestStream {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for GuestStream {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.accept(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
