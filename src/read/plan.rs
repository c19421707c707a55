//! Which blocks read-ahead asks for: the per-handle sequential/random state, the window and the runs it is
//! requested in, and how many of a run the read-ahead permits allow. Pure logic, tested on its own; the
//! [`super::Reader`] acts on it.

use crate::cache::BLOCK_SIZE;
use std::sync::Arc;

/// How far a read may start from where the previous one ended and still count as sequential, once the reader is
/// sequential: a few times the kernel's largest FUSE read (128 KiB to 1 MiB), so its concurrent read-ahead requests
/// do not look random.
const SEQUENTIAL_SLACK: u64 = 4 * 1024 * 1024;

/// A read this large is the kernel's read-ahead (128 KiB by default), not a program's random small read.
const LARGE_READ: u64 = 64 * 1024;

/// Blocks read-ahead asks for with one GET at most: 8 MiB, cut into blocks as it arrives.
pub(super) const RUN_BLOCKS: u64 = 8;

/// Per-open-file read-ahead state.
#[derive(Debug, Default)]
pub struct ReadState {
    pub(super) next_offset: u64,
    pub(super) window: u64,
    /// Blocks below this index were already requested by read-ahead.
    pub(super) requested_until: u64,
    /// Random reads of this handle that found their block in neither cache tier.
    pub(super) random_misses: u32,
    /// Held while a whole-object fill started by this handle may go on: the fill stops once the handle is gone.
    pub(super) fill: Option<Arc<()>>,
}

impl ReadState {
    /// Whether a read of `len` bytes at `offset` continues this handle's sequential reading. A sequential reader
    /// keeps being one within [`SEQUENTIAL_SLACK`]; so does a random one reading a kernel read-ahead's worth (whose
    /// concurrent requests may arrive out of order). A small read near the last one must start exactly where it
    /// ended: else one random 4 KiB read in a few hundred lands near the last one by chance, and costs whole blocks
    /// and a read-ahead run instead of its few bytes.
    pub(super) fn continues(&self, offset: u64, len: u64) -> bool {
        let near = offset.abs_diff(self.next_offset) <= SEQUENTIAL_SLACK;
        match self.window {
            0 => offset == self.next_offset || (near && len >= LARGE_READ),
            _ => near,
        }
    }

    /// A read of `offset..end` (its last block `last`, in a file of `size` bytes) happened: updates the window
    /// (at most `max_window` blocks) and returns the blocks read-ahead should request now.
    pub(super) fn plan(
        &mut self,
        offset: u64,
        end: u64,
        last: u64,
        size: u64,
        max_window: u64,
    ) -> std::ops::Range<u64> {
        let st = self;
        // The kernel's own read-ahead sends several reads at once and they may be served out of order, so a read
        // that lands near where the last one ended still counts as sequential (see `continues`).
        if st.continues(offset, end - offset) {
            st.window = (st.window * 2).clamp(1, max_window);
            st.next_offset = st.next_offset.max(end);
        } else {
            st.window = 0;
            st.requested_until = 0;
            st.next_offset = end;
        }
        let blocks_in_file = size.div_ceil(BLOCK_SIZE);
        let from = st.requested_until.max(last + 1);
        let mut to = (last + 1 + st.window).min(blocks_in_file);
        // Asked for in runs: once a run's worth of the window is free (or the file ends), not a block per read.
        if to <= from || (to - from < RUN_BLOCKS.min(st.window) && to < blocks_in_file) {
            return from..from;
        }
        // Once the window holds a run, runs end on multiples of RUN_BLOCKS (so they start on them too): the
        // ranges then match how uploaders cut objects (8 MiB parts) and servers store them, and no GET reads
        // a part or chunk of the server's for a few of its bytes.
        let aligned = to - to % RUN_BLOCKS;
        if st.window >= RUN_BLOCKS && to < blocks_in_file && aligned > from {
            to = aligned;
        }
        st.requested_until = to;
        from..to
    }

    /// Blocks from `block` on, planned by [`ReadState::plan`], were not requested after all: a later read plans
    /// them again.
    pub(super) fn unrequest_from(&mut self, block: u64) {
        self.requested_until = self.requested_until.min(block);
    }
}

/// How many of the `want` blocks of a run to request with `available` read-ahead permits out of `capacity`: the
/// whole run, or none yet (0) when the permits for it are not free, never a part. Blocks not requested stay due,
/// and the handle's next read asks for them once earlier runs have landed. (Cutting the run to the permits free,
/// as before, left its other blocks to the reader, which fetched them one 1 MiB GET at a time while waiting on
/// each: a cold 1 GiB read sent about 250 GETs instead of 130.) A run needing more permits than exist takes them
/// all.
pub(super) fn run_len(want: u64, available: usize, capacity: usize) -> u64 {
    let len = want.min(capacity as u64);
    if (available as u64) < len {
        0
    } else {
        len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sequential readers of every read size the kernel sends, over files of many sizes: no block is requested
    /// twice, read-ahead stays within the window ahead of the reader, and once the window holds a run every
    /// request ends on a multiple of RUN_BLOCKS (or at the end of the file).
    #[test]
    fn read_ahead_requests_each_block_once_in_aligned_runs() {
        for read in [4096u64, 128 << 10, 1 << 20] {
            for size in [
                1u64,
                BLOCK_SIZE,
                3 * BLOCK_SIZE + 7,
                48 * BLOCK_SIZE,
                101 * BLOCK_SIZE - 3,
            ] {
                let max_window = 16;
                let mut st = ReadState::default();
                let mut requested = vec![false; size.div_ceil(BLOCK_SIZE) as usize];
                let mut offset = 0;
                while offset < size {
                    let end = (offset + read).min(size);
                    let last = (end - 1) / BLOCK_SIZE;
                    let ahead = st.plan(offset, end, last, size, max_window);
                    assert!(
                        ahead.end <= last + 1 + max_window,
                        "past the window: {ahead:?} at {last}"
                    );
                    if st.window >= RUN_BLOCKS
                        && !ahead.is_empty()
                        && ahead.end < requested.len() as u64
                    {
                        assert_eq!(
                            ahead.end % RUN_BLOCKS,
                            0,
                            "unaligned run {ahead:?} (size {size}, read {read})"
                        );
                    }
                    for b in ahead {
                        assert!(!requested[b as usize], "block {b} requested twice");
                        requested[b as usize] = true;
                    }
                    offset = end;
                }
                // Everything after the first block was read ahead.
                assert!(
                    requested.iter().skip(1).all(|r| *r),
                    "size {size}, read {read}: {requested:?}"
                );
            }
        }
    }

    /// A sequential reader whose read-ahead is short of permits (earlier runs still streaming in) still gets every
    /// block from read-ahead, each requested once, in whole runs: a run waits for its permits instead of being cut
    /// to them and leaving the rest for the reader to fetch a block at a time. Reads and landings interleave at
    /// random (the kernel keeps a few reads outstanding; each waits for its blocks), many seeds.
    #[test]
    fn read_ahead_short_of_permits_leaves_no_block_to_the_reader() {
        let size = 97 * BLOCK_SIZE + 5;
        let blocks = size.div_ceil(BLOCK_SIZE) as usize;
        for seed in 0..400u64 {
            let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let mut next = move || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng
            };
            let capacity = [16usize, 24, 32][seed as usize % 3];
            let read = [128u64 << 10, 1 << 20][(seed / 3) as usize % 2];
            let outstanding_max = 1 + (seed / 6) as usize % 3;
            let (mut st, mut available) = (ReadState::default(), capacity);
            let mut requested = vec![false; blocks];
            let mut landed = vec![false; blocks];
            // Runs in flight (their blocks not yet landed, in order) and the reads waiting for their blocks.
            let mut runs: Vec<std::ops::Range<u64>> = Vec::new();
            let mut waiting: std::collections::VecDeque<std::ops::RangeInclusive<u64>> =
                Default::default();
            let (mut offset, mut gets, mut own_fetches) = (0u64, 0, 0);
            while offset < size || !waiting.is_empty() {
                let can_read = offset < size && waiting.len() < outstanding_max;
                if can_read && (runs.is_empty() || next() % 2 == 0) {
                    let end = (offset + read).min(size);
                    let (first, last) = (offset / BLOCK_SIZE, (end - 1) / BLOCK_SIZE);
                    let ahead = st.plan(offset, end, last, size, capacity as u64);
                    // What spawn_read_ahead does: runs of blocks not yet requested, never across a multiple of
                    // RUN_BLOCKS, each only with the permits for all of it.
                    let mut index = ahead.start;
                    let until = loop {
                        if index >= ahead.end {
                            break ahead.end;
                        }
                        if requested[index as usize] {
                            index += 1;
                            continue;
                        }
                        let mut end = index + 1;
                        while end < ahead.end && !end.is_multiple_of(RUN_BLOCKS) {
                            end += 1;
                        }
                        let len = run_len(end - index, available, capacity);
                        if len == 0 {
                            break index;
                        }
                        available -= len as usize;
                        for b in index..index + len {
                            assert!(
                                !requested[b as usize],
                                "seed {seed}: block {b} requested twice"
                            );
                            requested[b as usize] = true;
                        }
                        runs.push(index..index + len);
                        gets += 1;
                        index += len;
                    };
                    st.unrequest_from(until);
                    // Blocks of this read nobody requested: the reader fetches them itself, there and then.
                    for b in first..=last {
                        if !requested[b as usize] {
                            requested[b as usize] = true;
                            landed[b as usize] = true;
                            own_fetches += 1;
                        }
                    }
                    waiting.push_back(first..=last);
                    offset = end;
                } else if !runs.is_empty() {
                    // One block of a run in flight lands and gives back its permit.
                    let i = (next() % runs.len() as u64) as usize;
                    landed[runs[i].start as usize] = true;
                    runs[i].start += 1;
                    available += 1;
                    if runs[i].is_empty() {
                        runs.swap_remove(i);
                    }
                }
                while waiting
                    .front()
                    .is_some_and(|r| r.clone().all(|b| landed[b as usize]))
                {
                    waiting.pop_front();
                }
                assert!(
                    !runs.is_empty() || waiting.is_empty() || offset < size,
                    "seed {seed}: a read waits on a block nothing fetches"
                );
            }
            assert_eq!(
                own_fetches, 1,
                "seed {seed} (permits {capacity}, reads of {read}): the reader fetched {own_fetches} blocks \
                 itself; only the first should be"
            );
            assert!(requested.iter().all(|r| *r) && available == capacity);
            assert!(
                gets <= blocks / RUN_BLOCKS as usize + 6,
                "seed {seed}: {gets} read-ahead GETs for {blocks} blocks"
            );
        }
    }

    /// A random reader stays random when a read lands near its last one by chance (no whole blocks, no
    /// read-ahead), and becomes sequential by reading on from where it stopped; a sequential reader stays one
    /// when the kernel's concurrent reads arrive out of order.
    #[test]
    fn only_reading_on_makes_a_random_reader_sequential() {
        let (size, max_window, page) = (1024 * BLOCK_SIZE, 16, 4096);
        let mut st = ReadState::default();
        let read = |st: &mut ReadState, offset: u64, len: u64| {
            let end = offset + len;
            st.plan(offset, end, (end - 1) / BLOCK_SIZE, size, max_window)
        };
        read(&mut st, 500 * BLOCK_SIZE, page);
        assert_eq!(st.window, 0, "a read away from the start is random");
        // Near the last read, before and after it, but not where it ended.
        for offset in [
            500 * BLOCK_SIZE + 3 * page,
            500 * BLOCK_SIZE - 2 * BLOCK_SIZE,
            500 * BLOCK_SIZE + BLOCK_SIZE,
        ] {
            assert!(read(&mut st, offset, page).is_empty(), "{offset}");
            assert_eq!(
                st.window, 0,
                "a read near the last one at {offset} stays random"
            );
        }
        // Reading on from where the last read ended: sequential, with read-ahead.
        let mut offset = 500 * BLOCK_SIZE + BLOCK_SIZE + page;
        let mut asked = 0;
        for _ in 0..64 {
            asked += read(&mut st, offset, 128 << 10).count();
            offset += 128 << 10;
        }
        assert!(
            st.window > 0 && asked > 0,
            "window {}, asked {asked}",
            st.window
        );
        // Once sequential, a read the kernel sent before the previous one still counts as sequential.
        read(&mut st, offset - (256 << 10), 128 << 10);
        assert!(
            st.window > 0,
            "an out-of-order read keeps the reader sequential"
        );
        // A random reader's large read near its last one is the kernel's read-ahead arriving out of order.
        read(&mut st, 100 * BLOCK_SIZE, page);
        assert_eq!(st.window, 0);
        read(&mut st, 100 * BLOCK_SIZE + (256 << 10), 128 << 10);
        assert!(
            st.window > 0,
            "a large read near the last one is sequential"
        );
    }
}
