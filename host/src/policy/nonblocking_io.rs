//! `wasi:io/streams` and `wasi:io/poll` for policies, replacing
//! wasmtime-wasi's synchronous ones, which enter a tokio runtime with
//! `block_on` and so panic when called from a tokio task, where every pool
//! dispatcher runs. Without this, a plugin that prints a line (or panics,
//! which prints) would take its pool down.
//!
//! A policy's streams are its stdout and stderr (the host log, which never
//! blocks) and a closed stdin, so the "blocking" stream calls finish at
//! once: a write the stream can take now is done in place; the rest run
//! wasmtime-wasi's own code on a short-lived thread outside the runtime. Waiting on a pollable (a sleep, a blocked read) is refused
//! with a trap: a policy decides from its inputs, it never waits.

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime::format_err;
use wasmtime_wasi::p2::bindings::sync::io::{poll, streams};
use wasmtime_wasi::p2::{DynPollable, StreamError, StreamResult};

use super::engine::PolicyState;

type InputStream = streams::InputStream;
type OutputStream = streams::OutputStream;

/// Replaces the stream and poll functions of `linker` (which already has
/// wasmtime-wasi's) with these.
pub(super) fn add_to_linker(linker: &mut Linker<PolicyState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    streams::add_to_linker::<PolicyState, PolicyIo>(linker, |state| NonBlocking(state.table()))?;
    poll::add_to_linker::<PolicyState, PolicyIo>(linker, |state| NonBlocking(state.table()))?;
    linker.allow_shadowing(false);
    Ok(())
}

struct PolicyIo;

impl HasData for PolicyIo {
    type Data<'a> = NonBlocking<'a>;
}

struct NonBlocking<'a>(&'a mut ResourceTable);

impl NonBlocking<'_> {
    /// Runs `call` on a thread outside any tokio runtime, where
    /// wasmtime-wasi's synchronous code may enter its own.
    fn off_runtime<R: Send>(&mut self, call: impl FnOnce(&mut ResourceTable) -> R + Send) -> R {
        let table = &mut *self.0;
        std::thread::scope(|scope| scope.spawn(move || call(table)).join().expect("a WASI stream call panicked"))
    }
}

fn refuse_wait(what: &str) -> wasmtime::Error {
    format_err!(
        "the policy waited on {what}; a policy may not block (no sleeps, no waiting reads): it decides from its inputs"
    )
}

impl streams::Host for NonBlocking<'_> {
    fn convert_stream_error(&mut self, err: StreamError) -> wasmtime::Result<streams::StreamError> {
        streams::Host::convert_stream_error(self.0, err)
    }
}

impl streams::HostOutputStream for NonBlocking<'_> {
    fn drop(&mut self, stream: Resource<OutputStream>) -> wasmtime::Result<()> {
        // A policy's output streams write synchronously: nothing is left in
        // flight to cancel, so dropping is deleting.
        self.0.delete(stream)?;
        Ok(())
    }

    fn check_write(&mut self, stream: Resource<OutputStream>) -> StreamResult<u64> {
        streams::HostOutputStream::check_write(self.0, stream)
    }

    fn write(&mut self, stream: Resource<OutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        streams::HostOutputStream::write(self.0, stream, bytes)
    }

    fn blocking_write_and_flush(&mut self, stream: Resource<OutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        // The host log takes any line at once: write it here, no thread.
        let ready = self.0.get_mut(&stream).map_err(|err| StreamError::Trap(err.into()))?;
        if bytes.len() <= 4096 && ready.check_write()? >= bytes.len() {
            ready.write(bytes.into())?;
            return ready.flush();
        }
        self.off_runtime(|table| streams::HostOutputStream::blocking_write_and_flush(table, stream, bytes))
    }

    fn blocking_write_zeroes_and_flush(&mut self, stream: Resource<OutputStream>, len: u64) -> StreamResult<()> {
        self.off_runtime(|table| streams::HostOutputStream::blocking_write_zeroes_and_flush(table, stream, len))
    }

    fn subscribe(&mut self, stream: Resource<OutputStream>) -> wasmtime::Result<Resource<DynPollable>> {
        streams::HostOutputStream::subscribe(self.0, stream)
    }

    fn write_zeroes(&mut self, stream: Resource<OutputStream>, len: u64) -> StreamResult<()> {
        streams::HostOutputStream::write_zeroes(self.0, stream, len)
    }

    fn flush(&mut self, stream: Resource<OutputStream>) -> StreamResult<()> {
        streams::HostOutputStream::flush(self.0, stream)
    }

    fn blocking_flush(&mut self, stream: Resource<OutputStream>) -> StreamResult<()> {
        // The host log flushes synchronously: done when `flush` returns.
        self.0.get_mut(&stream).map_err(|err| StreamError::Trap(err.into()))?.flush()
    }

    fn splice(&mut self, dst: Resource<OutputStream>, src: Resource<InputStream>, len: u64) -> StreamResult<u64> {
        streams::HostOutputStream::splice(self.0, dst, src, len)
    }

    fn blocking_splice(
        &mut self,
        _dst: Resource<OutputStream>,
        _src: Resource<InputStream>,
        _len: u64,
    ) -> StreamResult<u64> {
        Err(StreamError::Trap(refuse_wait("output-stream.blocking-splice")))
    }
}

impl streams::HostInputStream for NonBlocking<'_> {
    fn drop(&mut self, stream: Resource<InputStream>) -> wasmtime::Result<()> {
        // A policy's only input stream is its closed stdin.
        self.0.delete(stream)?;
        Ok(())
    }

    fn read(&mut self, stream: Resource<InputStream>, len: u64) -> StreamResult<Vec<u8>> {
        streams::HostInputStream::read(self.0, stream, len)
    }

    fn blocking_read(&mut self, _stream: Resource<InputStream>, _len: u64) -> StreamResult<Vec<u8>> {
        Err(StreamError::Trap(refuse_wait("input-stream.blocking-read")))
    }

    fn skip(&mut self, stream: Resource<InputStream>, len: u64) -> StreamResult<u64> {
        streams::HostInputStream::skip(self.0, stream, len)
    }

    fn blocking_skip(&mut self, _stream: Resource<InputStream>, _len: u64) -> StreamResult<u64> {
        Err(StreamError::Trap(refuse_wait("input-stream.blocking-skip")))
    }

    fn subscribe(&mut self, stream: Resource<InputStream>) -> wasmtime::Result<Resource<DynPollable>> {
        streams::HostInputStream::subscribe(self.0, stream)
    }
}

impl poll::Host for NonBlocking<'_> {
    fn poll(&mut self, _pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        Err(refuse_wait("poll"))
    }
}

impl poll::HostPollable for NonBlocking<'_> {
    fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        self.off_runtime(|table| poll::HostPollable::ready(table, pollable))
    }

    fn block(&mut self, _pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        Err(refuse_wait("pollable.block"))
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        poll::HostPollable::drop(self.0, pollable)
    }
}
