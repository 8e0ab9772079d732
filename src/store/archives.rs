//! Uploaded archives by content digest: the `ArchiveStore` interface the lifecycle keeps
//! them through, and its file backend (one file per digest in a directory of the data
//! directory, for the embedded store). `PgStore` implements it too, so that every
//! replica reads the archives any replica received. Depends on nothing but `std`.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use super::StoreError;

/// Archives by digest (the sha256 of their bytes, in hex), written durably before the
/// put returns. Async, so that a networked database implements it as it is.
#[async_trait]
pub trait ArchiveStore: Send + Sync + std::fmt::Debug {
    /// Keeps `bytes` under `digest`; the same digest again changes nothing.
    async fn put_archive(&self, digest: &str, bytes: Bytes) -> Result<(), StoreError>;

    /// The archive stored under `digest`.
    async fn archive(&self, digest: &str) -> Result<Bytes, StoreError>;

    /// Removes an archive no lambda references any more (an absent one is fine).
    async fn remove_archive(&self, digest: &str) -> Result<(), StoreError>;

    /// Digests of every stored archive.
    async fn archive_digests(&self) -> Result<Vec<String>, StoreError>;
}

/// Archives as files named by digest; identical uploads share a file.
#[derive(Debug, Clone)]
pub struct ArchiveFiles {
    dir: PathBuf,
}

impl ArchiveFiles {
    /// Uses (and creates) `dir`, removing the temporary files a crash left behind.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)?;
        for entry in std::fs::read_dir(dir)?.flatten() {
            if entry.file_name().to_string_lossy().ends_with(".tmp") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}.zip"))
    }

    /// Writes through a temporary file, fsync and rename, so a crash leaves either the
    /// whole archive or a temporary file that the next open removes.
    fn write(&self, digest: &str, bytes: &[u8]) -> Result<(), StoreError> {
        use std::io::Write;
        let path = self.path(digest);
        if path.exists() {
            return Ok(());
        }
        let tmp = self
            .dir
            .join(format!(".{digest}.{}.tmp", uuid::Uuid::new_v4().simple()));
        let mut file = std::fs::File::create(&tmp)?;
        let written = file.write_all(bytes).and_then(|()| file.sync_all());
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.into());
        }
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        Ok(())
    }

    /// Runs a file operation on the blocking pool: it waits on the disk.
    async fn off_worker<T: Send + 'static>(
        &self,
        call: impl FnOnce(&Self) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let files = self.clone();
        tokio::task::spawn_blocking(move || call(&files))
            .await
            .map_err(|e| StoreError::Interrupted(e.to_string()))?
    }
}

#[async_trait]
impl ArchiveStore for ArchiveFiles {
    async fn put_archive(&self, digest: &str, bytes: Bytes) -> Result<(), StoreError> {
        let digest = digest.to_owned();
        self.off_worker(move |files| files.write(&digest, &bytes))
            .await
    }

    async fn archive(&self, digest: &str) -> Result<Bytes, StoreError> {
        let path = self.path(digest);
        let digest = digest.to_owned();
        self.off_worker(move |_| match std::fs::read(&path) {
            Ok(bytes) => Ok(Bytes::from(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StoreError::MissingArchive(digest))
            }
            Err(e) => Err(e.into()),
        })
        .await
    }

    async fn remove_archive(&self, digest: &str) -> Result<(), StoreError> {
        let path = self.path(digest);
        self.off_worker(move |_| match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        })
        .await
    }

    async fn archive_digests(&self) -> Result<Vec<String>, StoreError> {
        self.off_worker(|files| {
            let mut out = Vec::new();
            for entry in std::fs::read_dir(&files.dir)? {
                let name = entry?.file_name().to_string_lossy().into_owned();
                if let Some(digest) = name.strip_suffix(".zip")
                    && !digest.starts_with('.')
                {
                    out.push(digest.to_owned());
                }
            }
            Ok(out)
        })
        .await
    }
}
