//! Leader election on a `coordination.k8s.io/v1` Lease, so several replicas can run and only
//! one acts. The algorithm is client-go's: the holder renews `renewTime` every `renew_every`;
//! a candidate takes the Lease only once `renewTime + leaseDurationSeconds` has passed. Every
//! write carries the resourceVersion it read, so two candidates can never both win a round.
//! A leader that cannot renew within the lease duration stops acting before anyone else can
//! take over (it stops its work when its own view of the lease expires).

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::Client;
use tracing::{info, warn};

use crate::telemetry::Metrics;
use crate::{kube_err, Result};

/// Lease parameters.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// How long a lease is valid without renewal.
    pub duration: Duration,
    /// How often the holder renews and candidates retry.
    pub renew_every: Duration,
}

impl LeaseConfig {
    /// Client-go's defaults: 15 s lease, renew every 2 s.
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(2),
        }
    }
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

/// One acquire-or-renew round: `Ok(true)` when this replica holds the lease afterwards.
pub async fn try_acquire_or_renew(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<bool> {
    let duration_s = i32::try_from(cfg.duration.as_secs()).unwrap_or(i32::MAX);
    let Some(lease) = api
        .get_opt(&cfg.name)
        .await
        .map_err(kube_err("reading the leader Lease"))?
    else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(cfg.name.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(cfg.identity.clone()),
                lease_duration_seconds: Some(duration_s),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(kube_err("creating the leader Lease")(e)),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let mine = spec.holder_identity.as_deref() == Some(cfg.identity.as_str());
    let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
        (Some(MicroTime(renewed)), Some(d)) => {
            let deadline = renewed.as_millisecond() + i64::from(d) * 1000;
            k8s_openapi::jiff::Timestamp::now().as_millisecond() > deadline
        }
        _ => true,
    };
    if !mine && !expired && spec.holder_identity.is_some() {
        return Ok(false);
    }
    let mut next = lease.clone();
    let s = next.spec.get_or_insert_with(Default::default);
    if !mine {
        s.holder_identity = Some(cfg.identity.clone());
        s.acquire_time = Some(now());
        s.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    s.renew_time = Some(now());
    s.lease_duration_seconds = Some(duration_s);
    // replace() sends the resourceVersion we read: a concurrent writer makes this a 409.
    match api.replace(&cfg.name, &PostParams::default(), &next).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(kube_err("renewing the leader Lease")(e)),
    }
}

/// How a turn of [`run_as_leader`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leadership {
    /// The work ended (a graceful shutdown): the lease was released so another replica takes
    /// over at once instead of after the lease duration.
    WorkEnded,
    /// The lease was lost or could not be renewed in time: the work was dropped.
    Lost,
    /// Shutdown was requested before this replica became leader.
    ShutDown,
}

/// Waits to become leader, then runs `work` while renewing. Returns when `work` ends (the lease
/// is then released) or when leadership is lost (then `work` is dropped: it stops acting at
/// once).
pub async fn run_as_leader<F>(
    client: Client,
    cfg: LeaseConfig,
    metrics: &Metrics,
    work: F,
) -> Result<Leadership>
where
    F: Future<Output = ()>,
{
    run_as_leader_until(client, cfg, metrics, work, std::future::pending()).await
}

/// [`run_as_leader`], giving up the campaign when `shutdown` resolves before this replica
/// leads. Once it leads, `work` owns the shutdown (it finishes what it is doing, then ends).
pub async fn run_as_leader_until<F, S>(
    client: Client,
    cfg: LeaseConfig,
    metrics: &Metrics,
    work: F,
    shutdown: S,
) -> Result<Leadership>
where
    F: Future<Output = ()>,
    S: Future<Output = ()>,
{
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    tokio::pin!(shutdown);
    loop {
        match try_acquire_or_renew(&api, &cfg).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => warn!(error = %e, "leader election"),
        }
        tokio::select! {
            () = &mut shutdown => return Ok(Leadership::ShutDown),
            () = tokio::time::sleep(cfg.renew_every) => {}
        }
    }
    info!(identity = %cfg.identity, lease = %cfg.name, "became leader");
    metrics.leader.set(1);
    let mut last_renewed = tokio::time::Instant::now();
    tokio::pin!(work);
    let lost = loop {
        tokio::select! {
            () = &mut work => break false,
            () = tokio::time::sleep(cfg.renew_every) => {
                match try_acquire_or_renew(&api, &cfg).await {
                    Ok(true) => last_renewed = tokio::time::Instant::now(),
                    Ok(false) => break true,
                    Err(e) => warn!(error = %e, "renewing the lease"),
                }
                // Stop before anyone else may take over: our lease is valid for `duration`
                // after the last renewal we know succeeded.
                if last_renewed.elapsed() + cfg.renew_every >= cfg.duration {
                    break true;
                }
            }
        }
    };
    metrics.leader.set(0);
    if lost {
        warn!(identity = %cfg.identity, "lost leadership; stopped acting");
        return Ok(Leadership::Lost);
    }
    release(&api, &cfg).await?;
    info!(identity = %cfg.identity, lease = %cfg.name, "released the lease");
    Ok(Leadership::WorkEnded)
}

/// Gives the lease up (as client-go's `ReleaseOnCancel`): no holder, so the next candidate
/// takes it at its next round. Only a lease this replica still holds is touched.
pub async fn release(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<()> {
    let Some(mut lease) = api
        .get_opt(&cfg.name)
        .await
        .map_err(kube_err("reading the leader Lease"))?
    else {
        return Ok(());
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(now());
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        // Someone wrote it since we read it: it is not ours to release any more.
        Ok(_) | Err(kube::Error::Api(_)) => Ok(()),
        Err(e) => Err(kube_err("releasing the leader Lease")(e)),
    }
}
