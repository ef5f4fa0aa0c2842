//! The snapshot format of `jetway backup`: every key and value of the sled store as of
//! one moment, checked end to end, and its restore into a new data dir.
//!
//! ```text
//! "JETWAY-SNAPSHOT 1\n"
//! per record: key length (u32 BE), key, value length (u32 BE), value
//! trailer:    0xFFFFFFFF, record count (u64 BE), SHA-256 of every byte before it
//! ```

use sha2::{Digest, Sha256};
use std::path::Path;

use super::{SledStore, Store, StoreError, StoreResult};

const MAGIC: &[u8] = b"JETWAY-SNAPSHOT 1\n";
const END: u32 = u32::MAX;
const CHUNK: usize = 10_000;

/// Encodes records (keys and values shorter than 4 GiB, as sled's are).
pub fn encode<K: AsRef<[u8]>, V: AsRef<[u8]>>(records: impl Iterator<Item = (K, V)>) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    let mut count = 0u64;
    for (k, v) in records {
        for part in [k.as_ref(), v.as_ref()] {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part);
        }
        count += 1;
    }
    out.extend_from_slice(&END.to_be_bytes());
    out.extend_from_slice(&count.to_be_bytes());
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum);
    out
}

fn corrupt(why: &str) -> StoreError {
    StoreError::Corrupt(format!("snapshot: {why}"))
}

/// The records of a snapshot, after checking its magic, length and checksum.
pub fn decode(bytes: &[u8]) -> StoreResult<Vec<(&[u8], &[u8])>> {
    let body_len = bytes
        .len()
        .checked_sub(32)
        .ok_or_else(|| corrupt("truncated"))?;
    let (body, sum) = bytes.split_at(body_len);
    if !bytes.starts_with(MAGIC) {
        return Err(corrupt("not a Jetway snapshot"));
    }
    if Sha256::digest(body).as_slice() != sum {
        return Err(corrupt("checksum mismatch (truncated or damaged)"));
    }
    let mut rest = &body[MAGIC.len()..];
    let mut take = |n: usize| -> StoreResult<&[u8]> {
        if rest.len() < n {
            return Err(corrupt("truncated record"));
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    let mut records = Vec::new();
    loop {
        let len = u32::from_be_bytes(take(4)?.try_into().map_err(|_| corrupt("length"))?);
        if len == END {
            break;
        }
        let k = take(len as usize)?;
        let vlen = u32::from_be_bytes(take(4)?.try_into().map_err(|_| corrupt("length"))?);
        let v = take(vlen as usize)?;
        records.push((k, v));
    }
    let count = u64::from_be_bytes(take(8)?.try_into().map_err(|_| corrupt("count"))?);
    if count != records.len() as u64 || !rest.is_empty() {
        return Err(corrupt("record count mismatch"));
    }
    Ok(records)
}

/// The file a restore writes into its data dir first and removes last: a data dir
/// holding it was restored only in part.
pub const RESTORING: &str = "RESTORING";

/// Refuses a directory that exists with something in it (but an empty `lost+found`,
/// which the root of a freshly made ext4 file system holds: a mount point).
pub fn ensure_new(dir: &Path) -> StoreResult<()> {
    check_complete(dir)?;
    let fresh_ext4 = |e: &std::fs::DirEntry| {
        e.file_name() == "lost+found"
            && std::fs::read_dir(e.path()).is_ok_and(|mut d| d.next().is_none())
    };
    // an entry that cannot be read counts as something
    let used = std::fs::read_dir(dir)
        .is_ok_and(|d| d.into_iter().any(|e| !e.is_ok_and(|e| fresh_ext4(&e))));
    match used {
        true => Err(StoreError::Io(format!(
            "{} is not empty: restore into a new directory",
            dir.display()
        ))),
        false => Ok(()),
    }
}

/// Narrows an empty directory given for a restore (a mount point) to its owner, as
/// a new one is made: what goes in holds password and session-token hashes. One the
/// restoring user may write but not narrow (another user's, a filesystem without
/// modes) is warned about and used as it is: a backup that stops for it would be
/// the worse loss.
fn narrow_to_owner(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let open = std::fs::metadata(dir).map_or(0, |m| m.permissions().mode() & 0o077);
    if open == 0 {
        return;
    }
    if let Err(e) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot make the directory its owner's only: others may read the database written into it (chown it to this user, or chmod 0700 it)");
    }
}

/// Refuses a data dir a restore left unfinished (see [`restore`]).
pub fn check_complete(dir: &Path) -> StoreResult<()> {
    match dir.join(RESTORING).exists() {
        true => Err(StoreError::Io(format!(
            "{} holds a restore that did not finish ({RESTORING} is in it): remove the \
             directory's contents and restore again",
            dir.display()
        ))),
        false => Ok(()),
    }
}

/// Writes a snapshot's records into `dir`, which must not exist or be empty, as a
/// data dir a server can start on; durable when this returns. Returns the record count.
///
/// A [`RESTORING`] file is written (durably) first and removed last, and a server
/// refuses to start on a data dir that holds it ([`check_complete`]): records are
/// written in key order, and each index sorts after its records (`B`ooking before
/// `b`), so a restore interrupted part-way left a data dir a server would start on,
/// with refunds and attempts missing from their indexes (never retried). `dir` itself
/// is written into, so it may be an empty mount point.
pub fn restore(bytes: &[u8], dir: &Path) -> StoreResult<usize> {
    restore_with(bytes, dir, |_| Ok(()))
}

/// [`restore`], calling `after_chunk` with the count written so far after each chunk
/// (how a test interrupts it).
fn restore_with(
    bytes: &[u8],
    dir: &Path,
    mut after_chunk: impl FnMut(usize) -> StoreResult<()>,
) -> StoreResult<usize> {
    let records = decode(bytes)?;
    ensure_new(dir)?;
    super::create_dir_durably(dir)?;
    narrow_to_owner(dir);
    let marker = dir.join(RESTORING);
    let io =
        |what: &str, e: std::io::Error| StoreError::Io(format!("{what} {}: {e}", marker.display()));
    std::fs::File::create(&marker)
        .and_then(|f| f.sync_all())
        .map_err(|e| io("writing", e))?;
    super::sync_dir(dir)?;
    let store = SledStore::open(dir)?;
    let mut written = 0;
    for chunk in records.chunks(CHUNK) {
        let writes: Vec<_> = chunk
            .iter()
            .map(|(k, v)| (k.to_vec(), Some(v.to_vec())))
            .collect();
        store.apply_raw(&writes)?;
        // one journal append per chunk, so a large backup is not held in memory whole
        store.sync()?;
        written += chunk.len();
        after_chunk(written)?;
    }
    // not shut down: that would give back this handle's unused ids, below the
    // snapshot's id floor just written
    drop(store);
    std::fs::remove_file(&marker).map_err(|e| io("removing", e))?;
    super::sync_dir(dir)?;
    Ok(records.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_damage() {
        let records = [(b"a".to_vec(), b"1".to_vec()), (b"b".to_vec(), Vec::new())];
        let bytes = encode(records.iter().map(|(k, v)| (k, v)));
        let back = decode(&bytes).unwrap();
        assert_eq!(back, vec![(&b"a"[..], &b"1"[..]), (&b"b"[..], &b""[..])]);
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        let mut flipped = bytes.clone();
        flipped[MAGIC.len() + 4] ^= 1;
        assert!(decode(&flipped).is_err());
        assert!(decode(b"").is_err());
    }

    /// Writes going on during the copy: every snapshot shows both keys of each
    /// batch from the same batch, though the copy reaches them far apart.
    #[test]
    fn a_snapshot_is_one_moment_while_writes_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(SledStore::open(dir.path()).unwrap());
        let filler: Vec<_> = (0..20_000u32)
            .map(|i| (format!("m{i:08}").into_bytes(), Some(vec![b'.'; 64])))
            .collect();
        store.apply_raw(&filler).unwrap();
        let pair = |n: u64| {
            let v = Some(n.to_be_bytes().to_vec());
            vec![(b"a".to_vec(), v.clone()), (b"z".to_vec(), v)]
        };
        store.apply_raw(&pair(0)).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (store, stop) = (store.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    store.apply_raw(&pair(n)).unwrap();
                }
                n
            })
        };
        for _ in 0..3 {
            let bytes = store.snapshot().unwrap();
            let records = decode(&bytes).unwrap();
            let get = |k: &[u8]| records.iter().find(|(key, _)| *key == k).unwrap().1;
            assert_eq!(get(b"a"), get(b"z"), "both keys from one batch");
            assert_eq!(records.len(), 20_000 + 3, "filler, the pair, the id floor");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(
            writer.join().unwrap() > 0,
            "the writer wrote during the copies"
        );
        assert!(store.written.lock().is_none(), "nothing noted once done");
    }

    /// A restore interrupted part-way leaves a data dir no server starts on, and a
    /// second restore into it names what the first left; an empty directory (a mount
    /// point) is restored into.
    #[test]
    fn an_interrupted_restore_leaves_no_data_dir_a_server_starts_on() {
        let src = tempfile::tempdir().unwrap();
        let store = SledStore::open(src.path()).unwrap();
        let records: Vec<_> = (0..CHUNK as u32 + 10)
            .map(|i| (format!("k{i:08}").into_bytes(), Some(b"v".to_vec())))
            .collect();
        store.apply_raw(&records).unwrap();
        let bytes = store.snapshot().unwrap();
        drop(store);
        let into = tempfile::tempdir().unwrap();
        let cut = restore_with(&bytes, into.path(), |n| match n < CHUNK {
            true => Ok(()),
            false => Err(StoreError::Io("interrupted".into())),
        });
        assert!(cut.is_err());
        let refused = check_complete(into.path()).unwrap_err().to_string();
        assert!(refused.contains(RESTORING), "{refused}");
        let again = restore(&bytes, into.path()).unwrap_err().to_string();
        assert!(again.contains(RESTORING), "{again}");
        let empty = tempfile::tempdir().unwrap();
        std::fs::create_dir(empty.path().join("lost+found")).unwrap();
        let used = tempfile::tempdir().unwrap();
        std::fs::create_dir(used.path().join("lost+found")).unwrap();
        std::fs::write(used.path().join("lost+found").join("#123"), b"x").unwrap();
        assert!(
            restore(&bytes, used.path()).is_err(),
            "a lost+found with files in it"
        );
        assert_eq!(restore(&bytes, empty.path()).unwrap(), records.len() + 1);
        assert!(check_complete(empty.path()).is_ok());
    }

    #[test]
    fn restores_into_an_empty_dir_only() {
        let src = tempfile::tempdir().unwrap();
        let store = SledStore::open(src.path()).unwrap();
        store
            .apply_raw(&[(b"k".to_vec(), Some(b"v".to_vec()))])
            .unwrap();
        let first = store.next_id().unwrap();
        let bytes = store.snapshot().unwrap();
        drop(store);
        let dst = tempfile::tempdir().unwrap();
        let into = dst.path().join("data");
        assert_eq!(
            restore(&bytes, &into).unwrap(),
            2,
            "the record and the id floor"
        );
        assert!(restore(&bytes, &into).is_err(), "not into a used dir");
        assert!(
            !dst.path().join("data.restoring").exists(),
            "moved into place"
        );
        let restored = SledStore::open(&into).unwrap();
        assert!(
            restored.next_id().unwrap() > first,
            "ids stay above the snapshot's"
        );
        assert_eq!(restored.snapshot().unwrap().len(), bytes.len());
        // an empty directory given for it (a mount point) is narrowed to its owner
        use std::os::unix::fs::PermissionsExt;
        let mount = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        std::fs::set_permissions(mount.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        restore(&bytes, mount.path()).unwrap();
        assert_eq!(mode(mount.path()), 0o700);
        assert_eq!(mode(&into), 0o700);
    }
}
