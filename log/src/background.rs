//! Runtimes for the log's background readers (the history sink, the
//! search indexer, the analytics sink): their threads run at nice
//! [`BACKGROUND_NICE`], so the kernel gives them the cores the live path
//! leaves idle. Encoding Parquet, building index segments and merging them
//! take whole milliseconds of CPU; on the live path's threads they would
//! show in every send's latency. Threads a background thread creates
//! (tantivy's indexing and merge threads, say) inherit its nice value.

/// Nice value of background threads.
pub const BACKGROUND_NICE: i32 = 10;

/// Gives the calling thread the nice value [`BACKGROUND_NICE`]. On Linux a
/// thread id is a process id to `renice` (`/proc/thread-self` names it);
/// `renice` keeps this crate free of `unsafe`. Elsewhere, or without
/// `renice`, the thread keeps its priority and a warning says so.
pub fn lower_this_threads_priority(what: &str) {
    let thread_id = std::fs::read_link("/proc/thread-self").ok().and_then(|link| link.file_name().map(|name| name.to_string_lossy().into_owned()));
    let Some(thread_id) = thread_id else {
        tracing::warn!(what, "a background thread runs at normal priority: no /proc/thread-self");
        return;
    };
    let status = std::process::Command::new("renice")
        .args(["-n", &BACKGROUND_NICE.to_string(), "-p", &thread_id])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    if !status.is_ok_and(|status| status.success()) {
        tracing::warn!(what, thread_id, "a background thread runs at normal priority: `renice` failed");
    }
}

/// A runtime of `worker_threads` low-priority workers (and low-priority
/// blocking threads) named `name`.
pub fn runtime(name: &'static str, worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads.max(1))
        .thread_name(name)
        .on_thread_start(move || lower_this_threads_priority(name))
        .enable_all()
        .build()
}

/// How long a background reader that failed waits before its
/// `attempt`-th restart: 1 s, doubling, at most a minute.
pub fn restart_backoff(attempt: u32) -> std::time::Duration {
    std::time::Duration::from_secs(1u64 << attempt.min(6)).min(std::time::Duration::from_secs(60))
}

/// A background runtime owned by async code: dropped, it shuts down
/// without waiting (a runtime may not be dropped inside another one).
pub struct Background(Option<tokio::runtime::Runtime>);

impl std::fmt::Debug for Background {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Background").finish_non_exhaustive()
    }
}

impl Background {
    /// Starts [`runtime`]`(name, worker_threads)`.
    pub fn start(name: &'static str, worker_threads: usize) -> std::io::Result<Background> {
        Ok(Background(Some(runtime(name, worker_threads)?)))
    }

    /// Where to spawn background tasks.
    pub fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("present until dropped").handle()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    /// The nice value of the calling thread, from `/proc/thread-self/stat` (field 19).
    fn nice_of_this_thread() -> i32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        after_name.split(' ').nth(16).unwrap().parse().unwrap()
    }

    #[test]
    fn background_threads_and_the_threads_they_start_run_at_a_lower_priority() {
        let before = nice_of_this_thread();
        let runtime = super::runtime("confab-test-bg", 1).unwrap();
        let (worker, inherited) = runtime.block_on(async {
            tokio::spawn(async {
                let worker = nice_of_this_thread();
                let inherited = std::thread::spawn(nice_of_this_thread).join().unwrap();
                (worker, inherited)
            })
            .await
            .unwrap()
        });
        let blocking = runtime.block_on(async { tokio::task::spawn_blocking(nice_of_this_thread).await.unwrap() });
        let expected = (before + super::BACKGROUND_NICE).min(19);
        assert_eq!((worker, inherited, blocking), (expected, expected, expected));
        assert_eq!(nice_of_this_thread(), before, "the caller's own priority is unchanged");
    }
}
