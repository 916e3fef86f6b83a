//! What can go wrong in a call into a policy component ([`PolicyFault`]),
//! classified from the trap wasmtime reports, never from its text.
//!
//! Must not decide what happens after a fault: each policy kind does.

use std::fmt;

use wasmtime::{Store, Trap};

use super::engine::PolicyState;

/// What went wrong in a policy call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// The guest trapped (a panic, `unreachable`, a bad memory access...).
    Trap,
    /// The call outlived its wall-clock deadline.
    Deadline,
    /// The call used up its fuel (instruction budget).
    FuelExhausted,
    /// The guest tried to grow memory past its cap.
    OutOfMemory,
    /// The guest overflowed its stack (deep recursion).
    StackOverflow,
    /// The decision named a worker that is unknown, full, starting or
    /// draining.
    InvalidDecision,
    /// `init` returned an error: the policy refuses this pool.
    InitRejected,
    /// A rules plugin answered something the contract does not allow (an
    /// empty field path, a finding missing for a library).
    InvalidAnswer,
}

impl FaultKind {
    pub const ALL: [FaultKind; 8] = [
        FaultKind::Trap,
        FaultKind::Deadline,
        FaultKind::FuelExhausted,
        FaultKind::OutOfMemory,
        FaultKind::StackOverflow,
        FaultKind::InvalidDecision,
        FaultKind::InitRejected,
        FaultKind::InvalidAnswer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Trap => "trap",
            FaultKind::Deadline => "deadline",
            FaultKind::FuelExhausted => "fuel_exhausted",
            FaultKind::OutOfMemory => "out_of_memory",
            FaultKind::StackOverflow => "stack_overflow",
            FaultKind::InvalidDecision => "invalid_decision",
            FaultKind::InitRejected => "init_rejected",
            FaultKind::InvalidAnswer => "invalid_answer",
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A fault with its explanation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyFault {
    pub kind: FaultKind,
    pub detail: String,
}

impl PolicyFault {
    pub(super) fn from_call(err: &wasmtime::Error, store: &Store<PolicyState>, during: &str) -> Self {
        let kind = if store.data().memory.refused {
            FaultKind::OutOfMemory
        } else {
            match err.downcast_ref::<Trap>() {
                Some(Trap::Interrupt) => FaultKind::Deadline,
                Some(Trap::OutOfFuel) => FaultKind::FuelExhausted,
                Some(Trap::StackOverflow) => FaultKind::StackOverflow,
                _ => FaultKind::Trap,
            }
        };
        let mut detail = format!("during {during}: {err:#}");
        detail.truncate(detail.floor_char_boundary(2000));
        PolicyFault { kind, detail }
    }
}

impl fmt::Display for PolicyFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}
