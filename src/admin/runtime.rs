//! A runtime of its own for the admin API and the web page's live updates.
//!
//! An open page costs the server a tick a second (every experiment's view as
//! JSON) and a history fetch now and then (thousands of points). On the
//! runtime that proxies requests, each is a burst of CPU that requests queued
//! on the same worker wait behind: fifty pages tripled the data plane's p99.
//! Here that work runs on one worker thread (and its own blocking pool) at a
//! lower scheduling priority, so on a busy machine the kernel prefers the
//! data plane's workers and the page waits instead.
//!
//! The controller stays on the main runtime: its decisions are the product,
//! and a look costs tens of microseconds.
//!
//! Owns: that runtime's threads and their priority. Never: decides what runs
//! on it (`app` does).

use std::future::Future;

use tokio::runtime::{Builder, Runtime};
use tokio::task::JoinHandle;

/// How much lower the admin threads' priority is (`nice` steps): the kernel
/// then gives a data-plane worker about ten times the admin thread's share
/// of a contended core, and still some to the admin thread.
pub const NICE: i32 = 10;

/// The admin runtime; its threads stop when it is dropped.
pub struct AdminRuntime {
    rt: Option<Runtime>,
}

impl AdminRuntime {
    pub fn start() -> std::io::Result<AdminRuntime> {
        // Threads inherit their creator's priority, and the admin worker
        // creates the blocking threads: each is set to the starting
        // thread's priority plus NICE, not lowered again and again.
        let target = priority_of_this_thread().map(|p| (p + NICE).min(19));
        let rt = Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(8)
            .thread_name("abgate-admin")
            .on_thread_start(move || {
                if let Some(p) = target {
                    set_priority_of_this_thread(p);
                }
            })
            .enable_all()
            .build()?;
        Ok(AdminRuntime { rt: Some(rt) })
    }

    pub fn spawn<F>(&self, work: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.rt.as_ref().expect("running until dropped").spawn(work)
    }
}

impl Drop for AdminRuntime {
    fn drop(&mut self) {
        // Dropping a runtime waits for its threads, which an async caller
        // (a test, `shutdown`) must not do; its tasks have stopped by then.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// The calling thread's nice value (Linux: `nice` is per thread; `0` names
/// the calling thread). None elsewhere: the admin threads then keep the
/// default priority.
fn priority_of_this_thread() -> Option<i32> {
    #[cfg(target_os = "linux")]
    // SAFETY: a plain system call about the calling thread.
    unsafe {
        Some(libc::getpriority(libc::PRIO_PROCESS, 0))
    }
    #[cfg(not(target_os = "linux"))]
    None
}

/// Sets the calling thread's nice value. Raising one's own needs no
/// privilege; if it fails the thread keeps its priority.
fn set_priority_of_this_thread(nice: i32) {
    #[cfg(target_os = "linux")]
    // SAFETY: a plain system call about the calling thread.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, nice);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn its_worker_and_blocking_threads_run_at_one_lower_priority() {
        let mine = priority_of_this_thread().unwrap();
        let rt = AdminRuntime::start().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        rt.spawn(async move {
            let worker = priority_of_this_thread();
            // A blocking thread is created by the worker, at its priority.
            let blocking = tokio::task::spawn_blocking(priority_of_this_thread)
                .await
                .unwrap();
            let _ = tx.send((worker, blocking));
        });
        let (worker, blocking) = rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        assert_eq!(worker, Some((mine + NICE).min(19)));
        assert_eq!(blocking, worker);
    }
}
