//! Confinement: the directories of a key opened from the folder's descriptor one component at a time, never
//! through a link (made as a write needs them), and removed again when their last entry goes.

use super::{error, user_mode, Shared};
use object_store::path::Path;
use object_store::Result;
use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;
use std::os::fd::OwnedFd;

/// The directories of a key and its last component.
fn split(key: &Path) -> Result<(Vec<String>, String)> {
    let mut parts: Vec<String> = key.parts().map(|p| p.as_ref().to_string()).collect();
    let name = parts.pop().ok_or_else(|| object_store::Error::NotFound {
        path: String::new(),
        source: "the folder itself is not an object".into(),
    })?;
    Ok((parts, name))
}

impl Shared {
    /// Opens the directories of a key from the folder, never through a link; with `create`, missing ones are made.
    /// Returns the chain of descriptors: the folder's (a duplicate) first, the key's parent last.
    fn walk(&self, dirs: &[String], create: bool) -> rustix::io::Result<Vec<OwnedFd>> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut chain = vec![rustix::io::fcntl_dupfd_cloexec(&self.root, 0)?];
        for dir in dirs {
            let parent = chain.last().expect("the chain starts with the folder");
            let fd = match rustix::fs::openat(parent, dir.as_str(), flags, Mode::empty()) {
                Err(Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(parent, dir.as_str(), Mode::from_raw_mode(0o700)) {
                        Ok(()) => {
                            let mode = user_mode(0o777);
                            rustix::fs::chmodat(parent, dir.as_str(), mode, AtFlags::empty())?;
                        }
                        Err(Errno::EXIST) => {}
                        Err(e) => return Err(e),
                    }
                    rustix::fs::openat(parent, dir.as_str(), flags, Mode::empty())?
                }
                other => other?,
            };
            chain.push(fd);
        }
        Ok(chain)
    }

    pub(super) fn parent(
        &self,
        key: &Path,
        create: bool,
    ) -> Result<(Vec<OwnedFd>, Vec<String>, String)> {
        let (dirs, name) = split(key)?;
        let chain = self
            .walk(&dirs, create)
            .map_err(|e| error(key.as_ref(), e))?;
        Ok((chain, dirs, name))
    }

    /// Removes the key's directories that its removal left empty, deepest first (never the folder itself).
    pub(super) fn clean_up(chain: &[OwnedFd], dirs: &[String]) {
        for depth in (1..chain.len()).rev() {
            if rustix::fs::unlinkat(
                &chain[depth - 1],
                dirs[depth - 1].as_str(),
                AtFlags::REMOVEDIR,
            )
            .is_err()
            {
                break;
            }
        }
    }

    /// The folder a listing of `prefix` reads (None when there is none: an empty listing).
    pub(super) fn open_prefix(&self, prefix: Option<&Path>) -> Result<Option<OwnedFd>> {
        let dirs: Vec<String> = prefix
            .map(|p| p.parts().map(|p| p.as_ref().to_string()).collect())
            .unwrap_or_default();
        match self.walk(&dirs, false) {
            Ok(chain) => Ok(chain.into_iter().last()),
            Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => Ok(None),
            Err(e) => Err(error(prefix.map(|p| p.as_ref()).unwrap_or(""), e)),
        }
    }
}
