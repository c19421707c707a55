//! The format of one block file of the disk tier: the length of the block's key header (4 bytes, little endian),
//! the header (the full block key, checked on every read so a file of another block or version never serves its
//! bytes), then the data. Files are written under a temporary name and renamed into place.

use super::BlockKey;
use bytes::Bytes;
use std::io::{Read, Write};
use std::path::Path;

/// Writes a block file: the header's length, the header, the data, under a temporary name renamed into place. The
/// shard folder is made only when it is missing (once per shard, not once per block), and the file is written
/// with one `writev` in the common case.
pub(super) fn write_block(path: &Path, header: &[u8], data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = match std::fs::File::create(&tmp) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(path.parent().expect("block files live in a shard folder"))?;
            std::fs::File::create(&tmp)?
        }
        other => other?,
    };
    let mut prefix = Vec::with_capacity(4 + header.len());
    prefix.extend_from_slice(&(header.len() as u32).to_le_bytes());
    prefix.extend_from_slice(header);
    let n = file.write_vectored(&[std::io::IoSlice::new(&prefix), std::io::IoSlice::new(data)])?;
    // A short write (rare for a regular file) is finished with plain writes.
    if n < prefix.len() {
        file.write_all(&prefix[n..])?;
        file.write_all(data)?;
    } else {
        file.write_all(&data[n - prefix.len()..])?;
    }
    drop(file);
    std::fs::rename(&tmp, path)
}

/// Opens a block file and checks that it holds `key`; returns it positioned at the data, and the data's offset.
pub(super) fn open_block(path: &Path, key: &BlockKey) -> Option<(std::fs::File, u64)> {
    let mut file = std::fs::File::open(path).ok()?;
    let mut len = [0u8; 4];
    file.read_exact(&mut len).ok()?;
    let mut header = vec![0u8; u32::from_le_bytes(len) as usize];
    file.read_exact(&mut header).ok()?;
    (header == key.header()).then_some((file, 4 + header.len() as u64))
}

/// Bytes `range` of the data of an open block file whose data starts at `start` (fewer at its end).
pub(super) fn read_range(
    file: &std::fs::File,
    start: u64,
    range: std::ops::Range<usize>,
) -> Option<Bytes> {
    use std::os::unix::fs::FileExt;
    let mut data = vec![0u8; range.len()];
    let mut filled = 0;
    while filled < data.len() {
        match file.read_at(&mut data[filled..], start + (range.start + filled) as u64) {
            Ok(0) => break, // the block's end
            Ok(n) => filled += n,
            Err(_) => return None,
        }
    }
    data.truncate(filled);
    Some(Bytes::from(data))
}

/// The whole data of a block file, if it holds `key`.
pub(super) fn read_block(path: &Path, key: &BlockKey) -> Option<Bytes> {
    let (mut file, _) = open_block(path, key)?;
    let mut data = Vec::new();
    file.read_to_end(&mut data).ok()?;
    Some(Bytes::from(data))
}
