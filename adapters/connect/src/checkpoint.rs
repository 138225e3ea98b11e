//! Durable checkpoints: a source's state (where its stream stands, how far its snapshot got)
//! kept in one small JSON file, replaced atomically (write a temporary file, fsync it, rename it
//! over the old one, fsync the directory), so that a crash at any instant leaves either the old
//! checkpoint or the new one, never a torn mix.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A checkpoint file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Reading or writing failed.
    #[error("checkpoint {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a checkpoint of this kind.
    #[error("checkpoint {path} is unreadable ({source}); move it away to start over")]
    Format {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
}

/// One checkpoint file.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    path: PathBuf,
}

impl CheckpointStore {
    /// The checkpoint at `path` (created on the first save, with its directory).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        CheckpointStore { path: path.into() }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved state, `None` when nothing was saved yet.
    pub fn load<T: DeserializeOwned>(&self) -> Result<Option<T>, CheckpointError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| CheckpointError::Format {
                    path: self.path.clone(),
                    source,
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(self.io(source)),
        }
    }

    /// Replaces the saved state with `state`, durably.
    pub fn save<T: Serialize>(&self, state: &T) -> Result<(), CheckpointError> {
        let bytes = serde_json::to_vec_pretty(state).map_err(|source| CheckpointError::Format {
            path: self.path.clone(),
            source,
        })?;
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir).map_err(|e| self.io(e))?;
        let mut tmp_name = self.path.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(".tmp");
        let tmp = dir.join(tmp_name);
        let mut file = std::fs::File::create(&tmp).map_err(|e| self.io(e))?;
        file.write_all(&bytes).map_err(|e| self.io(e))?;
        file.sync_all().map_err(|e| self.io(e))?;
        drop(file);
        std::fs::rename(&tmp, &self.path).map_err(|e| self.io(e))?;
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.io(e))
    }

    /// Deletes the saved state (a source that starts over).
    pub fn clear(&self) -> Result<(), CheckpointError> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(self.io(e)),
            _ => Ok(()),
        }
    }

    fn io(&self, source: std::io::Error) -> CheckpointError {
        CheckpointError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_replace_and_load_back() {
        let dir = std::env::temp_dir().join(format!("exhub-ckpt-{}", uuid::Uuid::now_v7()));
        let store = CheckpointStore::new(dir.join("nested").join("src.json"));
        assert_eq!(store.load::<Vec<u32>>().unwrap(), None);
        store.save(&vec![1u32, 2]).unwrap();
        store.save(&vec![3u32]).unwrap();
        assert_eq!(store.load::<Vec<u32>>().unwrap(), Some(vec![3]));
        std::fs::write(store.path(), b"{").unwrap();
        assert!(matches!(store.load::<Vec<u32>>(), Err(CheckpointError::Format { .. })));
        store.clear().unwrap();
        store.clear().unwrap();
        assert_eq!(store.load::<Vec<u32>>().unwrap(), None);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
