//! The Rust side of the `pitboss:policy/types` interface (wit/router.wit),
//! written out instead of generated. The routing types are the pool's own
//! ([`crate::pool::WorkerView`] and friends, plain Rust); this file teaches
//! wasmtime to pass them to a plugin, through derived mirrors of the same
//! shape, and lowers a whole `list<worker-view>` with one borrow of guest
//! memory.
//!
//! Why the hand-written list lowering: wasmtime 48 lowers a record field
//! by field, looking the guest's memory up again for every field; for the
//! seven fields of a worker view
//! that is about 90 ns per worker, four times the whole decision budget at
//! 1,024 workers. Everything else uses wasmtime's derives. wasmtime
//! type-checks these definitions against every component when it is
//! loaded, so a drift from the WIT fails there, loudly.

// The one file allowed `unsafe`: implementing wasmtime's component traits
// for the pool's types is how the fast lowering above is done.
#![allow(unsafe_code)]

use wasmtime::component::__internal::{CanonicalAbiInfo, InstanceType, InterfaceType, LiftContext, LowerContext};
use wasmtime::component::{ComponentType, Lift, Lower};

pub use crate::pool::{Decision, RequestView, WorkerState, WorkerView};

/// How a pool runs its Python workers.
#[derive(ComponentType, Lift, Lower, Clone, Copy, Debug, PartialEq, Eq)]
#[component(enum)]
#[repr(u8)]
pub enum Profile {
    #[component(name = "process")]
    Process,
    #[component(name = "thread")]
    Thread,
}

/// What a router learns about its pool before the first `route`.
#[derive(ComponentType, Lower, Clone, Debug, PartialEq, Eq)]
#[component(record)]
pub struct PoolInfo {
    pub name: String,
    pub profile: Profile,
    pub size: u32,
    #[component(name = "threads-per-worker")]
    pub threads_per_worker: u32,
    pub options: Vec<(String, String)>,
}

/// The mirror of `worker-state` that wasmtime derives; the pool's
/// [`WorkerState`] lowers through it.
#[derive(ComponentType, Lower, Clone, Copy)]
#[component(enum)]
#[repr(u8)]
#[doc(hidden)]
pub enum WitWorkerState {
    #[component(name = "starting")]
    Starting,
    #[component(name = "ready")]
    Ready,
    #[component(name = "draining")]
    Draining,
}

impl From<WorkerState> for WitWorkerState {
    fn from(state: WorkerState) -> Self {
        match state {
            WorkerState::Starting => WitWorkerState::Starting,
            WorkerState::Ready => WitWorkerState::Ready,
            WorkerState::Draining => WitWorkerState::Draining,
        }
    }
}

/// The mirror of `request-view`, borrowing the pool's [`RequestView`], so
/// lowering a request copies nothing on the host side.
#[derive(ComponentType, Lower)]
#[component(record)]
#[doc(hidden)]
pub struct RequestViewRecord<'a> {
    tool: &'a str,
    session: Option<&'a str>,
    #[component(name = "payload-size")]
    payload_size: u64,
    metadata: &'a [(String, String)],
}

fn request_record(request: &RequestView) -> RequestViewRecord<'_> {
    RequestViewRecord {
        tool: &request.tool,
        session: request.session.as_deref(),
        payload_size: request.payload_size,
        metadata: &request.metadata,
    }
}

/// The mirror of `decision` that wasmtime derives; the pool's
/// [`Decision`] lifts through it.
#[derive(ComponentType, Lift)]
#[component(variant)]
#[doc(hidden)]
pub enum WitDecision {
    #[component(name = "worker")]
    Worker(u32),
    #[component(name = "queue")]
    Queue,
    #[component(name = "reject")]
    Reject(String),
}

impl From<WitDecision> for Decision {
    fn from(decision: WitDecision) -> Self {
        match decision {
            WitDecision::Worker(id) => Decision::Worker(id),
            WitDecision::Queue => Decision::Queue,
            WitDecision::Reject(reason) => Decision::Reject(reason),
        }
    }
}

/// `worker-view` as wasmtime's derive sees it: the type check, the ABI and
/// single-value lowering of [`WorkerView`] delegate to it.
#[derive(ComponentType, Lower, Clone, Copy)]
#[component(record)]
#[doc(hidden)]
pub struct WorkerViewRecord {
    id: u32,
    capacity: u32,
    #[component(name = "in-flight")]
    in_flight: u32,
    served: u64,
    #[component(name = "age-ms")]
    age_ms: u64,
    #[component(name = "rss-bytes")]
    rss_bytes: u64,
    state: WitWorkerState,
}

fn worker_record(worker: &WorkerView) -> WorkerViewRecord {
    let WorkerView { id, capacity, in_flight, served, age_ms, rss_bytes, state } = *worker;
    WorkerViewRecord { id, capacity, in_flight, served, age_ms, rss_bytes, state: state.into() }
}

/// Implements `ComponentType` for a pool type by delegating to its derived
/// mirror, which has the same canonical-ABI shape.
macro_rules! component_type_as {
    ($host:ty => $mirror:ty) => {
        // SAFETY: the mirror is derived from the same WIT type, so its ABI,
        // flat representation and type check are the host type's.
        unsafe impl ComponentType for $host {
            type Lower = <$mirror as ComponentType>::Lower;
            const ABI: CanonicalAbiInfo = <$mirror as ComponentType>::ABI;

            fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
                <$mirror as ComponentType>::typecheck(ty, types)
            }
        }
    };
}

component_type_as!(WorkerState => WitWorkerState);
component_type_as!(RequestView => RequestViewRecord<'static>);
component_type_as!(Decision => WitDecision);
component_type_as!(WorkerView => WorkerViewRecord);

/// Implements `Lower` for a pool type by lowering the mirror `$mirror`
/// makes of it.
macro_rules! lower_as {
    ($host:ty, $mirror:expr) => {
        // SAFETY: lowers exactly what the mirror lowers.
        unsafe impl Lower for $host {
            fn linear_lower_to_flat<T>(
                &self,
                cx: &mut LowerContext<'_, T>,
                ty: InterfaceType,
                dst: &mut std::mem::MaybeUninit<Self::Lower>,
            ) -> wasmtime::Result<()> {
                ($mirror)(self).linear_lower_to_flat(cx, ty, dst)
            }

            fn linear_lower_to_memory<T>(
                &self,
                cx: &mut LowerContext<'_, T>,
                ty: InterfaceType,
                offset: usize,
            ) -> wasmtime::Result<()> {
                ($mirror)(self).linear_lower_to_memory(cx, ty, offset)
            }
        }
    };
}

lower_as!(WorkerState, |state: &WorkerState| WitWorkerState::from(*state));
lower_as!(RequestView, request_record);

// SAFETY: lifts with the mirror, then moves its fields over.
unsafe impl Lift for Decision {
    fn linear_lift_from_flat(cx: &mut LiftContext<'_>, ty: InterfaceType, src: &Self::Lower) -> wasmtime::Result<Self> {
        WitDecision::linear_lift_from_flat(cx, ty, src).map(Decision::from)
    }

    fn linear_lift_from_memory(cx: &mut LiftContext<'_>, ty: InterfaceType, bytes: &[u8]) -> wasmtime::Result<Self> {
        WitDecision::linear_lift_from_memory(cx, ty, bytes).map(Decision::from)
    }
}

/// Canonical-ABI layout of `worker-view`: three u32, padding to 8, three
/// u64, the one-byte enum, padding to 48.
const OFFSET_ID: usize = 0;
const OFFSET_CAPACITY: usize = 4;
const OFFSET_IN_FLIGHT: usize = 8;
const OFFSET_SERVED: usize = 16;
const OFFSET_AGE_MS: usize = 24;
const OFFSET_RSS_BYTES: usize = 32;
const OFFSET_STATE: usize = 40;
const RECORD_SIZE: usize = 48;
const _: () = assert!(<WorkerViewRecord as ComponentType>::SIZE32 == RECORD_SIZE);
const _: () = assert!(<WorkerViewRecord as ComponentType>::ALIGN32 == 8);

// SAFETY: single values delegate to the derived impl; lists write the same
// bytes the derived impl would, at the canonical-ABI offsets asserted above,
// inside the window wasmtime allocated and bounds-checked for the list.
unsafe impl Lower for WorkerView {
    fn linear_lower_to_flat<T>(
        &self,
        cx: &mut LowerContext<'_, T>,
        ty: InterfaceType,
        dst: &mut std::mem::MaybeUninit<Self::Lower>,
    ) -> wasmtime::Result<()> {
        worker_record(self).linear_lower_to_flat(cx, ty, dst)
    }

    fn linear_lower_to_memory<T>(
        &self,
        cx: &mut LowerContext<'_, T>,
        ty: InterfaceType,
        offset: usize,
    ) -> wasmtime::Result<()> {
        worker_record(self).linear_lower_to_memory(cx, ty, offset)
    }

    fn linear_store_list_to_memory<T>(
        cx: &mut LowerContext<'_, T>,
        _ty: InterfaceType,
        offset: usize,
        items: &[Self],
    ) -> wasmtime::Result<()> {
        let window = &mut cx.as_slice_mut()[offset..][..items.len() * RECORD_SIZE];
        for (slot, worker) in window.chunks_exact_mut(RECORD_SIZE).zip(items) {
            slot[OFFSET_ID..][..4].copy_from_slice(&worker.id.to_le_bytes());
            slot[OFFSET_CAPACITY..][..4].copy_from_slice(&worker.capacity.to_le_bytes());
            slot[OFFSET_IN_FLIGHT..][..4].copy_from_slice(&worker.in_flight.to_le_bytes());
            slot[OFFSET_SERVED..][..8].copy_from_slice(&worker.served.to_le_bytes());
            slot[OFFSET_AGE_MS..][..8].copy_from_slice(&worker.age_ms.to_le_bytes());
            slot[OFFSET_RSS_BYTES..][..8].copy_from_slice(&worker.rss_bytes.to_le_bytes());
            slot[OFFSET_STATE] = WitWorkerState::from(worker.state) as u8;
        }
        Ok(())
    }
}

// What bindgen expects of a remapped interface. `types` holds no
// functions: linking it only declares the instance the component imports.

pub trait HostWithStore<T>: wasmtime::component::HasData {}

impl<H: ?Sized + wasmtime::component::HasData, T> HostWithStore<T> for H {}

pub trait Host {}

impl<H: ?Sized> Host for H {}

pub fn add_to_linker<T, D>(
    linker: &mut wasmtime::component::Linker<T>,
    _host_getter: fn(&mut T) -> D::Data<'_>,
) -> wasmtime::Result<()>
where
    D: HostWithStore<T>,
    T: 'static,
{
    linker.instance("pitboss:policy/types@0.1.0")?;
    Ok(())
}
