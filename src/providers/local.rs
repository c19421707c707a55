//! `local`: a folder on this machine, through object_store's LocalFileSystem.
//!
//! LocalFileSystem stores no attributes (content type, user metadata). So that metadata round-trips on every
//! provider, [`LocalStore`] wraps it and keeps attributes in the file's extended attributes (`user.zmount.*`),
//! the same place rclone's local backend uses. Writes are fsynced before they are acknowledged.

use crate::config::LocalConfig;
use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    Attribute, AttributeValue, Attributes, CopyOptions, GetOptions, GetResult, ListResult,
    MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions, PutPayload,
    PutResult, Result, UploadPart,
};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;

/// Extended-attribute namespace for attributes of objects stored in a local provider.
const XATTR_PREFIX: &str = "user.zmount.";
const XATTR_CONTENT_TYPE: &str = "user.zmount.content-type";
const XATTR_META_PREFIX: &str = "user.zmount.meta.";

pub fn build(config: &LocalConfig) -> std::result::Result<Arc<LocalStore>, String> {
    std::fs::create_dir_all(&config.path)
        .map_err(|e| format!("cannot create folder {}: {e}", config.path.display()))?;
    let inner = LocalFileSystem::new_with_prefix(&config.path)
        .map_err(|e| format!("cannot use folder {}: {e}", config.path.display()))?
        .with_automatic_cleanup(true)
        .with_fsync(true);
    Ok(Arc::new(LocalStore {
        inner: Arc::new(inner),
        root: config.path.clone(),
    }))
}

#[derive(Debug)]
pub struct LocalStore {
    inner: Arc<LocalFileSystem>,
    root: PathBuf,
}

impl std::fmt::Display for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LocalStore({})", self.root.display())
    }
}

impl LocalStore {
    fn file_of(&self, location: &Path) -> Result<PathBuf> {
        self.inner.path_to_filesystem(location)
    }
}

fn io_error(path: &std::path::Path, e: std::io::Error) -> object_store::Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        object_store::Error::NotFound {
            path: path.display().to_string(),
            source: Box::new(e),
        }
    } else {
        object_store::Error::Generic {
            store: "LocalStore",
            source: Box::new(e),
        }
    }
}

fn c_path(path: &std::path::Path) -> std::io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
}

/// Replaces the file's zmount attributes with `attributes`.
fn write_xattrs(file: &std::path::Path, attributes: &Attributes) -> std::io::Result<()> {
    let cpath = c_path(file)?;
    for name in list_xattrs(file)? {
        let cname = CString::new(name).expect("xattr names have no NUL");
        // SAFETY: both pointers are valid NUL-terminated strings for the duration of the call.
        unsafe { libc::removexattr(cpath.as_ptr(), cname.as_ptr()) };
    }
    for (key, value) in attributes.iter() {
        let name = match key {
            Attribute::ContentType => XATTR_CONTENT_TYPE.to_string(),
            Attribute::Metadata(k) => format!("{XATTR_META_PREFIX}{k}"),
            _ => continue,
        };
        let cname = c_path(std::path::Path::new(&name))?;
        let v: &str = value.as_ref();
        // SAFETY: pointers valid for the call; the value length is the buffer's.
        let rc = unsafe {
            libc::setxattr(
                cpath.as_ptr(),
                cname.as_ptr(),
                v.as_ptr().cast(),
                v.len(),
                0,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Names of the file's zmount extended attributes.
fn list_xattrs(file: &std::path::Path) -> std::io::Result<Vec<String>> {
    let cpath = c_path(file)?;
    // SAFETY: a null buffer with size 0 asks for the needed size.
    let size = unsafe { libc::listxattr(cpath.as_ptr(), std::ptr::null_mut(), 0) };
    if size < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut buf = vec![0u8; size as usize];
    // SAFETY: buf has the length we pass.
    let size = unsafe { libc::listxattr(cpath.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if size < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(size as usize);
    Ok(buf
        .split(|b| *b == 0)
        .filter_map(|n| std::str::from_utf8(n).ok())
        .filter(|n| n.starts_with(XATTR_PREFIX))
        .map(str::to_string)
        .collect())
}

fn read_xattr(cpath: &CString, name: &str) -> std::io::Result<String> {
    let cname = CString::new(name).expect("xattr names have no NUL");
    let mut buf = vec![0u8; 4096];
    // SAFETY: buf has the length we pass.
    let size = unsafe {
        libc::getxattr(
            cpath.as_ptr(),
            cname.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if size < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(size as usize);
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn read_xattrs(file: &std::path::Path) -> std::io::Result<Attributes> {
    let cpath = c_path(file)?;
    let mut attributes = Attributes::new();
    for name in list_xattrs(file)? {
        let value = AttributeValue::from(read_xattr(&cpath, &name)?);
        if name == XATTR_CONTENT_TYPE {
            attributes.insert(Attribute::ContentType, value);
        } else if let Some(key) = name.strip_prefix(XATTR_META_PREFIX) {
            attributes.insert(Attribute::Metadata(key.to_string().into()), value);
        }
    }
    Ok(attributes)
}

#[async_trait]
impl ObjectStore for LocalStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        mut opts: PutOptions,
    ) -> Result<PutResult> {
        let attributes = std::mem::take(&mut opts.attributes);
        opts.tags = Default::default(); // tags live in the attributes' mirror (crate::storage::TAGS_MIRROR_KEY)
        let result = self.inner.put_opts(location, payload, opts).await?;
        let file = self.file_of(location)?;
        tokio::task::spawn_blocking(move || {
            write_xattrs(&file, &attributes).map_err(|e| io_error(&file, e))
        })
        .await??;
        Ok(result)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        mut opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let attributes = std::mem::take(&mut opts.attributes);
        opts.tags = Default::default();
        let upload = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(LocalUpload {
            upload,
            file: self.file_of(location)?,
            attributes,
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let mut result = self.inner.get_opts(location, options).await?;
        let file = self.file_of(location)?;
        result.attributes =
            tokio::task::spawn_blocking(move || read_xattrs(&file).map_err(|e| io_error(&file, e)))
                .await??;
        Ok(result)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await?;
        let (src, dst) = (self.file_of(from)?, self.file_of(to)?);
        tokio::task::spawn_blocking(move || {
            let attributes = read_xattrs(&src).map_err(|e| io_error(&src, e))?;
            write_xattrs(&dst, &attributes).map_err(|e| io_error(&dst, e))
        })
        .await?
    }
}

/// A multipart upload that applies the attributes once the file exists.
#[derive(Debug)]
struct LocalUpload {
    upload: Box<dyn MultipartUpload>,
    file: PathBuf,
    attributes: Attributes,
}

#[async_trait]
impl MultipartUpload for LocalUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.upload.put_part(data)
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let result = self.upload.complete().await?;
        let (file, attributes) = (self.file.clone(), self.attributes.clone());
        tokio::task::spawn_blocking(move || {
            write_xattrs(&file, &attributes).map_err(|e| io_error(&file, e))
        })
        .await??;
        Ok(result)
    }

    async fn abort(&mut self) -> Result<()> {
        self.upload.abort().await
    }
}
