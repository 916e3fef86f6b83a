//! The Rust side of the `pitboss:policy/types` interface (wit/router.wit),
//! written out instead of generated so that [`WorkerView`] can lower a
//! whole `list<worker-view>` with one borrow of guest memory.
//!
//! Why: wasmtime 48 lowers a record field by field, looking the guest's
//! memory up again for every field; for the seven fields of a worker view
//! that is about 90 ns per worker, four times the whole decision budget at
//! 1,024 workers. Everything else uses wasmtime's derives. wasmtime
//! type-checks these definitions against every component when it is
//! loaded, so a drift from the WIT fails there, loudly.

use wasmtime::component::__internal::{CanonicalAbiInfo, InstanceType, InterfaceType, LowerContext};
use wasmtime::component::{ComponentType, Lift, Lower};

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

/// The lifecycle state of a worker as the router sees it.
#[derive(ComponentType, Lift, Lower, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[component(enum)]
#[repr(u8)]
pub enum WorkerState {
    #[component(name = "starting")]
    Starting,
    #[component(name = "ready")]
    Ready,
    #[component(name = "draining")]
    Draining,
}

/// A snapshot of one worker, taken just before a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerView {
    pub id: u32,
    pub capacity: u32,
    pub in_flight: u32,
    pub served: u64,
    pub age_ms: u64,
    pub rss_bytes: u64,
    pub state: WorkerState,
}

/// What the router learns about the request to place.
#[derive(ComponentType, Lower, Clone, Debug, PartialEq, Eq)]
#[component(record)]
pub struct RequestView {
    pub tool: String,
    pub session: Option<String>,
    #[component(name = "payload-size")]
    pub payload_size: u64,
    pub metadata: Vec<(String, String)>,
}

/// Where a request goes.
#[derive(ComponentType, Lift, Clone, Debug, PartialEq, Eq)]
#[component(variant)]
pub enum Decision {
    #[component(name = "worker")]
    Worker(u32),
    #[component(name = "queue")]
    Queue,
    #[component(name = "reject")]
    Reject(String),
}

/// `worker-view` as wasmtime's derive sees it: the type check, the ABI and
/// single-value lowering of [`WorkerView`] delegate to it.
#[doc(hidden)]
#[derive(ComponentType, Lower, Clone, Copy)]
#[component(record)]
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
    state: WorkerState,
}

impl WorkerView {
    fn record(&self) -> WorkerViewRecord {
        let WorkerView { id, capacity, in_flight, served, age_ms, rss_bytes, state } = *self;
        WorkerViewRecord { id, capacity, in_flight, served, age_ms, rss_bytes, state }
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

// SAFETY: every item delegates to the derived `WorkerViewRecord`, which has
// the same fields in the same order.
unsafe impl ComponentType for WorkerView {
    type Lower = <WorkerViewRecord as ComponentType>::Lower;
    const ABI: CanonicalAbiInfo = <WorkerViewRecord as ComponentType>::ABI;

    fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
        <WorkerViewRecord as ComponentType>::typecheck(ty, types)
    }
}

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
        self.record().linear_lower_to_flat(cx, ty, dst)
    }

    fn linear_lower_to_memory<T>(
        &self,
        cx: &mut LowerContext<'_, T>,
        ty: InterfaceType,
        offset: usize,
    ) -> wasmtime::Result<()> {
        self.record().linear_lower_to_memory(cx, ty, offset)
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
            slot[OFFSET_STATE] = worker.state as u8;
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
