//! Filesystem work of a transfer: scanning what to send, and placing what arrives without
//! ever following a symlink out of the target folder or overwriting a file.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use p2pcall_proto::transfer::{Entry, EntryKind};
use p2pcall_transfer::unique_name;

/// What the sender found.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    /// Manifest entries, parents before children.
    pub entries: Vec<Entry>,
    /// Source path of each entry.
    pub sources: Vec<PathBuf>,
    /// Symlinks and special files left out.
    pub skipped: Vec<PathBuf>,
}

impl Scan {
    /// Files, folders, and the sum of the files' sizes.
    pub(crate) fn totals(&self) -> (u64, u64, u64) {
        self.entries
            .iter()
            .fold((0, 0, 0), |(f, d, t), e| match e.kind {
                EntryKind::File { size } => (f + 1, d, t + size),
                EntryKind::Dir => (f, d + 1, t),
            })
    }
}

fn mtime(m: &fs::Metadata) -> i64 {
    m.mtime()
}

/// Walks `paths` (files or folders) into a manifest. Entry paths are relative to each
/// path's parent, so `send ~/photos` offers `photos/...`.
pub(crate) fn scan(paths: &[PathBuf]) -> Result<Scan, (PathBuf, io::Error)> {
    let mut s = Scan::default();
    let mut tops = std::collections::HashSet::new();
    for p in paths {
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| {
                (
                    p.clone(),
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "the path has no UTF-8 file name",
                    ),
                )
            })?
            .to_string();
        if !tops.insert(name.clone()) {
            return Err((
                p.clone(),
                io::Error::new(io::ErrorKind::InvalidInput, "two paths have the same name"),
            ));
        }
        walk(p, name, &mut s).map_err(|e| (p.clone(), e))?;
    }
    Ok(s)
}

fn walk(path: &Path, rel: String, s: &mut Scan) -> io::Result<()> {
    let m = fs::symlink_metadata(path)?;
    let ft = m.file_type();
    if ft.is_dir() {
        s.entries.push(Entry {
            path: rel.clone(),
            kind: EntryKind::Dir,
            mode: m.mode(),
            mtime: mtime(&m),
        });
        s.sources.push(path.to_path_buf());
        let mut children: Vec<_> = fs::read_dir(path)?.collect::<io::Result<_>>()?;
        children.sort_by_key(|e| e.file_name());
        for c in children {
            let Some(name) = c.file_name().to_str().map(str::to_string) else {
                s.skipped.push(c.path());
                continue;
            };
            walk(&c.path(), format!("{rel}/{name}"), s)?;
        }
    } else if ft.is_file() {
        s.entries.push(Entry {
            path: rel,
            kind: EntryKind::File { size: m.len() },
            mode: m.mode(),
            mtime: mtime(&m),
        });
        s.sources.push(path.to_path_buf());
    } else {
        s.skipped.push(path.to_path_buf());
    }
    Ok(())
}

/// Free bytes for an unprivileged writer on the filesystem holding `dir`.
pub(crate) fn free_space(dir: &Path) -> io::Result<u64> {
    let st = rustix::fs::statvfs(dir).map_err(io::Error::from)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Error for a path that would leave the target folder.
fn escape(p: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "{} is not a plain folder (a symlink or a file): refusing to write through it",
            p.display()
        ),
    )
}

/// Makes sure `base/components...` is a chain of real folders (creating the missing ones),
/// never passing through a symlink.
pub(crate) fn ensure_dirs(base: &Path, components: &[String]) -> io::Result<PathBuf> {
    let mut cur = base.to_path_buf();
    for c in components {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => return Err(escape(&cur)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => match fs::create_dir(&cur) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if !fs::symlink_metadata(&cur)?.file_type().is_dir() {
                        return Err(escape(&cur));
                    }
                }
                Err(e) => return Err(e),
            },
            Err(e) => return Err(e),
        }
    }
    Ok(cur)
}

/// Whether anything (even a dangling symlink) has this name.
pub(crate) fn exists(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}

/// Opens (creating if needed) a temporary file, refusing symlinks.
pub(crate) fn open_temp(path: &Path, size: u64) -> io::Result<(File, bool)> {
    let flags = rustix::fs::OFlags::NOFOLLOW.bits() as i32;
    match OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(flags)
        .open(path)
    {
        Ok(f) => {
            f.set_len(size)?;
            Ok((f, true))
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(flags)
                .open(path)?;
            if !f.metadata()?.file_type().is_file() {
                return Err(escape(path));
            }
            f.set_len(size)?;
            Ok((f, false))
        }
        Err(e) => Err(e),
    }
}

/// Opens an existing regular file for reading without following a symlink.
pub(crate) fn open_existing(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)?;
    if !f.metadata()?.file_type().is_file() {
        return Err(escape(path));
    }
    Ok(f)
}

/// Applies permission bits and modification time.
pub(crate) fn set_meta(f: &File, mode: u32, mtime: i64) -> io::Result<()> {
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    if mtime >= 0 {
        f.set_modified(UNIX_EPOCH + Duration::from_secs(mtime as u64))?;
    }
    Ok(())
}

/// Moves `temp` to `dir/name`, or to `dir/name (1)…` when the name is taken by then: never
/// over an existing file. `renameat2(RENAME_NOREPLACE)` does it in one step; where the
/// filesystem lacks it, a hard link (which fails if the target exists) and an unlink; where
/// links are not supported either, a checked rename. Returns the final path.
pub(crate) fn place(temp: &Path, dir: &Path, name: &str) -> io::Result<PathBuf> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    for _ in 0..8 {
        let fin = unique_name(name, |n| exists(&dir.join(n)))
            .map(|n| dir.join(n))
            .ok_or_else(|| io::Error::new(io::ErrorKind::AlreadyExists, "no free name"))?;
        match renameat_with(CWD, temp, CWD, &fin, RenameFlags::NOREPLACE) {
            Ok(()) => return Ok(fin),
            Err(rustix::io::Errno::EXIST) => continue,
            Err(
                rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS | rustix::io::Errno::OPNOTSUPP,
            ) => {}
            Err(e) => return Err(e.into()),
        }
        match fs::hard_link(temp, &fin) {
            Ok(()) => {
                fs::remove_file(temp)?;
                return Ok(fin);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(_) => {
                if exists(&fin) {
                    continue;
                }
                fs::rename(temp, &fin)?;
                return Ok(fin);
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "the target names keep being taken",
    ))
}

/// Sets a folder's permission bits (after its content arrived).
pub(crate) fn set_dir_mode(dir: &Path, mode: u32) -> io::Result<()> {
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
}
