//! Writes: a batch as one etcd transaction, conditional on the flight's version
//! and on its create-only keys, with a unique marker (on a lease) that tells a retry
//! whether a try whose reply was lost committed.

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{EtcdStore, LEASE_GONE};
use crate::domain::FlightId;
use crate::store::sled_store::{batch_ops, holds, version_key, Op};
use crate::store::{Batch, Store, StoreError, StoreResult};

/// Transaction markers live this long (seconds); a fresh lease is taken halfway.
const MARKER_TTL: i64 = 600;
/// How often the markers' lease is kept alive.
pub(super) const LEASE_CHECK: Duration = Duration::from_secs(60);

impl EtcdStore {
    /// Keeps the markers' lease alive, or takes a new one if it is gone.
    pub(super) async fn renew_lease(&self) {
        let id = self.lease.load(Ordering::Relaxed);
        if id != 0 && self.keep_alive(id).await {
            return;
        }
        let granted = self
            .retry("lease", |c| async move {
                c.lease_client().grant(MARKER_TTL, None).await
            })
            .await;
        match granted {
            Ok(l) => self.lease.store(l.id(), Ordering::Relaxed),
            Err(e) => tracing::warn!(error = %e, "no lease for transaction markers"),
        }
    }

    /// The revision of the last write under the prefix, from a reply that read `!rev`.
    fn last_write(resp: &etcd_client::TxnResponse) -> Option<u64> {
        resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g
                .kvs()
                .first()
                .filter(|kv| kv.key().ends_with(b"!rev"))
                .map(|kv| kv.mod_revision() as u64),
            _ => None,
        })
    }

    pub(super) async fn commit_batch(
        &self,
        batch: Batch,
        expect: Option<(FlightId, u64)>,
    ) -> StoreResult<()> {
        let ids = (0..batch.events.len())
            .map(|_| self.next_id())
            .collect::<StoreResult<Vec<_>>>()?;
        let ops = batch_ops(&batch, &ids)?;
        let marker = self.full(
            format!(
                "!txn/{}/{}",
                self.node,
                self.markers.fetch_add(1, Ordering::Relaxed)
            )
            .as_bytes(),
        );
        let mut when = vec![Compare::create_revision(
            marker.clone(),
            CompareOp::Equal,
            0,
        )];
        let mut then = Vec::new();
        if let Some((flight, v)) = &expect {
            let k = self.full(&version_key(flight));
            when.push(if *v == 0 {
                Compare::create_revision(k, CompareOp::Equal, 0)
            } else {
                Compare::value(k, CompareOp::Equal, v.to_be_bytes().to_vec())
            });
        }
        for op in ops {
            match op {
                Op::Put(k, v) => then.push(TxnOp::put(self.full(&k), v, None)),
                Op::Create(k, v) => {
                    let k = self.full(&k);
                    when.push(Compare::create_revision(k.clone(), CompareOp::Equal, 0));
                    then.push(TxnOp::put(k, v, None));
                }
                Op::Delete(k) => then.push(TxnOp::delete(self.full(&k), None)),
                Op::Expect(k, v) => {
                    // the bytes stored, if they hold the record expected (see `holds`)
                    let v = match self.mirror.raw(&k)? {
                        Some(held) if holds(&k, &held, &v) => held,
                        _ => v,
                    };
                    when.push(Compare::value(self.full(&k), CompareOp::Equal, v))
                }
                Op::Absent(k) => {
                    when.push(Compare::create_revision(self.full(&k), CompareOp::Equal, 0))
                }
            }
        }
        let rev_key = self.full(b"!rev");
        then.push(TxnOp::put(rev_key.clone(), Vec::new(), None));
        let build = |lease: i64| {
            let mut then = then.clone();
            then.push(TxnOp::put(
                marker.clone(),
                Vec::new(),
                Some(PutOptions::new().with_lease(lease)),
            ));
            Txn::new().when(when.clone()).and_then(then).or_else([
                TxnOp::get(marker.clone(), None),
                TxnOp::get(rev_key.clone(), None),
            ])
        };
        let send = |txn: Txn| {
            self.retry("write", move |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
        };
        let resp = match send(build(self.lease.load(Ordering::Relaxed))).await {
            Err(StoreError::Io(e)) if e.contains(LEASE_GONE) => {
                // the markers' lease ran out (this node was cut off for a long time)
                self.lease.store(0, Ordering::Relaxed);
                self.renew_lease().await;
                send(build(self.lease.load(Ordering::Relaxed))).await?
            }
            r => r?,
        };
        let revision = resp.header().map_or(0, |h| h.revision()) as u64;
        if resp.succeeded() {
            return self.applied_to(revision).await;
        }
        let ours = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g
                .kvs()
                .first()
                .filter(|kv| kv.key() == marker.as_slice())
                .map(|kv| kv.mod_revision() as u64),
            _ => None,
        });
        match ours {
            // an earlier try committed and only its reply was lost
            Some(rev) => self.applied_to(rev).await,
            None => {
                // wait for the write that made the compare fail
                self.applied_to(Self::last_write(&resp).unwrap_or(0))
                    .await?;
                Err(if expect.is_some() {
                    StoreError::Stale
                } else {
                    StoreError::Conflict
                })
            }
        }
    }
}
