//! Following the cluster: the mirror's first load, then one watch from the next
//! revision, each revision applied to the mirror and told to the listener in order.

use etcd_client::{EventType, GetOptions, WatchOptions};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::txn::LEASE_CHECK;
use super::{EtcdStore, EXIT_FELL_BEHIND, REQUEST_TIMEOUT};
use crate::store::sled_store::decode_change;
use crate::store::StoreResult;

const PAGE: i64 = 500;

impl EtcdStore {
    /// Loads every record under the prefix, as of one revision, into the mirror.
    pub(super) async fn load(&self) -> StoreResult<()> {
        let mut start = self.prefix.clone();
        let mut revision = 0i64;
        loop {
            let (from, rev) = (start.clone(), revision);
            let end = self.prefix_end.clone();
            let mut resp = self
                .retry("load", |mut c| {
                    let (from, end) = (from.clone(), end.clone());
                    async move {
                        c.get(
                            from,
                            Some(
                                GetOptions::new()
                                    .with_range(end)
                                    .with_limit(PAGE)
                                    .with_revision(rev),
                            ),
                        )
                        .await
                    }
                })
                .await?;
            if revision == 0 {
                revision = resp.header().map_or(0, |h| h.revision());
            }
            let more = resp.more();
            let kvs = resp.take_kvs();
            let writes: Vec<_> = kvs
                .iter()
                .filter_map(|kv| {
                    kv.key()
                        .strip_prefix(self.prefix.as_slice())
                        .map(|k| (k.to_vec(), Some(kv.value().to_vec())))
                })
                .collect();
            self.mirror.apply_raw(&writes)?;
            match kvs.last() {
                Some(last) if more => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => break,
            }
        }
        self.applied.send_replace(revision.max(0) as u64);
        tracing::info!(revision, "loaded the replicated store");
        Ok(())
    }

    /// Follows the prefix from the revision after the mirror's, forever: applies each
    /// revision's writes to the mirror, tells the listener, then marks it applied.
    pub(super) async fn watch_loop(self: Arc<Self>) {
        let mut lease_at = Instant::now();
        loop {
            if self.stop.is_cancelled() {
                return;
            }
            let from = *self.applied.borrow() as i64 + 1;
            let i = self.preferred.load(Ordering::Relaxed) % self.clients.len();
            let options = WatchOptions::new()
                .with_range(self.prefix_end.clone())
                .with_start_revision(from)
                .with_progress_notify();
            let mut stream = match tokio::time::timeout(
                REQUEST_TIMEOUT,
                self.clients[i]
                    .watch_client()
                    .watch(self.prefix.clone(), Some(options)),
            )
            .await
            {
                Ok(Ok(s)) => s,
                other => {
                    let e = match other {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".into(),
                    };
                    tracing::warn!(member = i, error = %e, "cannot watch etcd; trying the next member");
                    self.preferred
                        .store((i + 1) % self.clients.len(), Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            loop {
                if lease_at.elapsed() > LEASE_CHECK {
                    lease_at = Instant::now();
                    let me = self.clone();
                    tokio::spawn(async move { me.renew_lease().await });
                }
                let msg = tokio::select! {
                    m = stream.message() => m,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {
                        // a silent member may be cut off: make it prove it is alive
                        if stream.request_progress().await.is_err() {
                            break;
                        }
                        match tokio::time::timeout(REQUEST_TIMEOUT * 2, stream.message()).await {
                            Ok(m) => m,
                            Err(_) => break,
                        }
                    }
                    _ = self.stop.cancelled() => return,
                };
                let resp = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) | Err(_) => break,
                };
                if resp.compact_revision() > 0 {
                    // the revisions this node missed are gone: its seat maps can no
                    // longer be brought up to date in order. Everything acknowledged
                    // is in etcd, so stop like a crash; a restart reloads it all.
                    tracing::error!(
                        compacted = resp.compact_revision(),
                        "this node fell behind etcd's compaction; exiting to be restarted"
                    );
                    std::process::exit(EXIT_FELL_BEHIND);
                }
                if resp.canceled() {
                    break;
                }
                if resp.events().is_empty() {
                    // created, or a progress notification: proof of life only
                    continue;
                }
                if let Err(e) = self.apply_events(resp.events()) {
                    tracing::error!(error = %e, "cannot apply replicated changes; exiting to be restarted");
                    std::process::exit(EXIT_FELL_BEHIND);
                }
            }
            tracing::warn!(member = i, "etcd watch ended; resuming on the next member");
            self.preferred
                .store((i + 1) % self.clients.len(), Ordering::Relaxed);
        }
    }

    fn apply_events(&self, events: &[etcd_client::Event]) -> StoreResult<()> {
        let mut group: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        let mut rev = 0u64;
        for ev in events {
            let Some(kv) = ev.kv() else { continue };
            let r = kv.mod_revision() as u64;
            if r != rev && !group.is_empty() {
                self.apply_revision(rev, std::mem::take(&mut group))?;
            }
            rev = r;
            if let Some(k) = kv.key().strip_prefix(self.prefix.as_slice()) {
                let v = match ev.event_type() {
                    EventType::Put => Some(kv.value().to_vec()),
                    EventType::Delete => None,
                };
                group.push((k.to_vec(), v));
            }
        }
        if !group.is_empty() {
            self.apply_revision(rev, group)?;
        }
        Ok(())
    }

    fn apply_revision(&self, rev: u64, writes: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> StoreResult<()> {
        if rev <= *self.applied.borrow() {
            return Ok(());
        }
        self.mirror.apply_raw(&writes)?;
        let changes: Vec<_> = writes
            .iter()
            .filter_map(|(k, v)| decode_change(k, v.as_deref()))
            .collect();
        if let Some(l) = self.listener.get() {
            if !changes.is_empty() {
                l(&changes);
            }
        }
        self.applied.send_replace(rev);
        Ok(())
    }
}
