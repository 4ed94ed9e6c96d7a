//! The control plane's 32-byte secrets (the Ed25519 signing seed, the data key): loaded from a
//! file (created with random bytes and mode 0600 when missing) or generated for this process
//! only. A secret never reaches a log.

use rand::RngCore as _;
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};

/// Why the seed file could not be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyFileError {
    #[error("key file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("key file {path} must hold exactly 32 bytes, it holds {len}")]
    Length { path: PathBuf, len: usize },
}

/// A seed for this process only.
pub(crate) fn ephemeral_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    seed
}

/// Reads the 32-byte seed at `path`, creating the file (and its parent directories) with a
/// random seed and mode 0600 if it does not exist.
pub(crate) fn load_or_create_seed(path: &Path) -> Result<[u8; 32], KeyFileError> {
    let io_err = |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    };
    match read_seed(path) {
        Err(KeyFileError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
        other => return other,
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io_err)?;
    }
    let seed = ephemeral_seed();
    match create_private(path) {
        Ok(mut file) => {
            file.write_all(&seed).map_err(io_err)?;
            file.sync_all().map_err(io_err)?;
            tracing::info!(path = %path.display(), "created a new key file");
            Ok(seed)
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read_seed(path),
        Err(e) => Err(io_err(e)),
    }
}

fn read_seed(path: &Path) -> Result<[u8; 32], KeyFileError> {
    let io_err = |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io_err)?;
    warn_if_readable_by_others(path, &file);
    let mut bytes = Vec::with_capacity(33);
    (&file).take(33).read_to_end(&mut bytes).map_err(io_err)?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| KeyFileError::Length {
        path: path.to_owned(),
        len: bytes.len(),
    })
}

#[cfg(unix)]
fn create_private(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn create_private(path: &Path) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path, file: &std::fs::File) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = file.metadata()
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %path.display(), "key file is accessible to group or others");
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path, _file: &std::fs::File) {}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir() -> PathBuf {
        std::env::temp_dir().join(format!("convoy-keys-{}", uuid::Uuid::now_v7()))
    }

    #[test]
    fn a_missing_seed_is_created_private_and_then_reused() {
        let dir = temp_dir();
        let path = dir.join("nested/signing.key");
        let first = load_or_create_seed(&path).unwrap();
        let again = load_or_create_seed(&path).unwrap();
        assert_eq!(first, again);
        assert_eq!(std::fs::read(&path).unwrap(), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_seed_file_of_the_wrong_length_is_refused() {
        let dir = temp_dir();
        std::fs::create_dir_all(&dir).unwrap();
        for len in [0, 31, 33] {
            let path = dir.join(format!("k{len}"));
            std::fs::write(&path, vec![1u8; len]).unwrap();
            match load_or_create_seed(&path) {
                Err(KeyFileError::Length { len: got, .. }) => assert_eq!(got, len.min(33)),
                other => panic!("{len}: {:?}", other.map(|_| "a seed")),
            }
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
