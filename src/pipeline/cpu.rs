//! Where CPU work runs: interactive work on tokio's blocking pool, and batch jobs' decoding
//! and encoding on background threads at a lower scheduling priority, so that on a busy
//! machine they give the CPU to interactive requests first.

use std::sync::Arc;

/// Niceness of the background threads (0 is normal; 19 the least favoured).
const BACKGROUND_NICENESS: libc::c_int = 10;

/// An executor for blocking work.
#[derive(Clone)]
pub enum Cpu {
    /// Tokio's blocking pool.
    Blocking,
    /// A small pool of low-priority threads.
    Background(Arc<rayon::ThreadPool>),
}

impl Cpu {
    /// Low-priority threads for background work: half the cores (at least one).
    pub fn background() -> anyhow::Result<Cpu> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads((cores / 2).max(1))
            .thread_name(|i| format!("virtualfit-background-{i}"))
            .start_handler(|_| lower_priority())
            .build()?;
        Ok(Cpu::Background(Arc::new(pool)))
    }

    /// How many tasks run at once.
    pub fn threads(&self) -> usize {
        match self {
            Cpu::Blocking => usize::MAX,
            Cpu::Background(pool) => pool.current_num_threads(),
        }
    }

    /// Runs `f` and answers its result; an error if it panicked.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, String> {
        match self {
            Cpu::Blocking => tokio::task::spawn_blocking(f)
                .await
                .map_err(|e| e.to_string()),
            Cpu::Background(pool) => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                pool.spawn(move || {
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
                    let _ = tx.send(result);
                });
                match rx.await {
                    Ok(Ok(v)) => Ok(v),
                    Ok(Err(_)) => Err("the background task panicked".into()),
                    Err(_) => Err("the background pool stopped".into()),
                }
            }
        }
    }
}

#[cfg(target_os = "linux")]
fn lower_priority() {
    // SAFETY: gettid has no preconditions; setpriority with PRIO_PROCESS and a thread id changes
    // only that thread's niceness (Linux semantics) and reads no memory of ours.
    let failed = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, BACKGROUND_NICENESS) != 0
    };
    if failed {
        tracing::debug!("cannot lower a background thread's priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn background_work_runs_on_a_niced_thread_and_panics_are_errors() {
        let cpu = Cpu::background().expect("pool");
        let name = cpu
            .run(|| std::thread::current().name().map(str::to_string))
            .await
            .expect("ran");
        assert_eq!(name.as_deref(), Some("virtualfit-background-0"));
        #[cfg(target_os = "linux")]
        {
            // SAFETY: as in lower_priority; getpriority only reads the thread's niceness.
            let nice = cpu
                .run(|| unsafe {
                    libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t)
                })
                .await
                .expect("ran");
            assert!(nice >= BACKGROUND_NICENESS, "niceness {nice}");
        }
        assert!(cpu.run(|| panic!("boom")).await.is_err());
        assert_eq!(Cpu::Blocking.run(|| 7).await, Ok(7));
    }
}
