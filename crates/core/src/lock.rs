//! One engine per identity: whoever runs an engine on a data dir holds an exclusive lock
//! on its `engine.lock` (an advisory `flock`, released by the kernel when the process ends,
//! even by `kill -9`). The file says who holds it, for the refusal's message.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The lock file in the data dir.
pub const LOCK_FILE: &str = "engine.lock";

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process runs an engine on this data dir.
    #[error(
        "another p2pcall engine runs on {}: {holder}. The commands on this data dir use it already (peers, chat, send, call, listen, …); to run this one instead, stop it first, or pass --data-dir for another identity",
        data_dir.display()
    )]
    Held {
        /// The data dir.
        data_dir: PathBuf,
        /// Who holds it, as its lock file says ("`listen`, pid 4242").
        holder: String,
    },
    /// The lock file cannot be opened or locked.
    #[error("cannot lock {}: {source}", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Held while the engine runs; dropping it releases the data dir.
#[derive(Debug)]
pub struct EngineLock {
    _file: File,
}

impl EngineLock {
    /// Takes the lock of `data_dir` for `what` (e.g. "`listen`"), or says who holds it.
    pub fn acquire(data_dir: &Path, what: &str) -> Result<Self, LockError> {
        let path = data_dir.join(LOCK_FILE);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(data_dir).map_err(io)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(LockError::Held {
                    data_dir: data_dir.to_path_buf(),
                    holder: if holder.is_empty() {
                        "a process that did not say what it is".into()
                    } else {
                        holder.to_string()
                    },
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{what}, pid {}", std::process::id()).map_err(io)?;
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_engine_on_a_data_dir_is_refused_until_the_first_ends() {
        let dir = tempfile::tempdir().unwrap();
        let first = EngineLock::acquire(dir.path(), "`listen`").unwrap();
        let err = EngineLock::acquire(dir.path(), "`chat`").unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, LockError::Held { .. }), "{err:?}");
        assert!(
            text.contains(&format!("`listen`, pid {}", std::process::id())),
            "{text}"
        );
        drop(first);
        let again = EngineLock::acquire(dir.path(), "`chat`");
        assert!(again.is_ok(), "released when the first one ends");
    }
}
