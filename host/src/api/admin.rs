//! `pitboss.v1.Admin` on the admin address: by default a Unix socket with
//! mode 0600 (`host.admin_address`, `<run_dir>/admin.sock`), so only the
//! host's own user reaches recycling and policy swaps; a TCP address when
//! the config opts in (`admin_allow_tcp`), with a warning. Callers on the
//! API address get UNIMPLEMENTED for every Admin method.
//!
//! Owns: the admin listener, the socket file, and mapping Admin messages
//! to [`Host`] calls. Must not touch: the callers' API (`api_address`),
//! which never serves Admin.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::{Request, Response, Status};

use super::proto::{self, admin_server::AdminServer};
use crate::config::AdminAddress;
use crate::host::{PolicyKind, RulesKind};
use crate::policy::{Candidate, PolicyVersion, ReplayReport, SwapOptions, SwapReport};
use crate::pool::AdminError;
use crate::Host;

/// A bound admin address, ready for [`serve_admin`].
pub enum AdminListener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

/// Binds the admin address. A Unix socket gets mode 0600 (its folder is
/// created 0700 if missing); a socket file left by a host that is gone is
/// replaced, one that a live host answers on is an error. A TCP address is
/// bound with a warning: anyone who reaches it is an operator.
pub async fn bind_admin(address: &AdminAddress) -> Result<AdminListener> {
    match address {
        AdminAddress::Unix(path) => bind_socket(path).await.map(AdminListener::Unix),
        AdminAddress::Tcp(tcp) => {
            let listener = TcpListener::bind(tcp)
                .await
                .with_context(|| format!("cannot listen on the admin address {address} (host.admin_address)"))?;
            tracing::warn!(
                admin = %address,
                "the Admin service listens on TCP (host.admin_allow_tcp): anyone who can reach it can recycle \
                 workers and swap policies; keep it on a private network"
            );
            Ok(AdminListener::Tcp(listener))
        }
    }
}

async fn bind_socket(path: &Path) -> Result<UnixListener> {
    if let Some(folder) = path.parent().filter(|folder| !folder.exists()) {
        std::fs::create_dir_all(folder)
            .with_context(|| format!("cannot create {} for the admin socket", folder.display()))?;
        let _ = std::fs::set_permissions(folder, std::fs::Permissions::from_mode(0o700));
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            bail!(
                "another pitboss serves its admin API on {} (host.admin_address); stop it or choose another path",
                path.display()
            );
        }
        std::fs::remove_file(path).with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot listen on the admin socket {} (host.admin_address)", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot make the admin socket {} owner-only", path.display()))?;
    Ok(listener)
}

/// Serves `Admin` for `host` on `listener` until `shutdown` resolves, then
/// removes the socket file, if it is one.
pub async fn serve_admin(host: Arc<Host>, listener: AdminListener, shutdown: impl Future<Output = ()>) -> Result<()> {
    let server = tonic::transport::Server::builder().add_service(AdminServer::new(Admin { host }));
    let served = match listener {
        AdminListener::Tcp(listener) => {
            server.serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown).await
        }
        AdminListener::Unix(listener) => {
            let path = listener.local_addr().ok().and_then(|address| address.as_pathname().map(Path::to_owned));
            let served = server.serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown).await;
            if let Some(path) = path {
                let _ = std::fs::remove_file(path);
            }
            served
        }
    };
    served.context("the admin API server failed")
}

struct Admin {
    host: Arc<Host>,
}

#[tonic::async_trait]
impl proto::admin_server::Admin for Admin {
    async fn recycle_worker(
        &self,
        request: Request<proto::RecycleWorkerRequest>,
    ) -> Result<Response<proto::RecycleWorkerResponse>, Status> {
        let request = request.into_inner();
        self.host.recycle(&request.pool, request.worker).await.map_err(admin_status)?;
        Ok(Response::new(proto::RecycleWorkerResponse {}))
    }

    async fn list_policies(
        &self,
        _request: Request<proto::ListPoliciesRequest>,
    ) -> Result<Response<proto::ListPoliciesResponse>, Status> {
        let pools = self
            .host
            .policies()
            .into_iter()
            .map(|pool| proto::PoolPolicies {
                pool: pool.pool,
                kind: kind_to_proto(pool.kind) as i32,
                history: pool.history.iter().map(version).collect(),
                can_roll_back: pool.can_roll_back,
            })
            .collect();
        Ok(Response::new(proto::ListPoliciesResponse { pools }))
    }

    async fn swap_policy(
        &self,
        request: Request<proto::SwapPolicyRequest>,
    ) -> Result<Response<proto::SwapPolicyResponse>, Status> {
        let request = request.into_inner();
        let kind = kind_from_proto(request.kind)?;
        let candidate = match request.component {
            Some(proto::swap_policy_request::Component::Wasm(wasm)) => {
                let label =
                    if request.label.is_empty() { "uploaded component".to_owned() } else { request.label.clone() };
                Candidate { label, wasm }
            }
            Some(proto::swap_policy_request::Component::Path(path)) => {
                let wasm = std::fs::read(&path)
                    .map_err(|err| Status::invalid_argument(format!("cannot read policy component {path}: {err}")))?;
                Candidate { label: path, wasm }
            }
            None => return Err(Status::invalid_argument("give the component as `wasm` bytes or a `path`")),
        };
        let options = SwapOptions {
            expected_sha256: Some(request.expected_sha256).filter(|hash| !hash.is_empty()),
            dry_run: request.dry_run,
            requested_by: requester(&request.requested_by),
            router_options: request.set_options.then(|| {
                let mut options: Vec<(String, String)> = request.options.into_iter().collect();
                options.sort();
                options
            }),
        };
        let report = match kind {
            PolicyKind::Router => self.host.swap_router(&request.pool, candidate, options).await,
            PolicyKind::Rules(kind) => {
                host_wide(&request.pool, kind)?;
                self.host.swap_rules(kind, candidate, options).await
            }
        };
        Ok(Response::new(swap_response(report.map_err(admin_status)?)))
    }

    async fn rollback_policy(
        &self,
        request: Request<proto::RollbackPolicyRequest>,
    ) -> Result<Response<proto::RollbackPolicyResponse>, Status> {
        let request = request.into_inner();
        let by = requester(&request.requested_by);
        let (restored, replaced) = match kind_from_proto(request.kind)? {
            PolicyKind::Router => {
                let rollback = self.host.rollback_router(&request.pool, &by).map_err(admin_status)?;
                (rollback.restored.label().to_owned(), rollback.replaced.label().to_owned())
            }
            PolicyKind::Rules(kind) => {
                host_wide(&request.pool, kind)?;
                self.host.rollback_rules(kind, &by).map_err(admin_status)?
            }
        };
        Ok(Response::new(proto::RollbackPolicyResponse { restored, replaced }))
    }
}

pub(super) fn admin_status(error: AdminError) -> Status {
    match error {
        AdminError::NotFound(message) => Status::not_found(message),
        AdminError::Refused(message) => Status::failed_precondition(message),
    }
}

pub(super) fn kind_from_proto(kind: i32) -> Result<PolicyKind, Status> {
    match proto::PolicyKind::try_from(kind) {
        Ok(proto::PolicyKind::Router) => Ok(PolicyKind::Router),
        Ok(proto::PolicyKind::ConfigRules) => Ok(PolicyKind::Rules(RulesKind::Config)),
        Ok(proto::PolicyKind::CompatRules) => Ok(PolicyKind::Rules(RulesKind::Compat)),
        Err(_) => Err(Status::invalid_argument(format!(
            "unknown policy kind {kind}; use 0 (router), 1 (config rules) or 2 (compat rules)"
        ))),
    }
}

pub(super) fn kind_to_proto(kind: PolicyKind) -> proto::PolicyKind {
    match kind {
        PolicyKind::Router => proto::PolicyKind::Router,
        PolicyKind::Rules(RulesKind::Config) => proto::PolicyKind::ConfigRules,
        PolicyKind::Rules(RulesKind::Compat) => proto::PolicyKind::CompatRules,
    }
}

/// Rules are the host's, not a pool's: a pool named with them is a mistake.
fn host_wide(pool: &str, kind: RulesKind) -> Result<(), Status> {
    if pool.is_empty() {
        return Ok(());
    }
    Err(Status::invalid_argument(format!("{} are host-wide: leave `pool` empty (got `{pool}`)", kind.as_str())))
}

fn requester(named: &str) -> String {
    if named.is_empty() {
        "an admin client".to_owned()
    } else {
        named.to_owned()
    }
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

fn version(version: &PolicyVersion) -> proto::PolicyVersion {
    let (ended_at, ended_by) = version.ended.clone().map_or((0, String::new()), |(at, why)| (unix_ms(at), why));
    proto::PolicyVersion {
        label: version.label.clone(),
        sha256: version.sha256.clone(),
        declared: version.declared.clone().unwrap_or_default(),
        loaded_at_unix_ms: unix_ms(version.loaded_at),
        live_since_unix_ms: unix_ms(version.live_since),
        promoted_by: version.promoted_by.clone(),
        decisions: version.decisions,
        faults: version.faults,
        ended_at_unix_ms: ended_at,
        ended_by,
    }
}

fn replay_report(replay: &ReplayReport) -> proto::ReplayReport {
    proto::ReplayReport {
        decisions: u32::try_from(replay.decisions).unwrap_or(u32::MAX),
        differing: u32::try_from(replay.differing).unwrap_or(u32::MAX),
        examples: replay
            .examples
            .iter()
            .map(|example| proto::Divergence {
                tool: example.tool.clone(),
                session: example.session.clone().unwrap_or_default(),
                live: example.live.to_string(),
                candidate: example.candidate.to_string(),
            })
            .collect(),
        p50_ns: nanos(replay.p50),
        p99_ns: nanos(replay.p99),
        budget_ns: nanos(replay.budget),
    }
}

fn swap_response(report: SwapReport) -> proto::SwapPolicyResponse {
    let (refused_at, refusal) =
        report.refused.clone().map_or_else(Default::default, |(stage, why)| (stage.to_string(), why));
    proto::SwapPolicyResponse {
        promoted: report.promoted(),
        candidate: report.candidate,
        sha256: report.meta.sha256,
        declared: report.meta.declared.unwrap_or_default(),
        compiled_from_cache: report.compiled_from_cache,
        replay: report.replay.as_ref().map(replay_report),
        refused_at,
        refusal,
        replaced: report.replaced.unwrap_or_default(),
        elapsed_us: u64::try_from(report.elapsed.as_micros()).unwrap_or(u64::MAX),
    }
}
