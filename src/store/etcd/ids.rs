//! Ids (history events) reserved from etcd in blocks, with a spare block fetched in
//! the background before the current one runs out.

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use std::sync::atomic::Ordering;

use super::EtcdStore;
use crate::store::{StoreError, StoreResult};

/// Ids are reserved from etcd in blocks of this many.
const ID_BLOCK: u64 = 10_000;

/// Reserved ids: `next..end` now, then the spare block.
#[derive(Default)]
pub(super) struct IdBlocks {
    next: u64,
    end: u64,
    spare: Option<(u64, u64)>,
}

impl EtcdStore {
    /// Reserves the next block of ids with a compare-and-set on the counter.
    pub(super) async fn refill_ids(&self) -> StoreResult<()> {
        let k = self.full(b"!ids");
        let block = self
            .retry("id block", |mut c| {
                let k = k.clone();
                async move {
                    loop {
                        let cur = c.get(k.clone(), None).await?;
                        let (cond, from) = match cur.kvs().first() {
                            Some(kv) => {
                                let Ok(bytes) = <[u8; 8]>::try_from(kv.value()) else {
                                    return Err(etcd_client::Error::InvalidArgs(
                                        "the id counter is corrupt".into(),
                                    ));
                                };
                                (
                                    Compare::mod_revision(
                                        k.clone(),
                                        CompareOp::Equal,
                                        kv.mod_revision(),
                                    ),
                                    u64::from_be_bytes(bytes),
                                )
                            }
                            None => (Compare::create_revision(k.clone(), CompareOp::Equal, 0), 0),
                        };
                        let to = from + ID_BLOCK;
                        let txn = Txn::new().when([cond]).and_then([TxnOp::put(
                            k.clone(),
                            to.to_be_bytes().to_vec(),
                            None,
                        )]);
                        if c.txn(txn).await?.succeeded() {
                            return Ok((from + 1, to + 1));
                        }
                    }
                }
            })
            .await?;
        let mut ids = self.ids.lock();
        if ids.next >= ids.end {
            (ids.next, ids.end) = block;
        } else {
            ids.spare = Some(block);
        }
        Ok(())
    }

    /// The next reserved id (`Store::next_id`).
    pub(super) fn take_id(&self) -> StoreResult<u64> {
        let (id, low) = {
            let mut ids = self.ids.lock();
            if ids.next >= ids.end {
                if let Some((next, end)) = ids.spare.take() {
                    (ids.next, ids.end) = (next, end);
                }
            }
            let id = (ids.next < ids.end).then(|| {
                ids.next += 1;
                ids.next - 1
            });
            (id, ids.spare.is_none() && ids.end - ids.next < ID_BLOCK / 2)
        };
        if low && !self.refilling.swap(true, Ordering::SeqCst) {
            if let (Some(me), Ok(rt)) = (self.me.upgrade(), tokio::runtime::Handle::try_current()) {
                rt.spawn(async move {
                    if let Err(e) = me.refill_ids().await {
                        tracing::error!(error = %e, "cannot reserve ids");
                    }
                    me.refilling.store(false, Ordering::SeqCst);
                });
            } else {
                self.refilling.store(false, Ordering::SeqCst);
            }
        }
        id.ok_or_else(|| StoreError::Io("out of reserved ids; retry".into()))
    }
}
