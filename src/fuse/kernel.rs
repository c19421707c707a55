//! What the mount asks of the kernel at `init`: O_TRUNC delivered with the open, the largest read-ahead it allows
//! with more of it in flight, and listings that carry attributes (READDIRPLUS).

use fuser::InitFlags;

/// The kernel's read-ahead of one file at most (it may allow less: it offers its default, 128 KiB, at `init`;
/// the mount raises it to this afterwards where it can, see `cli::mount`).
const READ_AHEAD: u32 = 1 << 20;
/// [`READ_AHEAD`] in KiB, as the kernel's `read_ahead_kb` takes it.
pub const READ_AHEAD_KIB: u32 = READ_AHEAD >> 10;
/// Background requests (read-ahead among them) the kernel keeps in flight at most.
const MAX_BACKGROUND: u16 = 64;

/// Sets the session's capabilities and limits at `init`; what the kernel does not offer is logged.
pub(super) fn configure(config: &mut fuser::KernelConfig) {
    // O_TRUNC arrives with the open (not as a truncate before it), so a file truncated by an open is a new
    // version published at its close, never an empty object published at once.
    if config
        .add_capabilities(InitFlags::FUSE_ATOMIC_O_TRUNC)
        .is_err()
    {
        tracing::warn!("kernel does not offer ATOMIC_O_TRUNC; open(O_TRUNC) truncates at once");
    }
    // Sequential reads: the kernel's read-ahead as large as it allows, with more of its reads in flight (they
    // are background requests: 12 by default).
    if let Err(largest) = config.set_max_readahead(READ_AHEAD) {
        let _ = config.set_max_readahead(largest);
    }
    let _ = config.set_max_background(MAX_BACKGROUND);
    // Directory listings carry attributes, so `ls -l` needs no lookup per entry.
    if config
        .add_capabilities(InitFlags::FUSE_DO_READDIRPLUS)
        .is_err()
    {
        tracing::debug!(
            "kernel does not offer READDIRPLUS; listings fall back to readdir + lookup"
        );
    }
}
