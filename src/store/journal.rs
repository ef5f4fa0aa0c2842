//! The sled store's write-ahead journal: files of Jetway's own to which each group
//! commit appends the key writes of its batches with one `write` and one
//! `fdatasync`, so that a reply waits for neither sled's tree nor its flush (sled is
//! written behind, see `behind`). Hand-written because sled's own flush could not do
//! this: it writes sled's log buffers, which every writer fills under one lock, page
//! by page, and the profile of the booking loop put sled's page reads and writes
//! under that lock at ~40 % of the server's CPU (docs/benchmarks.md); no crate offers
//! a journal that replays into sled.
//!
//! Format, version 1: files `journal/<first sequence number, 20 digits>.jwj`, each
//! beginning with the magic `JETWAYJ1`, then records: the body's length (u32 LE),
//! its CRC-32 (u32 LE), and the body: the batch's sequence number (u64 LE), its
//! write count (u32 LE), and per write a tag (1 put, 0 delete), the key's length
//! (u32 LE) and key, and for a put the value's length (u32 LE) and value. A torn
//! last record (a crash during its append, never acknowledged) ends the replay; damage
//! in any file but the last is reported, not skipped. (Within the last file a torn
//! append cannot be told from damage: pages of an append that was never synced may
//! reach the disk in any order. So the last file's first bad record ends the replay,
//! and the file is kept as `<name>.torn`, with a warning naming the bytes dropped.)
//! Records are numbered one after another across files and across runs (a number is
//! never used twice: see `behind`), and each file is named for its first: a gap
//! between files (one lost from outside) stops the replay with an error; in the last
//! file a record out of sequence, its first included, is a bad record like any other.

use parking_lot::Mutex;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{create_dir_durably, sync_dir, StoreError, StoreResult};

const MAGIC: &[u8; 8] = b"JETWAYJ1";
const EXTENSION: &str = "jwj";
/// A file this large gets no more records: the next append starts a new one, so the
/// files sled has caught up with can be deleted.
const FILE_BYTES: u64 = 8 << 20;

/// One key's write: its new value, or `None` for a delete.
pub type KeyWrite = (sled::IVec, Option<sled::IVec>);

/// One batch as the journal holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub seq: u64,
    pub writes: Vec<KeyWrite>,
}

pub struct Journal {
    dir: PathBuf,
    files: Mutex<Files>,
}

#[derive(Default)]
struct Files {
    /// The last file at open, when it ended in a bad record: kept, not deleted.
    torn: Option<PathBuf>,
    /// The file appended to, with its size.
    current: Option<(File, u64)>,
    /// Every file, current last, each with the first sequence number in it.
    all: Vec<(u64, PathBuf)>,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Io(format!("journal: {what} {}: {e}", path.display()))
}

/// Appends `record`'s encoding to `out`.
pub fn encode(seq: u64, writes: &[KeyWrite], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(writes.len() as u32).to_le_bytes());
    for (k, v) in writes {
        out.push(u8::from(v.is_some()));
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(k);
        if let Some(v) = v {
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
            out.extend_from_slice(v);
        }
    }
    let body = start + 8;
    let len = (out.len() - body) as u32;
    let crc = crc32fast::hash(&out[body..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..body].copy_from_slice(&crc.to_le_bytes());
}

/// Reads a little-endian number of `N` bytes at `*at`, moving past it.
fn take<const N: usize>(bytes: &[u8], at: &mut usize) -> Option<[u8; N]> {
    let out = bytes.get(*at..at.checked_add(N)?)?.try_into().ok()?;
    *at += N;
    Some(out)
}

fn take_slice<'a>(bytes: &'a [u8], at: &mut usize) -> Option<&'a [u8]> {
    let len = u32::from_le_bytes(take::<4>(bytes, at)?) as usize;
    let out = bytes.get(*at..at.checked_add(len)?)?;
    *at += len;
    Some(out)
}

fn decode_body(body: &[u8]) -> Option<Record> {
    let mut at = 0;
    let seq = u64::from_le_bytes(take::<8>(body, &mut at)?);
    let count = u32::from_le_bytes(take::<4>(body, &mut at)?) as usize;
    let mut writes = Vec::with_capacity(count.min(body.len()));
    for _ in 0..count {
        let [tag] = take::<1>(body, &mut at)?;
        let k = sled::IVec::from(take_slice(body, &mut at)?);
        let v = match tag {
            1 => Some(sled::IVec::from(take_slice(body, &mut at)?)),
            0 => None,
            _ => return None,
        };
        writes.push((k, v));
    }
    (at == body.len()).then_some(Record { seq, writes })
}

/// The records of one file, and whether it ended in a torn or damaged record (at
/// that offset).
fn decode_file(bytes: &[u8]) -> (Vec<Record>, Option<usize>) {
    let mut out = Vec::new();
    let mut at = MAGIC.len();
    while at < bytes.len() {
        let start = at;
        let record = (|| {
            let len = u32::from_le_bytes(take::<4>(bytes, &mut at)?) as usize;
            let crc = u32::from_le_bytes(take::<4>(bytes, &mut at)?);
            let body = bytes.get(at..at.checked_add(len)?)?;
            at += len;
            (crc32fast::hash(body) == crc).then_some(())?;
            decode_body(body)
        })();
        match record {
            Some(r) => out.push(r),
            None => return (out, Some(start)),
        }
    }
    (out, None)
}

/// How many of `found`, the records of the file `path` named `first`, continue
/// `before` (the last record of the files before it) without a gap, as appends number
/// them. A gap before the file's first record, or a file named for another record, is
/// a file lost, removed or replaced from outside (this journal deletes its files oldest
/// first, and only once sled holds them): the writes in it would be lost silently, so
/// it is an error. A break after the first record is counted, not refused: in the last
/// file it can only be stale blocks a crash left behind the torn end. So is a `last`
/// file whose first record is numbered below its name (0 counted), unless its name
/// leaves a gap.
fn in_sequence(
    before: Option<u64>,
    first: u64,
    found: &[Record],
    path: &Path,
    last: bool,
) -> StoreResult<usize> {
    let Some(head) = found.first() else {
        return Ok(0);
    };
    let restore = "restore the data dir from a backup (docs/deploy.md)";
    let follows = |l: u64, seq: u64| l.checked_add(1) == Some(seq);
    // the last file's first append was never acknowledged if it is not there: a
    // crash may leave stale blocks of a deleted file in its place, numbered below any
    // record of this file (numbers are never used again, see `behind`); a number
    // above the name is no such block (a file renamed from outside), an error
    if head.seq < first && last && before.is_none_or(|l| follows(l, first)) {
        return Ok(0);
    }
    if head.seq != first {
        return Err(StoreError::Corrupt(format!(
            "journal: {} is named for record {first} but begins with record {} (a file \
             renamed or replaced from outside, or damaged): {restore}",
            path.display(),
            head.seq
        )));
    }
    if let Some(l) = before.filter(|&l| !follows(l, head.seq)) {
        let what = if head.seq > l.saturating_add(1) {
            let (from, to) = (l + 1, head.seq - 1);
            match from == to {
                true => format!("record {from} is missing before {}", path.display()),
                false => format!(
                    "records {from} to {to} are missing before {}",
                    path.display()
                ),
            }
        } else {
            format!(
                "{} begins with record {}, after record {l} in the file before it",
                path.display(),
                head.seq
            )
        };
        return Err(StoreError::Corrupt(format!(
            "journal: {what} (a journal file lost or removed from outside, or damaged): \
             {restore}"
        )));
    }
    Ok(1 + found
        .windows(2)
        .take_while(|w| follows(w[0].seq, w[1].seq))
        .count())
}

impl Files {
    /// Deletes the oldest file (a torn one is renamed `.torn` instead), and forgets it
    /// only once it is gone.
    fn remove_first(&mut self) -> StoreResult<()> {
        let Some((_, path)) = self.all.first() else {
            return Ok(());
        };
        if self.torn.as_ref() == Some(path) {
            // named by when, so that an earlier one is not overwritten
            let when = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            let aside = path.with_extension(format!("{when}.torn"));
            std::fs::rename(path, &aside).map_err(|e| io("renaming", path, e))?;
            self.torn = None;
        } else {
            std::fs::remove_file(path).map_err(|e| io("removing", path, e))?;
        }
        // durable before the next file goes, so that a crash never leaves an older file
        // without a newer one: a gap the next start would refuse
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
        self.all.remove(0);
        Ok(())
    }
}

impl Journal {
    /// Opens the journal in `dir` (created if missing) and returns every record in
    /// it, oldest first: what a crash may have left unwritten to sled.
    pub fn open(dir: &Path) -> StoreResult<(Journal, Vec<Record>)> {
        // the directory's own entry must survive a crash with the records in it
        create_dir_durably(dir)?;
        let mut all = Vec::new();
        let mut torn = None;
        for entry in std::fs::read_dir(dir).map_err(|e| io("listing", dir, e))? {
            let path = entry.map_err(|e| io("listing", dir, e))?.path();
            if path.extension().and_then(|e| e.to_str()) != Some(EXTENSION) {
                continue;
            }
            let first = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| {
                    StoreError::Corrupt(format!("journal: unexpected file {}", path.display()))
                })?;
            all.push((first, path));
        }
        all.sort();
        let mut records: Vec<Record> = Vec::new();
        for (i, (first, path)) in all.iter().enumerate() {
            let bytes = std::fs::read(path).map_err(|e| io("reading", path, e))?;
            if !bytes.starts_with(MAGIC) {
                // a file created by a crash before its magic was written (or reached
                // the disk: zeros) holds nothing
                let unwritten = bytes.len() < MAGIC.len() && MAGIC.starts_with(&bytes);
                let last = i + 1 == all.len();
                if unwritten || (last && bytes.iter().all(|&b| b == 0)) {
                    continue;
                }
                // the last file's first page may not have reached the disk when a later
                // one did (a crash during its first append, never acknowledged); a
                // journal of another version is never taken for that
                if last && !bytes.starts_with(&MAGIC[..MAGIC.len() - 1]) {
                    tracing::warn!(
                        file = %path.display(),
                        dropped_bytes = bytes.len(),
                        "the journal's last file does not begin as a journal file: an \
                         append a crash interrupted (never acknowledged) or damage; \
                         keeping it as .torn"
                    );
                    torn = Some(path.clone());
                    continue;
                }
                return Err(StoreError::Corrupt(format!(
                    "journal: {} is not a version 1 journal file (this release reads only \
                     version 1)",
                    path.display()
                )));
            }
            let (found, damaged) = decode_file(&bytes);
            if let Some(offset) = damaged {
                if i + 1 < all.len() {
                    return Err(StoreError::Corrupt(format!(
                        "journal: {} is damaged at byte {offset}, before the last file: \
                         restore the data dir from a backup (docs/deploy.md)",
                        path.display()
                    )));
                }
                tracing::warn!(
                    file = %path.display(),
                    offset,
                    dropped_bytes = bytes.len() - offset,
                    "the journal ends in a torn or damaged record: an append a crash \
                     interrupted (never acknowledged) or damage; replaying what comes \
                     before it, and keeping the file as .torn"
                );
                torn = Some(path.clone());
            }
            let mut found = found;
            let last = i + 1 == all.len();
            let good = in_sequence(records.last().map(|r| r.seq), *first, &found, path, last)?;
            if good < found.len() {
                if i + 1 < all.len() {
                    return Err(StoreError::Corrupt(format!(
                        "journal: {} holds records out of sequence, before the last file: \
                         restore the data dir from a backup (docs/deploy.md)",
                        path.display()
                    )));
                }
                tracing::warn!(
                    file = %path.display(),
                    dropped_records = found.len() - good,
                    "the journal's last file continues out of sequence: blocks a crash \
                     left behind its torn end; replaying what comes before, and keeping \
                     the file as .torn"
                );
                found.truncate(good);
                torn = Some(path.clone());
            }
            records.extend(found);
        }
        let journal = Journal {
            dir: dir.to_path_buf(),
            files: Mutex::new(Files {
                torn,
                current: None,
                all,
            }),
        };
        Ok((journal, records))
    }

    /// Appends `bytes` (encoded records, the first numbered `first_seq`) and makes
    /// them durable.
    pub fn append(&self, bytes: &[u8], first_seq: u64) -> StoreResult<()> {
        let mut files = self.files.lock();
        if files
            .current
            .as_ref()
            .is_none_or(|(_, size)| *size >= FILE_BYTES)
        {
            let path = self.dir.join(format!("{first_seq:020}.{EXTENSION}"));
            let mut f = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&path)
                .map_err(|e| io("creating", &path, e))?;
            f.write_all(MAGIC).map_err(|e| io("writing", &path, e))?;
            // the file's name must survive a crash with the records acknowledged in it
            sync_dir(&self.dir)?;
            files.current = Some((f, MAGIC.len() as u64));
            files.all.push((first_seq, path));
        }
        let Some((f, size)) = files.current.as_mut() else {
            return Err(StoreError::Io("journal: no file to append to".into()));
        };
        f.write_all(bytes)
            .and_then(|()| f.sync_data())
            .map_err(|e| io("appending to", &self.dir, e))?;
        *size += bytes.len() as u64;
        Ok(())
    }

    /// Deletes the files whose every record is numbered at most `seq` (sled holds
    /// them durably), except the one appended to.
    pub fn release_through(&self, seq: u64) -> StoreResult<()> {
        let mut files = self.files.lock();
        let current = files.current.is_some();
        let keep_last = usize::from(current);
        let mut gone = 0;
        while files.all.len() > gone + keep_last {
            // a file's last record is numbered below the next file's first
            let next_first = files.all.get(gone + 1).map(|(first, _)| *first);
            if next_first.is_none_or(|next| next > seq + 1) {
                break;
            }
            gone += 1;
        }
        for _ in 0..gone {
            files.remove_first()?;
        }
        Ok(())
    }

    /// Deletes every file (sled holds all they held durably; call it with no append
    /// running): the next append starts a new one.
    pub fn release_all(&self) -> StoreResult<()> {
        let mut files = self.files.lock();
        files.current = None;
        while !files.all.is_empty() {
            files.remove_first()?;
        }
        sync_dir(&self.dir)
    }

    /// How many files it has.
    #[cfg(test)]
    pub fn files(&self) -> usize {
        self.files.lock().all.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(k: &str, v: Option<&str>) -> KeyWrite {
        (k.as_bytes().into(), v.map(|v| v.as_bytes().into()))
    }

    #[test]
    fn records_survive_reopen_and_a_torn_tail_ends_the_replay() {
        let dir = tempfile::tempdir().unwrap();
        let (j, found) = Journal::open(dir.path()).unwrap();
        assert!(found.is_empty());
        let mut bytes = Vec::new();
        encode(1, &[w("a", Some("1")), w("b", None)], &mut bytes);
        encode(2, &[w("a", Some(""))], &mut bytes);
        j.append(&bytes, 1).unwrap();
        let mut torn = Vec::new();
        encode(3, &[w("c", Some("3"))], &mut torn);
        j.append(&torn[..torn.len() - 1], 3).unwrap();
        drop(j);
        let (j, found) = Journal::open(dir.path()).unwrap();
        j.release_all().unwrap();
        let names = file_names(dir.path());
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(
            names[0].starts_with(&format!("{:020}.", 1)) && names[0].ends_with(".torn"),
            "kept aside, not replayed again: {names:?}"
        );
        assert_eq!(
            found,
            vec![
                Record {
                    seq: 1,
                    writes: vec![w("a", Some("1")), w("b", None)]
                },
                Record {
                    seq: 2,
                    writes: vec![w("a", Some(""))]
                },
            ]
        );
    }

    /// Three files of one record each, numbered 1, 2, 3.
    fn three_files(dir: &Path) -> Vec<PathBuf> {
        let (j, _) = Journal::open(dir).unwrap();
        for seq in 1..=3 {
            if let Some((_, size)) = j.files.lock().current.as_mut() {
                *size = FILE_BYTES;
            }
            let mut bytes = Vec::new();
            encode(seq, &[w(&format!("k{seq}"), Some("v"))], &mut bytes);
            j.append(&bytes, seq).unwrap();
        }
        assert_eq!(j.files(), 3);
        (1..=3)
            .map(|seq| dir.join(format!("{seq:020}.{EXTENSION}")))
            .collect()
    }

    #[test]
    fn a_file_lost_from_the_middle_stops_the_replay_with_the_missing_records_named() {
        let dir = tempfile::tempdir().unwrap();
        let files = three_files(dir.path());
        let (_, found) = Journal::open(dir.path()).unwrap();
        assert_eq!(seqs(&found), [1, 2, 3]);
        std::fs::remove_file(&files[1]).unwrap();
        let err = refusal(dir.path());
        assert!(
            err.contains("record 2 is missing before") && err.contains("backup"),
            "{err}"
        );
    }

    #[test]
    fn a_file_whose_name_and_first_record_disagree_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let files = three_files(dir.path());
        std::fs::remove_file(&files[2]).unwrap();
        std::fs::rename(&files[1], &files[2]).unwrap();
        let err = refusal(dir.path());
        assert!(
            err.contains("named for record 3 but begins with record 2"),
            "{err}"
        );
        // the oldest files released (as sled caught up) leave no gap behind
        let dir = tempfile::tempdir().unwrap();
        let files = three_files(dir.path());
        std::fs::remove_file(&files[0]).unwrap();
        let (_, found) = Journal::open(dir.path()).unwrap();
        assert_eq!(seqs(&found), [2, 3]);
    }

    fn seqs(found: &[Record]) -> Vec<u64> {
        found.iter().map(|r| r.seq).collect()
    }

    /// Why the journal in `dir` does not open.
    fn refusal(dir: &Path) -> String {
        Journal::open(dir).err().unwrap().to_string()
    }

    fn file_names(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// What a crash can leave at the end of the last file (stale blocks that pass
    /// their checksums, a first page that never reached the disk) ends the replay
    /// there instead of stopping the start.
    #[test]
    fn the_last_file_torn_out_of_sequence_or_without_its_first_page_ends_the_replay() {
        let dir = tempfile::tempdir().unwrap();
        let files = three_files(dir.path());
        let mut stale = Vec::new();
        encode(7, &[w("old", Some("x"))], &mut stale);
        let mut f = OpenOptions::new().append(true).open(&files[2]).unwrap();
        f.write_all(&stale).unwrap();
        drop(f);
        let (j, found) = Journal::open(dir.path()).unwrap();
        assert_eq!(seqs(&found), [1, 2, 3]);
        j.release_all().unwrap();
        let torn = file_names(dir.path())
            .iter()
            .filter(|n| n.ends_with(".torn"))
            .count();
        assert_eq!(torn, 1, "kept aside");

        let dir = tempfile::tempdir().unwrap();
        three_files(dir.path());
        let fourth = dir.path().join(format!("{:020}.{EXTENSION}", 4));
        std::fs::write(&fourth, [0u8, 0, 0, 0, 0, 0, 0, 0, 9, 9, 9]).unwrap();
        let (_, found) = Journal::open(dir.path()).unwrap();
        assert_eq!(seqs(&found), [1, 2, 3]);
        // a journal of another version is never taken for a torn file
        std::fs::write(&fourth, b"JETWAYJ2 and more").unwrap();
        let err = refusal(dir.path());
        assert!(err.contains("not a version 1 journal file"), "{err}");
    }

    /// A crash during the last file's first append may leave, in its place, blocks
    /// of a journal file deleted earlier: records that pass their checksums but are
    /// numbered below the file's name. They end the replay; the start used to be
    /// refused. Before the last file the same stays an error.
    #[test]
    fn a_last_file_beginning_with_a_stale_record_ends_the_replay() {
        let dir = tempfile::tempdir().unwrap();
        let files = three_files(dir.path());
        let mut stale = MAGIC.to_vec();
        encode(1, &[w("old", Some("x"))], &mut stale);
        std::fs::write(&files[2], &stale).unwrap();
        let (j, found) = Journal::open(dir.path()).unwrap();
        assert_eq!(seqs(&found), [1, 2]);
        j.release_all().unwrap();
        let kept = file_names(dir.path());
        assert!(
            kept.len() == 1 && kept[0].ends_with(".torn"),
            "kept aside: {kept:?}"
        );

        let dir = tempfile::tempdir().unwrap();
        let files = three_files(dir.path());
        std::fs::write(&files[1], &stale).unwrap();
        let err = refusal(dir.path());
        assert!(
            err.contains("named for record 2 but begins with record 1"),
            "{err}"
        );
        // a last file numbered above its name is no stale block: renamed from outside
        let dir = tempfile::tempdir().unwrap();
        let files = three_files(dir.path());
        let mut ahead = MAGIC.to_vec();
        encode(9, &[w("new", Some("x"))], &mut ahead);
        std::fs::write(&files[2], &ahead).unwrap();
        let err = refusal(dir.path());
        assert!(
            err.contains("named for record 3 but begins with record 9"),
            "{err}"
        );
    }

    #[test]
    fn damage_before_the_last_file_is_reported_and_released_files_go() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path()).unwrap();
        let mut one = Vec::new();
        encode(1, &[w("a", Some("1"))], &mut one);
        j.append(&one, 1).unwrap();
        // force a second file
        j.files.lock().current.as_mut().unwrap().1 = FILE_BYTES;
        let mut two = Vec::new();
        encode(2, &[w("b", Some("2"))], &mut two);
        j.append(&two, 2).unwrap();
        assert_eq!(j.files(), 2);
        drop(j);
        let first = dir.path().join(format!("{:020}.{EXTENSION}", 1));
        let mut bytes = std::fs::read(&first).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&first, &bytes).unwrap();
        let err = refusal(dir.path());
        assert!(err.contains("damaged"), "{err}");
        bytes[last] ^= 1;
        std::fs::write(&first, &bytes).unwrap();
        let (j, found) = Journal::open(dir.path()).unwrap();
        assert_eq!(found.len(), 2);
        j.append(&[], 3).unwrap();
        j.release_through(1).unwrap();
        assert_eq!(j.files(), 2, "only the first file goes");
        j.release_through(2).unwrap();
        assert_eq!(j.files(), 1);
        assert!(!first.exists());
    }
}
