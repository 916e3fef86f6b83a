//! [`AdminClient`]: a running host's `Admin` service on its admin address,
//! as plain library types, for the CLI's operator commands and for Rust
//! programs run by the host's user.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::proto::{self, admin_client};
use crate::config::AdminAddress;
use crate::host::{PolicyKind, PoolPolicies};
use crate::policy::{Divergence, PluginMeta, PolicyVersion, ReplayReport, SwapOptions, SwapReport, SwapStage};
use crate::pool::{AdminError, Decision};

/// One connection to a host's admin socket; cheap to clone.
#[derive(Clone)]
pub struct AdminClient {
    admin: admin_client::AdminClient<Channel>,
}

/// A candidate for [`AdminClient::swap_router`].
pub enum Component {
    /// Bytes sent to the host (read here, so the host needs no access).
    Bytes { label: String, wasm: Vec<u8> },
    /// A file the host reads itself.
    Path(PathBuf),
}

impl AdminClient {
    /// Connects to the admin address (a socket path or a TCP address); one
    /// that cannot be reached is an error naming it.
    pub async fn connect(address: &AdminAddress) -> Result<AdminClient> {
        let unreachable = || {
            format!(
                "cannot reach the pitboss admin address {address} (is `pitboss serve` running, as this user? \
                 host.admin_address or --admin-socket names it)"
            )
        };
        let channel = match address {
            AdminAddress::Tcp(tcp) => {
                Endpoint::from_shared(format!("http://{tcp}"))?.connect().await.with_context(unreachable)?
            }
            AdminAddress::Unix(path) => {
                let socket = path.clone();
                // The URI is required by the transport but unused: the
                // connector below decides where the connection goes.
                Endpoint::from_static("http://admin.sock")
                    .connect_with_connector(tower::service_fn(move |_| {
                        let socket = socket.clone();
                        async move { UnixStream::connect(socket).await.map(TokioIo::new) }
                    }))
                    .await
                    .with_context(unreachable)?
            }
        };
        Ok(AdminClient { admin: admin_client::AdminClient::new(channel) })
    }

    /// Recycles one worker, as [`crate::Host::recycle`] would.
    pub async fn recycle(&mut self, pool: &str, worker: u32) -> Result<(), AdminError> {
        let request = proto::RecycleWorkerRequest { pool: pool.to_owned(), worker };
        self.admin.recycle_worker(request).await.map_err(admin_error)?;
        Ok(())
    }

    /// Every policy's history, as [`crate::Host::policies`].
    pub async fn policies(&mut self) -> Result<Vec<PoolPolicies>, AdminError> {
        let pools = self.admin.list_policies(proto::ListPoliciesRequest {}).await.map_err(admin_error)?;
        Ok(pools
            .into_inner()
            .pools
            .into_iter()
            .map(|pool| PoolPolicies {
                kind: super::admin::kind_from_proto(pool.kind).unwrap_or(PolicyKind::Router),
                pool: pool.pool,
                history: pool.history.into_iter().map(version).collect(),
                can_roll_back: pool.can_roll_back,
            })
            .collect())
    }

    /// Runs a candidate through the host's swap pipeline for `kind`, as
    /// [`crate::Host::swap_router`] or [`crate::Host::swap_rules`] (with an
    /// empty `pool`).
    pub async fn swap(
        &mut self,
        kind: PolicyKind,
        pool: &str,
        component: Component,
        options: SwapOptions,
    ) -> Result<SwapReport, AdminError> {
        let (label, component) = match component {
            Component::Bytes { label, wasm } => (label, proto::swap_policy_request::Component::Wasm(wasm)),
            Component::Path(path) => {
                (String::new(), proto::swap_policy_request::Component::Path(path.display().to_string()))
            }
        };
        let request = proto::SwapPolicyRequest {
            pool: pool.to_owned(),
            kind: super::admin::kind_to_proto(kind) as i32,
            component: Some(component),
            dry_run: options.dry_run,
            expected_sha256: options.expected_sha256.unwrap_or_default(),
            requested_by: options.requested_by,
            label,
            set_options: options.router_options.is_some(),
            options: options.router_options.unwrap_or_default().into_iter().collect(),
        };
        let answer = self.admin.swap_policy(request).await.map_err(admin_error)?.into_inner();
        let refused = SwapStage::parse(&answer.refused_at).map(|stage| (stage, answer.refusal));
        let mut replay = answer.replay.map(replay_report);
        if let (Some(replay), Some((SwapStage::Replay, why))) = (&mut replay, &refused) {
            replay.refusal = Some(why.clone());
        }
        Ok(SwapReport {
            pool: pool.to_owned(),
            candidate: answer.candidate,
            meta: PluginMeta { declared: Some(answer.declared).filter(|d| !d.is_empty()), sha256: answer.sha256 },
            compiled_from_cache: answer.compiled_from_cache,
            replay,
            refused,
            replaced: Some(answer.replaced).filter(|_| answer.promoted),
            elapsed: Duration::from_micros(answer.elapsed_us),
        })
    }

    /// Puts back the previous version of `kind` (for a router, `pool`'s);
    /// returns the labels of the restored and the replaced versions.
    pub async fn rollback(
        &mut self,
        kind: PolicyKind,
        pool: &str,
        requested_by: &str,
    ) -> Result<(String, String), AdminError> {
        let request = proto::RollbackPolicyRequest {
            pool: pool.to_owned(),
            kind: super::admin::kind_to_proto(kind) as i32,
            requested_by: requested_by.to_owned(),
        };
        let answer = self.admin.rollback_policy(request).await.map_err(admin_error)?.into_inner();
        Ok((answer.restored, answer.replaced))
    }
}

fn admin_error(status: Status) -> AdminError {
    match status.code() {
        Code::NotFound => AdminError::NotFound(status.message().to_owned()),
        Code::FailedPrecondition | Code::InvalidArgument => AdminError::Refused(status.message().to_owned()),
        code => AdminError::Refused(format!("the host answered {code:?}: {}", status.message())),
    }
}

fn time(unix_ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(unix_ms)
}

fn version(v: proto::PolicyVersion) -> PolicyVersion {
    PolicyVersion {
        label: v.label,
        sha256: v.sha256,
        declared: Some(v.declared).filter(|d| !d.is_empty()),
        loaded_at: time(v.loaded_at_unix_ms),
        live_since: time(v.live_since_unix_ms),
        promoted_by: v.promoted_by,
        decisions: v.decisions,
        faults: v.faults,
        ended: (v.ended_at_unix_ms > 0).then(|| (time(v.ended_at_unix_ms), v.ended_by)),
    }
}

fn replay_report(r: proto::ReplayReport) -> ReplayReport {
    let decision = |text: &str| Decision::parse(text).unwrap_or_else(|| Decision::Reject(text.to_owned()));
    ReplayReport {
        decisions: r.decisions as usize,
        differing: r.differing as usize,
        examples: r
            .examples
            .into_iter()
            .map(|e| Divergence {
                live: decision(&e.live),
                candidate: decision(&e.candidate),
                tool: e.tool,
                session: Some(e.session).filter(|s| !s.is_empty()),
            })
            .collect(),
        p50: Duration::from_nanos(r.p50_ns),
        p99: Duration::from_nanos(r.p99_ns),
        budget: Duration::from_nanos(r.budget_ns),
        // A refused replay's reason travels as the swap's refusal.
        refusal: None,
    }
}
