//! Partial files of unfinished incoming transfers: what is on disk, and removing it.
//!
//! An interrupted transfer keeps its partial files (`.p2pcall-<id>-<entry>.part`, next to
//! where each file will land) so that the same transfer resumes from its verified chunks.
//! One that is never resumed is *abandoned*: `p2pcall transfers` lists it with the space its
//! partial files take, `p2pcall transfers clean` removes them, and the engine removes those
//! of transfers untouched for longer than the `partial_max_age_days` setting when it starts
//! (and every hour while it runs).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use p2pcall_store::{Store, TransferRecord, TransferState, now_ms};

use crate::error::EngineError;

/// Folder levels searched for partial files below a transfer's top-level folders.
const MAX_DEPTH: usize = 64;

/// An unfinished incoming transfer and its partial files.
#[derive(Debug, Clone)]
pub struct Unfinished {
    /// The transfer.
    pub record: TransferRecord,
    /// Its partial files on disk.
    pub partials: Vec<PathBuf>,
    /// Disk space they take (allocated blocks: partial files are sparse).
    pub partial_bytes: u64,
}

/// What a clean removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cleaned {
    /// Transfers given up.
    pub transfers: usize,
    /// Partial files removed.
    pub files: usize,
    /// Disk space freed.
    pub bytes: u64,
}

/// Every unfinished incoming transfer (offered or interrupted), oldest first, with the
/// partial files it left.
pub fn unfinished(store: &Store) -> Result<Vec<Unfinished>, EngineError> {
    unfinished_where(store, |_| true)
}

/// The unfinished incoming transfers `which` selects, with their partial files (only theirs
/// are looked for on disk: the engine's clean at start-up skips every young transfer).
fn unfinished_where(
    store: &Store,
    which: impl Fn(&TransferRecord) -> bool,
) -> Result<Vec<Unfinished>, EngineError> {
    let mut out = Vec::new();
    for record in store.open_incoming()?.into_iter().filter(|r| which(r)) {
        let partials = partial_files(store, &record)?;
        let partial_bytes = partials
            .iter()
            .filter_map(|p| std::fs::symlink_metadata(p).ok())
            .map(|m| m.blocks() * 512)
            .sum();
        out.push(Unfinished {
            record,
            partials,
            partial_bytes,
        });
    }
    Ok(out)
}

/// Gives up the unfinished incoming transfers `which` selects: removes their partial files
/// (and the folders they alone filled), and marks them cancelled so that the sender's next
/// attempt asks again instead of resuming.
pub fn clean(
    store: &Store,
    which: impl Fn(&TransferRecord) -> bool,
) -> Result<Cleaned, EngineError> {
    let mut c = Cleaned::default();
    for u in unfinished_where(store, which)? {
        for p in &u.partials {
            if std::fs::remove_file(p).is_ok() {
                c.files += 1;
            }
        }
        c.bytes += u.partial_bytes;
        remove_empty_tops(store, &u.record);
        store.set_transfer_state(
            u.record.rowid,
            TransferState::Cancelled,
            Some("abandoned: its partial files were removed"),
            now_ms(),
        )?;
        c.transfers += 1;
    }
    Ok(c)
}

/// Gives up the unfinished incoming transfers untouched for longer than `age`, except
/// those `running` says are being received now.
pub fn clean_older_than(
    store: &Store,
    age: Duration,
    running: impl Fn(&TransferRecord) -> bool,
) -> Result<Cleaned, EngineError> {
    let cutoff = now_ms().saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX));
    clean(store, |r| r.updated_ms <= cutoff && !running(r))
}

/// The file-name prefix of a transfer's partial files.
fn prefix(r: &TransferRecord) -> String {
    format!(".p2pcall-{}-", &r.id.to_string()[..16])
}

/// The partial files of `r`: directly in its folder (top-level files) and anywhere below
/// the top-level folders it created (never following symlinks).
fn partial_files(store: &Store, r: &TransferRecord) -> Result<Vec<PathBuf>, EngineError> {
    let Some(dest) = &r.dest else {
        return Ok(Vec::new());
    };
    let prefix = prefix(r);
    let mut out = Vec::new();
    collect(dest, &prefix, 0, false, &mut out);
    for name in store.top_names(r.rowid)?.values() {
        let top = dest.join(name);
        if std::fs::symlink_metadata(&top).is_ok_and(|m| m.is_dir()) {
            collect(&top, &prefix, 0, true, &mut out);
        }
    }
    out.sort();
    Ok(out)
}

fn collect(dir: &Path, prefix: &str, depth: usize, recurse: bool, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(ty) = e.file_type() else { continue };
        let name = e.file_name();
        let name = name.to_string_lossy();
        if ty.is_file() && name.starts_with(prefix) && name.ends_with(".part") {
            out.push(e.path());
        } else if ty.is_dir() && recurse && depth < MAX_DEPTH {
            collect(&e.path(), prefix, depth + 1, true, out);
        }
    }
}

/// Removes the top-level folders of `r` that hold nothing but empty folders now (a folder
/// tree whose files never arrived); a folder with any file in it stays.
fn remove_empty_tops(store: &Store, r: &TransferRecord) {
    let (Some(dest), Ok(names)) = (&r.dest, store.top_names(r.rowid)) else {
        return;
    };
    for name in names.values() {
        remove_if_empty(&dest.join(name), 0);
    }
}

fn remove_if_empty(dir: &Path, depth: usize) -> bool {
    if depth > MAX_DEPTH || !std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
        return false;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    let mut empty = true;
    for e in entries.flatten() {
        let sub_empty =
            e.file_type().is_ok_and(|t| t.is_dir()) && remove_if_empty(&e.path(), depth + 1);
        empty &= sub_empty;
    }
    empty && std::fs::remove_dir(dir).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2pcall_proto::PeerId;
    use p2pcall_proto::transfer::TransferId;
    use std::collections::HashMap;

    /// An incoming transfer of a top-level file `a.txt` and a folder `d` (renamed `d (1)`
    /// on arrival), interrupted with two partial files.
    fn interrupted(store: &Store, dest: &Path, id: u8) -> TransferRecord {
        let peer = PeerId::from_bytes([id; 32]);
        let r = store
            .create_transfer(
                &peer,
                false,
                &TransferId::from_bytes([id; 16]),
                300,
                2,
                &[],
                None,
                now_ms(),
            )
            .unwrap();
        store.set_transfer_dest(r.rowid, dest).unwrap();
        store
            .set_top_names(
                r.rowid,
                &HashMap::from([
                    ("a.txt".to_string(), "a.txt".to_string()),
                    ("d".to_string(), "d (1)".to_string()),
                ]),
            )
            .unwrap();
        store
            .set_transfer_state(r.rowid, TransferState::Active, None, now_ms())
            .unwrap();
        let hex = &TransferId::from_bytes([id; 16]).to_string()[..16];
        std::fs::write(dest.join(format!(".p2pcall-{hex}-0.part")), [1u8; 100]).unwrap();
        std::fs::create_dir_all(dest.join("d (1)/sub/empty")).unwrap();
        std::fs::write(
            dest.join(format!("d (1)/sub/.p2pcall-{hex}-2.part")),
            [2u8; 200],
        )
        .unwrap();
        store
            .transfer(&peer, false, &TransferId::from_bytes([id; 16]))
            .unwrap()
            .unwrap()
    }

    #[test]
    fn abandoned_partials_are_listed_and_cleaned_and_nothing_else_is_touched() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in_memory().unwrap();
        let one = interrupted(&store, dir.path(), 1);
        let two = interrupted(&store, dir.path(), 2);
        // Files that are not partials of these transfers stay.
        std::fs::write(dir.path().join("mine.txt"), b"keep").unwrap();
        std::fs::write(dir.path().join(".p2pcall-ffffffffffffffff-0.part"), b"x").unwrap();

        let u = unfinished(&store).unwrap();
        assert_eq!(u.len(), 2);
        assert_eq!(u[0].record.rowid, one.rowid);
        assert_eq!(u[0].partials.len(), 2, "{:?}", u[0].partials);
        assert!(u[0].partial_bytes >= 300, "{}", u[0].partial_bytes);

        // Young transfers survive an age-based clean; a running one survives any.
        let c = clean_older_than(&store, Duration::from_secs(3600), |_| false).unwrap();
        assert_eq!(c, Cleaned::default());
        let c = clean_older_than(&store, Duration::ZERO, |r| r.rowid == two.rowid).unwrap();
        assert_eq!(
            c,
            Cleaned {
                transfers: 1,
                files: 2,
                bytes: u[0].partial_bytes
            }
        );
        let left = unfinished(&store).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].record.rowid, two.rowid);
        let gone = store.transfer(&one.peer, false, &one.id).unwrap().unwrap();
        assert_eq!(gone.state, TransferState::Cancelled);
        // The folder still holds transfer two's partial file, so it stays.
        assert!(dir.path().join("d (1)").exists());

        let c = clean(&store, |_| true).unwrap();
        assert_eq!(c.transfers, 1);
        assert!(unfinished(&store).unwrap().is_empty());
        assert!(!dir.path().join("d (1)").exists(), "emptied folders go");
        assert!(dir.path().join("mine.txt").exists());
        assert!(dir.path().join(".p2pcall-ffffffffffffffff-0.part").exists());
    }
}
