//! This node's presence counts per flight, written on a short lease so that they
//! vanish with the node.

use etcd_client::{PutOptions, Txn, TxnOp};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{EtcdStore, LEASE_GONE};
use crate::domain::FlightId;
use crate::store::StoreResult;

/// A node's presence counts outlive it by at most this (seconds).
const PRESENCE_TTL: i64 = 10;
/// How often the presence lease is kept alive.
const PRESENCE_KEEP: Duration = Duration::from_secs(2);
/// Presence keys written per transaction.
const PRESENCE_CHUNK: usize = 100;

impl EtcdStore {
    /// Keeps the presence lease alive (or takes a new one: then `false`) and writes
    /// this node's counts on it.
    pub(super) async fn put_presence(&self, counts: Vec<(FlightId, u32)>) -> StoreResult<bool> {
        let mut kept = self.keep_presence_lease().await;
        if !kept {
            let l = self
                .retry("lease", |c| async move {
                    c.lease_client().grant(PRESENCE_TTL, None).await
                })
                .await?;
            self.presence_lease.store(l.id(), Ordering::Relaxed);
        }
        let lease = self.presence_lease.load(Ordering::Relaxed);
        let ops: Vec<TxnOp> = counts
            .iter()
            .map(|(f, n)| {
                let k = self.full(&crate::store::presence_key(&self.node, f));
                match n {
                    0 => TxnOp::delete(k, None),
                    n => TxnOp::put(
                        k,
                        n.to_be_bytes().to_vec(),
                        Some(PutOptions::new().with_lease(lease)),
                    ),
                }
            })
            .collect();
        // etcd bounds the operations of one transaction
        for chunk in ops.chunks(PRESENCE_CHUNK) {
            let txn = Txn::new().and_then(chunk.to_vec());
            let r = self
                .retry("presence", |mut c| {
                    let txn = txn.clone();
                    async move { c.txn(txn).await }
                })
                .await;
            if let Err(e) = r {
                // the lease ran out meanwhile: the caller publishes everything again
                self.presence_lease.store(0, Ordering::Relaxed);
                kept = false;
                if !e.to_string().contains(LEASE_GONE) {
                    return Err(e);
                }
            }
        }
        Ok(kept)
    }

    /// True if the presence lease exists and is kept alive (asked at most every
    /// [`PRESENCE_KEEP`]).
    async fn keep_presence_lease(&self) -> bool {
        let id = self.presence_lease.load(Ordering::Relaxed);
        if id == 0 {
            return false;
        }
        if self
            .presence_kept
            .lock()
            .is_some_and(|t| t.elapsed() < PRESENCE_KEEP)
        {
            return true;
        }
        let kept = self.keep_alive(id).await;
        *self.presence_kept.lock() = kept.then(Instant::now);
        kept
    }
}
