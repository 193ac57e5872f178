//! A future polled only once it has asked to be woken.
//!
//! Owns: [`WakeGate`]. A connection's task selects over its hyper connection
//! and the futures that end it (shutdown, idle). `select!` polls every branch
//! on every wake of the task, and the connection is woken several times per
//! request, while the others fire once per connection at most; polling them
//! is not free (a watch receiver takes a lock to refresh its waker, a timer
//! swaps its waker in). Behind the gate they are polled when their own waker
//! fired, and otherwise cost one atomic swap.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// Whether the inner future was woken, and the task to wake then.
struct Flag {
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        if let Some(w) = self.task.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            w.wake_by_ref();
        }
    }
}

/// `inner`, polled with a waker of its own; see the module doc. Boxed once
/// (per connection), so the gate is `Unpin` and can be polled by reference.
pub struct WakeGate<F> {
    inner: Pin<Box<F>>,
    flag: Arc<Flag>,
    /// The waker handed to `inner` (wakes `flag`).
    waker: Waker,
    /// The task's waker last stored in `flag`, to notice a new one cheaply.
    task: Option<Waker>,
}

impl<F: Future> WakeGate<F> {
    pub fn new(inner: F) -> Self {
        let flag = Arc::new(Flag {
            // Polled on its first poll.
            woken: AtomicBool::new(true),
            task: Mutex::new(None),
        });
        WakeGate {
            inner: Box::pin(inner),
            waker: Waker::from(flag.clone()),
            flag,
            task: None,
        }
    }
}

impl<F: Future> Future for WakeGate<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let same_task = this.task.as_ref().is_some_and(|t| t.will_wake(cx.waker()));
        if !same_task {
            // A new task waker (the first poll, or the future moved tasks):
            // stored before polling, so a wake from now on reaches it.
            let w = cx.waker().clone();
            *this.flag.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(w.clone());
            this.task = Some(w);
            this.flag.woken.store(true, Ordering::Release);
        }
        if !this.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let mut inner_cx = Context::from_waker(&this.waker);
        this.inner.as_mut().poll(&mut inner_cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts its polls; ready once `ready` is set, waking through the last
    /// waker it was given. Clones share the counters.
    #[derive(Clone)]
    struct Probe {
        polls: Arc<AtomicUsize>,
        ready: Arc<AtomicBool>,
        waker: Arc<Mutex<Option<Waker>>>,
    }

    impl Future for Probe {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if self.ready.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    struct CountingWake(AtomicUsize);
    impl Wake for CountingWake {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A gated probe, and a handle sharing its counters.
    fn gated() -> (WakeGate<Probe>, Probe) {
        let probe = Probe {
            polls: Arc::new(AtomicUsize::new(0)),
            ready: Arc::new(AtomicBool::new(false)),
            waker: Arc::new(Mutex::new(None)),
        };
        (WakeGate::new(probe.clone()), probe)
    }

    #[test]
    fn the_inner_future_is_polled_only_after_its_own_wake() {
        let (mut gate, probe) = gated();
        let (polls, ready, inner_waker) = (probe.polls, probe.ready, probe.waker);
        let task = Arc::new(CountingWake(AtomicUsize::new(0)));
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut gate).poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 1);
        // The task is woken for something else many times: the inner future
        // is left alone.
        for _ in 0..100 {
            assert!(Pin::new(&mut gate).poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1);
        // Its own wake reaches the task, and the next poll polls it.
        ready.store(true, Ordering::SeqCst);
        inner_waker.lock().unwrap().take().unwrap().wake();
        assert_eq!(task.0.load(Ordering::SeqCst), 1);
        assert!(Pin::new(&mut gate).poll(&mut cx).is_ready());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_new_task_waker_polls_again_and_is_the_one_woken() {
        let (mut gate, probe) = gated();
        let (polls, inner_waker) = (probe.polls, probe.waker);
        let (a, b) = (
            Arc::new(CountingWake(AtomicUsize::new(0))),
            Arc::new(CountingWake(AtomicUsize::new(0))),
        );
        let wa = Waker::from(a.clone());
        assert!(Pin::new(&mut gate)
            .poll(&mut Context::from_waker(&wa))
            .is_pending());
        let wb = Waker::from(b.clone());
        assert!(Pin::new(&mut gate)
            .poll(&mut Context::from_waker(&wb))
            .is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
        inner_waker.lock().unwrap().take().unwrap().wake();
        assert_eq!(
            (a.0.load(Ordering::SeqCst), b.0.load(Ordering::SeqCst)),
            (0, 1)
        );
    }
}
