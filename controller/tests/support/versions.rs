//! Every version of some objects that the API server stores while a test runs, recorded from a
//! watch. A test that samples an object every few milliseconds misses or misorders versions
//! when one poll is slow (a loaded CI machine); a watch started from a list's resourceVersion
//! receives every later write, in order, so nothing in between is lost. If the server
//! cannot replay from where the watch stood (410 Gone: its history was compacted) the
//! recording says so and the test fails rather than judging an incomplete history.
//!
//! Resource versions are compared as numbers: on one etcd each is the revision of the write
//! that stored the version, one counter across all types (comparable by contract for one type
//! since Kubernetes 1.35, KEP-5504; the test control plane is one etcd). So [`as_of`]
//! tells what another object looked like when a version was written.
#![allow(dead_code)]

use std::fmt::Debug;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// One stored version of an object.
#[derive(Debug, Clone)]
pub struct Version<K> {
    /// The etcd revision that stored it.
    pub resource_version: u64,
    /// The object as stored (for a deletion: its last state).
    pub object: K,
    /// This version is the deletion.
    pub deleted: bool,
    /// When the recording received it (for the versions listed at the start: the list's time).
    /// Watch delays are alike for every recording, so differences measure the writers' timing.
    pub seen_at: std::time::Instant,
}

#[derive(Debug)]
struct History<K> {
    versions: Vec<Version<K>>,
    /// Why the recording is incomplete, if it is.
    gap: Option<String>,
}

/// The versions of the objects `api` selects, from the moment [`Recording::start`] returned.
pub struct Recording<K> {
    api: Api<K>,
    selection: ListParams,
    history: watch::Receiver<History<K>>,
    task: JoinHandle<()>,
}

impl<K> Drop for Recording<K> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn resource_version<K: Resource>(object: &K) -> u64 {
    object
        .meta()
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .expect("an etcd revision as resourceVersion")
}

impl<K> Recording<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    /// Lists the objects `api` holds that match the label and field selectors (`""` for none),
    /// records their current versions, then every later version until dropped.
    pub async fn start(api: Api<K>, labels: &str, fields: &str) -> Self {
        let selection = ListParams::default().labels(labels).fields(fields);
        let list = api.list(&selection).await.expect("listing what to record");
        let mut since = list.metadata.resource_version.clone().unwrap_or_default();
        let listed_at = std::time::Instant::now();
        let versions = list
            .items
            .into_iter()
            .map(|object| Version {
                resource_version: resource_version(&object),
                object,
                deleted: false,
                seen_at: listed_at,
            })
            .collect();
        let (tx, history) = watch::channel(History {
            versions,
            gap: None,
        });
        let params = WatchParams::default().labels(labels).fields(fields);
        let watched = api.clone();
        let task = tokio::spawn(async move {
            // A watch ends now and then (server timeouts); the next one resumes where it stood.
            loop {
                let stream = match watched.watch(&params, &since).await {
                    Ok(stream) => stream,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let mut stream = stream.boxed();
                while let Ok(Some(event)) = stream.try_next().await {
                    let (object, deleted) = match event {
                        WatchEvent::Added(o) | WatchEvent::Modified(o) => (o, false),
                        WatchEvent::Deleted(o) => (o, true),
                        WatchEvent::Bookmark(b) => {
                            since = b.metadata.resource_version;
                            continue;
                        }
                        WatchEvent::Error(e) => {
                            tx.send_modify(|h| {
                                h.gap = Some(format!("the watch from {since} failed: {e:?}"));
                            });
                            return;
                        }
                    };
                    let rv = resource_version(&object);
                    since = rv.to_string();
                    let seen_at = std::time::Instant::now();
                    tx.send_modify(|h| {
                        h.versions.push(Version {
                            resource_version: rv,
                            object,
                            deleted,
                            seen_at,
                        });
                    });
                }
            }
        });
        Recording {
            api,
            selection,
            history,
            task,
        }
    }

    /// Waits until the recording holds every version written so far: it has caught up when it
    /// holds the current version of each object (a watch delivers in order).
    pub async fn sync(&self) {
        let current: Vec<(String, u64)> = self
            .api
            .list(&self.selection)
            .await
            .expect("listing what is recorded")
            .items
            .iter()
            .map(|o| (o.name_any(), resource_version(o)))
            .collect();
        self.until(
            "the recording to catch up",
            Duration::from_secs(60),
            |versions| {
                current
                    .iter()
                    .all(|(name, rv)| {
                        versions
                            .iter()
                            .any(|v| v.resource_version == *rv && v.object.name_any() == *name)
                    })
                    .then_some(())
            },
        )
        .await;
    }

    /// Every version recorded so far, in the order they were written.
    pub fn versions(&self) -> Vec<Version<K>> {
        let history = self.history.borrow();
        assert!(
            history.gap.is_none(),
            "the recording is incomplete: {}",
            history.gap.as_deref().unwrap_or_default()
        );
        history.versions.clone()
    }

    /// The revisions of the versions written after revision `rv`.
    pub fn written_after(&self, rv: u64) -> Vec<u64> {
        self.versions()
            .iter()
            .map(|v| v.resource_version)
            .filter(|written| *written > rv)
            .collect()
    }

    /// The versions of the object named `name`.
    pub fn versions_of(&self, name: &str) -> Vec<Version<K>> {
        self.versions()
            .into_iter()
            .filter(|v| v.object.name_any() == name)
            .collect()
    }

    /// Waits (at most `deadline`) until `check` on the versions recorded so far returns Some.
    pub async fn until<T>(
        &self,
        what: &str,
        deadline: Duration,
        mut check: impl FnMut(&[Version<K>]) -> Option<T>,
    ) -> T {
        let mut history = self.history.clone();
        let wait = async {
            loop {
                if let Some(t) = check(&self.versions()) {
                    return t;
                }
                history
                    .changed()
                    .await
                    .expect("the recording task runs until dropped");
            }
        };
        match tokio::time::timeout(deadline, wait).await {
            Ok(t) => t,
            Err(_) => panic!(
                "timed out after {deadline:?} waiting for {what} ({} versions recorded)",
                self.versions().len()
            ),
        }
    }
}

/// The version of the object named `name` that was current when revision `rv` was written
/// (the last one stored before it), from `versions` of one recording. None if the object did
/// not exist then.
pub fn as_of<'a, K: Resource>(
    versions: &'a [Version<K>],
    name: &str,
    rv: u64,
) -> Option<&'a Version<K>> {
    versions
        .iter()
        .filter(|v| v.resource_version < rv && v.object.meta().name.as_deref() == Some(name))
        .max_by_key(|v| v.resource_version)
        .filter(|v| !v.deleted)
}
