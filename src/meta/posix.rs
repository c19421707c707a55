//! POSIX attributes kept in object metadata, under the keys s3fs uses (`mode`, `uid`, `gid`, `mtime`; S3 sends
//! them as `x-amz-meta-*`), so buckets written by s3fs show their modes and files written here keep what `chmod`,
//! `chown`, `touch`, `cp -p`, `rsync -a` and `tar x` set. `mode` is the decimal st_mode (file type bits included,
//! as s3fs writes it); `mtime` is whole seconds since the epoch. Objects without them get the configured defaults.

use object_store::{Attribute, Attributes};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The metadata keys that carry POSIX attributes (not shown as user metadata).
pub const KEYS: [&str; 10] = [
    "mode",
    "uid",
    "gid",
    "mtime",
    "rdev",
    "atime",
    "ctime",
    "mtime_nsec",
    "atime_nsec",
    "ctime_nsec",
];

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Posix {
    /// Permission bits (0o7777).
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Set explicitly (utimes); otherwise the object's last-modified time stands.
    pub mtime: Option<SystemTime>,
    /// The file type bits of `mode` (`S_IFIFO`, `S_IFSOCK`, `S_IFCHR`, `S_IFBLK`...) when not a regular file.
    pub kind: Option<u32>,
    /// Device number of a character or block device.
    pub rdev: Option<u32>,
    /// Set explicitly (utimensat); otherwise atime reads as mtime.
    pub atime: Option<SystemTime>,
    /// When mode, owner, times or metadata last changed (data changes move mtime, which ctime then follows).
    pub ctime: Option<SystemTime>,
}

impl Posix {
    /// What a new file or directory gets: the creating program's permission bits and owner.
    pub fn created(mode: u32, uid: u32, gid: u32) -> Posix {
        Posix {
            mode: Some(mode & 0o7777),
            uid: Some(uid),
            gid: Some(gid),
            ..Default::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Posix::default()
    }

    pub fn from_attributes(attributes: &Attributes) -> Option<Posix> {
        let get = |key: &str| {
            attributes
                .get(&Attribute::Metadata(key.to_string().into()))
                .and_then(|v| {
                    v.as_ref()
                        .split('.')
                        .next()
                        .and_then(|n| n.trim().parse::<u64>().ok())
                })
        };
        let mode = get("mode").map(|m| m as u32);
        let kind = mode
            .map(|m| m & libc::S_IFMT)
            .filter(|k| *k != 0 && *k != libc::S_IFREG);
        // s3fs's keys hold whole seconds; `<key>_nsec` (zmount's own) adds the nanoseconds.
        let time = |key: &str| {
            let secs = get(key)?;
            let nanos = get(&format!("{key}_nsec")).filter(|n| *n < 1_000_000_000);
            Some(UNIX_EPOCH + Duration::new(secs, nanos.unwrap_or(0) as u32))
        };
        let posix = Posix {
            mode: mode.map(|m| m & 0o7777),
            uid: get("uid").map(|u| u as u32),
            gid: get("gid").map(|g| g as u32),
            mtime: time("mtime"),
            kind,
            rdev: get("rdev").map(|r| r as u32),
            atime: time("atime"),
            ctime: time("ctime"),
        };
        (!posix.is_empty()).then_some(posix)
    }

    /// The same from user metadata as [`crate::storage::FileInfo`] carries it (lowercase keys).
    pub fn from_metadata(metadata: &BTreeMap<String, String>) -> Option<Posix> {
        let mut attributes = Attributes::new();
        for key in KEYS {
            if let Some(value) = metadata.get(key) {
                attributes.insert(
                    Attribute::Metadata(key.into()),
                    object_store::AttributeValue::from(value.clone()),
                );
            }
        }
        Posix::from_attributes(&attributes)
    }

    /// The metadata of a regular file.
    pub fn to_metadata(&self) -> BTreeMap<String, String> {
        self.to_metadata_as(self.kind.unwrap_or(libc::S_IFREG))
    }

    /// The metadata of an entry of file type `kind` (`S_IFREG`, `S_IFDIR`, ...): s3fs's `mode` is the whole
    /// st_mode.
    pub fn to_metadata_as(&self, kind: u32) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        if let Some(mode) = self.mode {
            out.insert("mode".into(), (kind | (mode & 0o7777)).to_string());
        }
        if let Some(uid) = self.uid {
            out.insert("uid".into(), uid.to_string());
        }
        if let Some(gid) = self.gid {
            out.insert("gid".into(), gid.to_string());
        }
        for (key, time) in [
            ("mtime", self.mtime),
            ("atime", self.atime),
            ("ctime", self.ctime),
        ] {
            if let Some(time) = time {
                let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
                out.insert(key.into(), since.as_secs().to_string());
                if since.subsec_nanos() != 0 {
                    out.insert(format!("{key}_nsec"), since.subsec_nanos().to_string());
                }
            }
        }
        if let Some(rdev) = self.rdev {
            out.insert("rdev".into(), rdev.to_string());
        }
        out
    }

    /// `other`'s values where it has them, ours elsewhere.
    pub fn merged(self, other: Posix) -> Posix {
        Posix {
            mode: other.mode.or(self.mode),
            uid: other.uid.or(self.uid),
            gid: other.gid.or(self.gid),
            mtime: other.mtime.or(self.mtime),
            kind: other.kind.or(self.kind),
            rdev: other.rdev.or(self.rdev),
            atime: other.atime.or(self.atime),
            ctime: other.ctime.or(self.ctime),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::AttributeValue;

    #[test]
    fn reads_what_s3fs_writes_and_round_trips() {
        let mut attrs = Attributes::new();
        attrs.insert(
            Attribute::Metadata("mode".into()),
            AttributeValue::from("33184"),
        ); // 0o100640
        attrs.insert(
            Attribute::Metadata("uid".into()),
            AttributeValue::from("1000"),
        );
        attrs.insert(
            Attribute::Metadata("mtime".into()),
            AttributeValue::from("1700000000"),
        );
        let posix = Posix::from_attributes(&attrs).unwrap();
        assert_eq!(posix.mode, Some(0o640));
        assert_eq!(posix.uid, Some(1000));
        assert_eq!(posix.gid, None);
        assert_eq!(posix.to_metadata()["mode"], "33184");
        assert_eq!(posix.to_metadata()["mtime"], "1700000000");
        assert!(Posix::from_attributes(&Attributes::new()).is_none());
    }
}
