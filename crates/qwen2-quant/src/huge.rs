//! [`WeightArena`]: anonymous memory for weight matrices, in transparent huge pages where the
//! kernel offers them.
//!
//! Decode streams every weight once per token. With 4 KiB pages the hardware prefetchers stop
//! at every page boundary and each page costs a TLB miss; in 2 MiB pages one core read 30%
//! faster and two cores 15% faster on the development machine (an AMD EPYC VM), and a Q4_K_M
//! decode step 5–25% faster. Linux gives an anonymous mapping huge pages when
//! `/sys/kernel/mm/transparent_hugepage/enabled` is `always`, or `madvise` and the mapping
//! asked for them (`MADV_HUGEPAGE`, as here); a memory-mapped file on ext4 or xfs does not get
//! them, so weights read in place from a file mapping stay in 4 KiB pages.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use crate::error::{QuantError, Result};
use crate::matrix::WeightBytes;

/// Huge page size the arena aligns to.
const HUGE_PAGE: usize = 2 << 20;
/// Alignment of each matrix in the arena (a cache line: the kernels' 64-byte loads of a row
/// start on one when the row does).
const SLOT_ALIGN: usize = 64;

/// Whether weights should be copied into a [`WeightArena`]: Linux with transparent huge pages
/// enabled (`always` or `madvise`), unless the environment variable `QWEN2_HUGE_PAGES` is `0`.
/// Decided once.
pub fn huge_pages_wanted() -> bool {
    static WANTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WANTED.get_or_init(|| {
        if std::env::var("QWEN2_HUGE_PAGES").is_ok_and(|v| v.trim() == "0") {
            tracing::info!("QWEN2_HUGE_PAGES=0: weights stay in 4 KiB pages");
            return false;
        }
        let setting = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .unwrap_or_default();
        let enabled = setting.contains("[always]") || setting.contains("[madvise]");
        tracing::debug!(setting = setting.trim(), enabled, "transparent huge pages");
        cfg!(target_os = "linux") && enabled
    })
}

/// An empty vector with room for `len` values whose whole 2 MiB pages are marked for huge
/// pages (`MADV_HUGEPAGE`, when [`huge_pages_wanted`]) before anything is written: fill it
/// with `extend` or `resize` and the memory it touches comes in huge pages. For dense weights
/// the tensors then own (an empty vector when `len` is 0).
pub fn huge_vec<T>(len: usize) -> Vec<T> {
    let values = Vec::with_capacity(len);
    if huge_pages_wanted() {
        let start = values.as_ptr() as usize;
        // SAFETY: the vector's own allocation, not yet written.
        unsafe { advise_huge_pages(start, start + len * std::mem::size_of::<T>()) };
    }
    values
}

/// Marks the whole 2 MiB pages inside `start..end` for huge pages (`MADV_HUGEPAGE`): only
/// whole ones, since a partly used huge page at either end would hold memory nothing uses.
/// A refusal only means 4 KiB pages.
///
/// # Safety
/// `start..end` must be memory this process owns (the advice changes how pages not yet
/// touched will be backed, never their contents).
unsafe fn advise_huge_pages(start: usize, end: usize) {
    let (first, last) = (
        start.next_multiple_of(HUGE_PAGE),
        end / HUGE_PAGE * HUGE_PAGE,
    );
    #[cfg(target_os = "linux")]
    if last > first
        && libc::madvise(
            first as *mut libc::c_void,
            last - first,
            libc::MADV_HUGEPAGE,
        ) != 0
    {
        tracing::debug!(err = %std::io::Error::last_os_error(), "MADV_HUGEPAGE refused");
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (first, last);
}

/// One anonymous mapping, 2 MiB aligned.
struct Region {
    ptr: *mut u8,
    len: usize,
    /// What `munmap` must release: the mapping as made, before alignment.
    mapped: (*mut u8, usize),
}

// SAFETY: the region is plain memory; writes go through `WeightArena::store` into slots no one
// else can see yet, reads through `Slot`s of finished slots.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: `mapped` is the mapping `Region::new` made, unmapped once.
        unsafe { libc::munmap(self.mapped.0.cast(), self.mapped.1) };
    }
}

impl Region {
    /// Maps `len` bytes (at least one), 2 MiB aligned, asking for huge pages.
    fn new(len: usize) -> Result<Region> {
        let len = len.max(1);
        let size = len
            .checked_add(HUGE_PAGE)
            .ok_or_else(|| alloc_error(len, "size overflows"))?;
        // SAFETY: a fresh private anonymous mapping; the result is checked.
        let mapped = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if mapped == libc::MAP_FAILED {
            return Err(alloc_error(
                len,
                &std::io::Error::last_os_error().to_string(),
            ));
        }
        let mapped = mapped.cast::<u8>();
        let offset = (HUGE_PAGE - mapped as usize % HUGE_PAGE) % HUGE_PAGE;
        // SAFETY: `offset < HUGE_PAGE`, so `ptr..ptr + len` lies inside the mapping.
        let ptr = unsafe { mapped.add(offset) };
        // SAFETY: `ptr..ptr + len` lies inside the fresh mapping.
        unsafe { advise_huge_pages(ptr as usize, ptr as usize + len) };
        Ok(Region {
            ptr,
            len,
            mapped: (mapped, size),
        })
    }
}

fn alloc_error(bytes: usize, reason: &str) -> QuantError {
    QuantError::Memory {
        bytes,
        reason: reason.to_string(),
    }
}

/// A matrix's bytes in a [`WeightArena`].
struct Slot {
    region: Arc<Region>,
    range: Range<usize>,
}

impl AsRef<[u8]> for Slot {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the range lies in the region, was written before the slot was made, and is
        // never written again.
        unsafe {
            std::slice::from_raw_parts(self.region.ptr.add(self.range.start), self.range.len())
        }
    }
}

/// Room for weight matrices in one anonymous mapping (huge pages where available), filled
/// one matrix at a time: each [`WeightArena::store`] takes the next cache-line-aligned slot.
/// Memory is only used as slots are written.
pub struct WeightArena {
    region: Arc<Region>,
    /// The first free byte.
    next: Mutex<usize>,
}

impl WeightArena {
    /// Room for matrices of `sizes` bytes (each slot rounded up to 64 bytes).
    pub fn for_sizes(sizes: impl IntoIterator<Item = usize>) -> Result<WeightArena> {
        let total = sizes
            .into_iter()
            .try_fold(0usize, |sum, n| {
                sum.checked_add(n.next_multiple_of(SLOT_ALIGN))
            })
            .ok_or_else(|| alloc_error(usize::MAX, "size overflows"))?;
        Ok(WeightArena {
            region: Arc::new(Region::new(total)?),
            next: Mutex::new(0),
        })
    }

    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.region.len - *self.next.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a slot of `len` bytes, lets `fill` write all of it (the slot starts zeroed), and
    /// returns it as [`WeightBytes`]. An error from `fill` is returned as is (the slot stays
    /// taken); no room left is an error.
    pub fn store<E>(
        &self,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> std::result::Result<(), E>,
    ) -> std::result::Result<WeightBytes, E>
    where
        E: From<QuantError>,
    {
        let start = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let start = *next;
            let end = start
                .checked_add(len)
                .filter(|&end| end <= self.region.len)
                .ok_or_else(|| {
                    QuantError::Shape(format!(
                        "weight arena: {len} bytes requested, {} left",
                        self.region.len - start
                    ))
                })?;
            *next = end.next_multiple_of(SLOT_ALIGN).min(self.region.len);
            start
        };
        // SAFETY: `start..start + len` is inside the region and was handed out to this call
        // alone (under the lock); no `Slot` covers it yet.
        let bytes = unsafe { std::slice::from_raw_parts_mut(self.region.ptr.add(start), len) };
        fill(bytes)?;
        let slot = Slot {
            region: Arc::clone(&self.region),
            range: start..start + len,
        };
        Ok(WeightBytes::new(Arc::new(slot), 0..len)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_aligned_disjoint_and_hold_what_was_written() {
        let arena = WeightArena::for_sizes([100, 5000, 1]).unwrap();
        let slots: Vec<WeightBytes> = [100usize, 5000, 1]
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                arena
                    .store::<QuantError>(len, |b| {
                        assert!(b.iter().all(|&v| v == 0), "a fresh slot is zeroed");
                        b.fill(i as u8 + 1);
                        Ok(())
                    })
                    .unwrap()
            })
            .collect();
        for (i, slot) in slots.iter().enumerate() {
            let bytes = slot.as_slice();
            assert_eq!(bytes.as_ptr() as usize % SLOT_ALIGN, 0);
            assert!(bytes.iter().all(|&v| v == i as u8 + 1));
        }
        assert_eq!(slots[0].as_slice().len(), 100);
        assert_eq!(arena.remaining(), 0);
        let full = arena.store::<QuantError>(1, |_| Ok(()));
        assert!(full.is_err(), "no room left is an error");
    }

    #[test]
    fn a_failed_fill_is_returned_and_slots_outlive_the_arena() {
        let arena = WeightArena::for_sizes([64, 64]).unwrap();
        let err = arena.store(64, |_| Err(QuantError::Shape("bad".into())));
        assert!(matches!(err, Err(QuantError::Shape(m)) if m == "bad"));
        let kept = arena
            .store::<QuantError>(64, |b| {
                b.fill(7);
                Ok(())
            })
            .unwrap();
        drop(arena);
        assert!(kept.as_slice().iter().all(|&v| v == 7));
    }

    #[test]
    fn a_large_arena_starts_on_a_huge_page() {
        let arena = WeightArena::for_sizes([3 * HUGE_PAGE]).unwrap();
        assert_eq!(arena.region.ptr as usize % HUGE_PAGE, 0);
    }
}
