//! The identity key file.
//!
//! `identity.key` in the data dir holds the Ed25519 PKCS#8 document. It is created with mode
//! 0600 on first run; loading refuses a file that others can read (someone may have copied
//! the key) and a corrupt file, each with an error that says what to do.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use p2pcall_transport::Identity;

/// File name of the key in the data dir.
pub const KEY_FILE: &str = "identity.key";

/// Why the identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The data dir or key file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// File or directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Group or others may read the key.
    #[error(
        "{path} is readable by other users (mode {mode:o}); protect it with `chmod 600 {path}` (and create a new identity if others may have copied it)"
    )]
    Permissions {
        /// Key file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// The file is not a valid key.
    #[error(
        "{path} is not a valid identity key ({reason}); restore it from a backup, or move it away to create a new identity (peers will see a changed key)"
    )]
    Corrupt {
        /// Key file.
        path: PathBuf,
        /// Parser message.
        reason: String,
    },
    /// Key generation failed.
    #[error("could not create a key: {0}")]
    Generate(#[source] p2pcall_transport::TlsError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Loads the identity from `data_dir`, creating it (and the dir) on first run.
/// Returns the identity and whether it was created now.
pub fn load_or_create(data_dir: &Path) -> Result<(Identity, bool), IdentityError> {
    let path = data_dir.join(KEY_FILE);
    match fs::read(&path) {
        Ok(bytes) => {
            check_permissions(&path)?;
            let id = Identity::from_pkcs8(&bytes).map_err(|e| IdentityError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            Ok((id, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            create_private_dir(data_dir)?;
            let id = Identity::generate().map_err(IdentityError::Generate)?;
            write_private(&path, id.pkcs8())?;
            Ok((id, true))
        }
        Err(e) => Err(io_err(&path)(e)),
    }
}

#[cfg(unix)]
fn check_permissions(path: &Path) -> Result<(), IdentityError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(path)
        .map_err(io_err(path))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(IdentityError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_permissions(_path: &Path) -> Result<(), IdentityError> {
    Ok(())
}

fn create_private_dir(dir: &Path) -> Result<(), IdentityError> {
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir).map_err(io_err(dir))
}

/// Writes a secret file atomically with mode 0600 (temp file, fsync, rename).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), IdentityError> {
    let tmp = path.with_extension("key.tmp");
    let mut o = fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let _ = fs::remove_file(&tmp);
    let mut f = o.open(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("nested");
        let (a, created) = load_or_create(&d).unwrap();
        assert!(created);
        let (b, created) = load_or_create(&d).unwrap();
        assert!(!created);
        assert_eq!(a.id(), b.id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(d.join(KEY_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[cfg(unix)]
    #[test]
    fn readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path()).unwrap();
        let p = dir.path().join(KEY_FILE);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create(dir.path()).unwrap_err();
        assert!(
            matches!(e, IdentityError::Permissions { mode: 0o644, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("chmod 600"));
    }

    #[test]
    fn corrupt_key_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path()).unwrap();
        let p = dir.path().join(KEY_FILE);
        let mut bytes = fs::read(&p).unwrap();
        bytes.truncate(10);
        fs::write(&p, bytes).unwrap();
        let e = load_or_create(dir.path()).unwrap_err();
        assert!(matches!(e, IdentityError::Corrupt { .. }), "{e}");
    }
}
