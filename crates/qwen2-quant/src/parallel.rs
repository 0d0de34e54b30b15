//! Work sharing for decode-sized products: the calling thread starts on the work at once and
//! rayon workers join in as they become free, so a call never waits for a worker to wake up.
//!
//! A product of one activation row with a matrix of 0.5–3 MB takes 20–150 µs; waking a
//! sleeping rayon worker and handing the result back costs several µs per call and far more
//! when the cores are busy, and a caller outside the pool (the decode loop) would otherwise
//! block until the pool's workers have done everything.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The state shared with the helper jobs: a type-erased pointer to the caller's task and the
/// claim / completion counters. It outlives the call (a helper may start after the caller
/// returned), but the task pointer is only dereferenced after a successful claim, and the
/// caller does not return before every claimed task is done.
struct Shared {
    /// The next task index to hand out.
    next: AtomicUsize,
    /// Tasks finished.
    done: AtomicUsize,
    /// Number of tasks.
    tasks: usize,
    /// The caller's `&F`, erased.
    task: *const (),
    /// Calls the erased `&F` with a task index.
    call: unsafe fn(*const (), usize),
}

// SAFETY: `task` points to an `F: Sync`, only called while the caller waits in `share`.
unsafe impl Send for Shared {}
// SAFETY: as above; everything else is atomics and plain data.
unsafe impl Sync for Shared {}

/// # Safety
/// `task` must point to a live `F`.
unsafe fn call_erased<F: Fn(usize) + Sync>(task: *const (), index: usize) {
    (*task.cast::<F>())(index)
}

impl Shared {
    /// Claims and runs tasks until none is left.
    fn work(&self) {
        loop {
            let index = self.next.fetch_add(1, Ordering::Relaxed);
            if index >= self.tasks {
                return;
            }
            // Counts the task as done even if it panics, so that the caller's wait ends.
            let _done = Done(&self.done);
            // SAFETY: the claim succeeded, so the caller of `share` is still waiting (it
            // returns or unwinds only once `done` counts this task) and `task` is live.
            unsafe { (self.call)(self.task, index) };
        }
    }

    /// Stops further claims and waits until every claimed task is done.
    fn finish(&self) {
        let claimed = self
            .next
            .swap(self.tasks, Ordering::Relaxed)
            .min(self.tasks);
        let mut spins = 0u32;
        while self.done.load(Ordering::Acquire) < claimed {
            if spins < 1 << 14 {
                std::hint::spin_loop();
                spins += 1;
            } else {
                std::thread::yield_now();
            }
        }
    }
}

/// Adds one to `done` when dropped.
struct Done<'a>(&'a AtomicUsize);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Release);
    }
}

/// Calls [`Shared::finish`] when dropped: the caller of `share` returns, or unwinds from a
/// panicking task, only once no helper runs or can start a task.
struct Finish<'a>(&'a Shared);

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        self.0.finish();
    }
}

/// Runs `task(i)` for every `i` in `0..tasks` on the calling thread and on up to `helpers`
/// rayon workers (as rayon jobs that claim task indices as the caller does), and returns once
/// all are done. Tasks are claimed in increasing order.
pub(crate) fn share<F: Fn(usize) + Sync>(tasks: usize, helpers: usize, task: F) {
    if tasks <= 1 || helpers == 0 {
        (0..tasks).for_each(task);
        return;
    }
    let shared = Arc::new(Shared {
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        tasks,
        task: (&task as *const F).cast(),
        call: call_erased::<F>,
    });
    let finish = Finish(&shared);
    for _ in 0..helpers.min(tasks - 1) {
        let shared = Arc::clone(&shared);
        rayon::spawn(move || shared.work());
    }
    shared.work();
    drop(finish);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once() {
        for tasks in [0, 1, 2, 7, 64] {
            for helpers in [0, 1, 3] {
                let counts: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
                share(tasks, helpers, |i| {
                    counts[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1));
            }
        }
    }

    #[test]
    fn a_panicking_task_waits_for_the_helpers() {
        // (A panic in a helper aborts, as any panic in a rayon::spawn job.)
        let ran = AtomicUsize::new(0);
        let caller = std::thread::current().id();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            share(64, 1, |i| {
                ran.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_micros(200));
                if i >= 3 && std::thread::current().id() == caller {
                    panic!("task {i} on the calling thread");
                }
            })
        }));
        assert!(result.is_err());
        // Nothing runs after `share` unwound.
        let after = ran.load(Ordering::Relaxed);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(ran.load(Ordering::Relaxed), after);
    }

    #[test]
    fn works_from_inside_the_pool() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let total = AtomicUsize::new(0);
        pool.install(|| {
            share(16, 1, |i| {
                total.fetch_add(i, Ordering::Relaxed);
            })
        });
        assert_eq!(total.load(Ordering::Relaxed), (0..16).sum());
    }
}
