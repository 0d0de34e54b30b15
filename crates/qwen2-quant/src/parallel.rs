//! Work sharing for decode-sized products: the calling thread starts on the work at once and
//! rayon workers join in as they become free, so a call never waits for a worker to wake up.
//!
//! A product of one activation row with a matrix of 0.5–3 MB takes 20–150 µs; waking a
//! sleeping rayon worker and handing the result back costs several µs per call and far more
//! when the cores are busy, and a caller outside the pool (the decode loop) would otherwise
//! block until the pool's workers have done everything.
//!
//! A decode step runs ~170 such products with a few µs of other work between them. A helper
//! that finished its part therefore *lingers* for [`LINGER`]: it watches for the next call's
//! work and joins it without a wake-up (the futex wake had cost the caller 3–4% of a decode
//! step), and meanwhile runs the pool's other jobs (`rayon::yield_now`), so a join or a
//! parallel iterator of the caller still finds a worker. After [`LINGER`] without work it
//! returns to rayon, which lets the thread sleep. At most one helper per other pool thread
//! lingers. Measured on a Q4_K_M decode, back to back: +1–2%.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a helper waits for the next call's work before it goes back to rayon.
const LINGER: Duration = Duration::from_millis(2);

/// The work of the latest call, for lingering helpers to join.
static POSTED: Mutex<Option<Arc<Shared>>> = Mutex::new(None);
/// Counts the calls that posted work: a lingering helper joins when it changes.
static GENERATION: AtomicUsize = AtomicUsize::new(0);
/// Helpers lingering now (waiting for work, running a later call's tasks or another job).
static LINGERING: AtomicUsize = AtomicUsize::new(0);

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
/// rayon workers (lingering helpers first, then new rayon jobs, each claiming task indices as
/// the caller does), and returns once all are done. Tasks are claimed in increasing order.
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
    *lock_posted() = Some(Arc::clone(&shared));
    // Posted before the lingering helpers are counted, and a helper stops lingering before it
    // looks at the generation a last time (both SeqCst): either this call counts it and it
    // joins, or it is not counted and a new one is spawned.
    let generation = GENERATION.fetch_add(1, Ordering::SeqCst) + 1;
    let wanted = helpers.min(tasks - 1);
    for _ in LINGERING.load(Ordering::SeqCst).min(wanted)..wanted {
        let shared = Arc::clone(&shared);
        rayon::spawn(move || help(shared, generation));
    }
    shared.work();
    drop(finish);
    let mut posted = lock_posted();
    if posted.as_ref().is_some_and(|p| Arc::ptr_eq(p, &shared)) {
        *posted = None;
    }
}

/// The posted work, even after a panic elsewhere poisoned the lock (it only holds an
/// `Option<Arc>`, which no panic can leave half written).
fn lock_posted() -> std::sync::MutexGuard<'static, Option<Arc<Shared>>> {
    POSTED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A helper job: works on `shared`, then (if fewer than one per other pool thread linger
/// already) lingers, joining the work of later calls, until [`LINGER`] passes without any.
/// A lingering helper stays counted while it runs other jobs, so calls meanwhile do not queue
/// more helpers (each would linger in turn once it ran).
fn help(shared: Arc<Shared>, mut seen: usize) {
    shared.work();
    drop(shared);
    let cap = rayon::current_num_threads().saturating_sub(1);
    let counted = LINGERING.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
        (n < cap).then_some(n + 1)
    });
    if counted.is_err() {
        return;
    }
    let join_posted = || {
        let posted = lock_posted().clone();
        if let Some(posted) = posted {
            posted.work();
        }
    };
    let mut idle_since = Instant::now();
    loop {
        let generation = GENERATION.load(Ordering::SeqCst);
        if generation != seen {
            seen = generation;
            join_posted();
            idle_since = Instant::now();
        } else if idle_since.elapsed() > LINGER {
            LINGERING.fetch_sub(1, Ordering::SeqCst);
            // A call that posted just now may have counted this helper and spawned none.
            if GENERATION.load(Ordering::SeqCst) != seen {
                join_posted();
            }
            return;
        } else if rayon::yield_now() == Some(rayon::Yield::Executed) {
            // Another job of the pool (a join's second half, a parallel iterator's piece).
            idle_since = Instant::now();
        } else {
            std::hint::spin_loop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

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
    fn consecutive_calls_run_every_task_once_and_helpers_join_them() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let caller_only = pool.install(|| {
            let caller = std::thread::current().id();
            let mut caller_only = 0;
            for round in 0..200 {
                let counts: Vec<AtomicUsize> = (0..8).map(|_| AtomicUsize::new(0)).collect();
                let elsewhere = AtomicUsize::new(0);
                share(8, 1, |i| {
                    counts[i].fetch_add(1, Ordering::Relaxed);
                    if std::thread::current().id() != caller {
                        elsewhere.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(std::time::Duration::from_micros(20));
                });
                assert!(
                    counts.iter().all(|c| c.load(Ordering::Relaxed) == 1),
                    "round {round}"
                );
                caller_only += usize::from(elsewhere.load(Ordering::Relaxed) == 0);
                // The caller's own parallel work still runs while a helper lingers.
                let sum: usize = (0..100usize).into_par_iter().sum();
                assert_eq!(sum, 4950);
            }
            caller_only
        });
        // Loose on purpose: on a busy machine the pool's other thread may rarely get a core.
        assert!(caller_only < 200, "no helper joined any of 200 calls");
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
