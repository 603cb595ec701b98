//! The local store: files under `<data_dir>/media/objects/{mediaId}/`,
//! uploaded and downloaded through URLs that `confab serve` signs and
//! serves itself (`crate::routes`). No external service.
//!
//! An upload is written to a temporary file beside its object, exactly the
//! signed length or nothing (a short or long body leaves no object),
//! fsynced, then renamed into place: a crash leaves the object whole or
//! absent, never torn.

use std::path::{Path, PathBuf};

use parking_lot::RwLock;
use tokio::io::AsyncWriteExt;

use crate::signing::{Grant, Signer};
use crate::store::{is_media_id, MediaStore, Served, Upload, Variant};
use crate::{Error, Result};

pub struct LocalStore {
    root: PathBuf,
    signer: Signer,
    /// The base of the URLs, as clients reach this server.
    base_url: RwLock<String>,
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("LocalStore").field("root", &self.root).finish()
    }
}

/// An upload that sends nothing for this long is cut off (a client that
/// stalls must not hold a connection and a file open for ever).
pub const BODY_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The path of the upload routes (`{object}` follows).
pub const OBJECTS_PATH: &str = "/v1/media/objects";

impl LocalStore {
    pub fn open(root: &Path, signer: Signer, base_url: String) -> Result<LocalStore> {
        std::fs::create_dir_all(root.join("objects")).map_err(|error| Error::store(&root.display().to_string(), error))?;
        Ok(LocalStore { root: root.to_path_buf(), signer, base_url: RwLock::new(base_url) })
    }

    /// Sets the URLs' base once the listener's address is known.
    pub fn set_base_url(&self, base_url: String) {
        *self.base_url.write() = base_url;
    }

    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    fn folder(&self, media_id: &str) -> Result<PathBuf> {
        if !is_media_id(media_id) {
            return Err(Error::NotServed);
        }
        Ok(self.root.join("objects").join(media_id))
    }

    /// The file of `{mediaId}/{variant}`; names the server did not make are refused.
    pub fn path(&self, object: &str) -> Result<PathBuf> {
        let (media_id, variant) = object.split_once('/').ok_or(Error::NotServed)?;
        let variant = Variant::parse(variant).ok_or(Error::NotServed)?;
        Ok(self.folder(media_id)?.join(variant.name()))
    }

    fn location_error(&self, error: impl std::fmt::Display) -> Error {
        Error::store(&self.root.display().to_string(), error)
    }

    /// Writes `body` (exactly `size` bytes) as `object`: into a temporary
    /// file, fsynced, then renamed into place. A body of another length
    /// leaves nothing.
    pub async fn receive<S, E>(&self, object: &str, size: u64, mut body: S) -> Result<()>
    where
        S: futures_util::Stream<Item = std::result::Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        use futures_util::StreamExt;
        let path = self.path(object)?;
        let folder = path.parent().expect("an object has a folder").to_path_buf();
        tokio::fs::create_dir_all(&folder).await.map_err(|error| self.location_error(error))?;
        let temporary = folder.join(format!(".upload-{:016x}", fastrand::u64(..)));
        let mut file = tokio::fs::File::create(&temporary).await.map_err(|error| self.location_error(error))?;
        let mut received: u64 = 0;
        let outcome: Result<()> = async {
            loop {
                let next = tokio::time::timeout(BODY_IDLE_TIMEOUT, body.next())
                    .await
                    .map_err(|_| Error::WrongLength { expected: size, got: format!("{received} bytes, then nothing for {BODY_IDLE_TIMEOUT:?}") })?;
                let Some(chunk) = next else { break };
                let chunk = chunk.map_err(|error| Error::WrongLength { expected: size, got: format!("a body cut short ({error})") })?;
                received += chunk.len() as u64;
                if received > size {
                    return Err(Error::WrongLength { expected: size, got: "more".into() });
                }
                file.write_all(&chunk).await.map_err(|error| self.location_error(error))?;
            }
            if received != size {
                return Err(Error::WrongLength { expected: size, got: received.to_string() });
            }
            file.sync_all().await.map_err(|error| self.location_error(error))?;
            Ok(())
        }
        .await;
        drop(file);
        if let Err(error) = outcome {
            let _ = tokio::fs::remove_file(&temporary).await;
            return Err(error);
        }
        tokio::fs::rename(&temporary, &path).await.map_err(|error| self.location_error(error))?;
        if let Ok(directory) = tokio::fs::File::open(&folder).await {
            let _ = directory.sync_all().await;
        }
        Ok(())
    }

    fn url(&self, object: &str, query: &str) -> String {
        format!("{}{OBJECTS_PATH}/{object}?{query}", self.base_url.read())
    }
}

#[async_trait::async_trait]
impl MediaStore for LocalStore {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    async fn upload(&self, object: &str, size: u64, content_type: &str, expires_at: i64) -> Result<Upload> {
        let signature = self.signer.sign(&Grant::Put { object, size, content_type }, expires_at);
        Ok(Upload {
            method: "PUT".into(),
            url: self.url(object, &format!("size={size}&expires={expires_at}&signature={signature}")),
            headers: [("Content-Type".to_string(), content_type.to_string())].into(),
            parts: None,
        })
    }

    async fn download_url(&self, object: &str, _served: &Served<'_>, expires_at: i64) -> Result<String> {
        // How it is served (type, name) comes from the upload's row when
        // the URL is used; only the object and the time are signed.
        let signature = self.signer.sign(&Grant::Get { object }, expires_at);
        Ok(self.url(object, &format!("expires={expires_at}&signature={signature}")))
    }

    async fn finish_upload(&self, object: &str, _size: u64) -> Result<Option<u64>> {
        match tokio::fs::metadata(self.path(object)?).await {
            Ok(metadata) => Ok(Some(metadata.len())),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(self.location_error(error)),
        }
    }

    async fn read(&self, object: &str, max_bytes: u64) -> Result<Vec<u8>> {
        let path = self.path(object)?;
        let size = tokio::fs::metadata(&path).await.map_err(|error| self.location_error(error))?.len();
        if size > max_bytes {
            return Err(self.location_error(format!("`{object}` is {size} bytes, over {max_bytes}")));
        }
        tokio::fs::read(&path).await.map_err(|error| self.location_error(error))
    }

    async fn write(&self, object: &str, bytes: Vec<u8>, _content_type: &str) -> Result<()> {
        let size = bytes.len() as u64;
        let stream = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(bytes::Bytes::from(bytes))]);
        self.receive(object, size, stream).await
    }

    async fn delete_media(&self, media_id: &str) -> Result<()> {
        match tokio::fs::remove_dir_all(self.folder(media_id)?).await {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(self.location_error(error)),
            _ => Ok(()),
        }
    }

    async fn list(&self) -> Result<Vec<String>> {
        let mut objects = Vec::new();
        let mut folders = match tokio::fs::read_dir(self.root.join("objects")).await {
            Ok(folders) => folders,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(objects),
            Err(error) => return Err(self.location_error(error)),
        };
        while let Some(folder) = folders.next_entry().await.map_err(|error| self.location_error(error))? {
            let media_id = folder.file_name().to_string_lossy().to_string();
            let mut files = tokio::fs::read_dir(folder.path()).await.map_err(|error| self.location_error(error))?;
            while let Some(file) = files.next_entry().await.map_err(|error| self.location_error(error))? {
                objects.push(format!("{media_id}/{}", file.file_name().to_string_lossy()));
            }
        }
        objects.sort();
        Ok(objects)
    }
}
