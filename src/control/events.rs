//! Live updates for the web page: the hub behind `GET /v1/events`
//! (Server-Sent Events).
//!
//! Owns: the subscribers, each with a small bounded queue, and what is sent
//! to them: every [`super::series::SAMPLE_EVERY`] one `tick` event (the
//! experiment list as `GET /v1/experiments` answers it, and the history points
//! added since the last tick), and a `decision` event per new decision. An
//! event is serialized once and shared by every queue.
//!
//! A subscriber whose queue is full (a client that stopped reading: its socket
//! buffers filled, so its queue did) is dropped and its connection closed:
//! memory per subscriber is at most [`QUEUE`] shared events, and subscribers
//! are at most [`MAX_SUBSCRIBERS`].
//!
//! Never: waits for a subscriber, or builds anything when nobody listens.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};

use super::ControlPlane;

/// Events a subscriber may have queued. Ticks come once a second, so a client
/// this far behind is not reading.
pub const QUEUE: usize = 16;

/// Most subscribers at once (fifty open pages fit with room to spare; each
/// also holds one of the admin listener's connections).
pub const MAX_SUBSCRIBERS: usize = 128;

struct Subscriber {
    id: u64,
    tx: mpsc::Sender<Bytes>,
    /// Closes the subscriber's connection: a stalled client's body is not
    /// polled, so ending the stream alone would never reach it.
    close: Arc<Notify>,
}

#[derive(Default)]
pub struct EventHub {
    subscribers: Mutex<Vec<Subscriber>>,
    next_id: AtomicU64,
    dropped: AtomicU64,
}

/// One subscription: the queue to read, removed from the hub when dropped.
pub struct Subscription {
    pub id: u64,
    pub rx: mpsc::Receiver<Bytes>,
}

/// The subscriber limit is reached.
#[derive(Debug)]
pub struct Full;

/// One SSE event: `event: KIND` and its JSON on one `data:` line.
pub fn frame(kind: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {kind}\ndata: {data}\n\n"))
}

impl EventHub {
    /// Adds a subscriber; `close` is notified when the hub drops it.
    pub fn subscribe(&self, close: Arc<Notify>) -> Result<Subscription, Full> {
        let mut subs = self.lock();
        if subs.len() >= MAX_SUBSCRIBERS {
            return Err(Full);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(QUEUE);
        subs.push(Subscriber { id, tx, close });
        Ok(Subscription { id, rx })
    }

    /// Removes a subscriber (its stream ended or its connection closed).
    pub fn unsubscribe(&self, id: u64) {
        self.lock().retain(|s| s.id != id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Subscriber>> {
        self.subscribers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Subscribers now.
    pub fn subscribers(&self) -> usize {
        self.lock().len()
    }

    /// Subscribers dropped for not reading, since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Queues `event` for every subscriber, never waiting: one whose queue is
    /// full is dropped and its connection closed.
    pub fn publish(&self, event: Bytes) {
        let mut subs = self.lock();
        subs.retain(|s| match s.tx.try_send(event.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    subscriber = s.id,
                    "an event stream client stopped reading; closing it"
                );
                s.close.notify_one();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }

    /// One tick: new decisions (each its own event) and, when anyone
    /// listens, the experiment list with the fresh history points.
    /// `last_decision` is the newest decision id already seen.
    pub async fn tick(
        &self,
        control: &ControlPlane,
        fresh: Vec<super::series::FreshPoint>,
        last_decision: &mut Option<i64>,
    ) {
        let listening = self.subscribers() > 0;
        // Decisions are polled (one indexed read a second) so every path
        // that records one, manual or automatic, is covered without a hook.
        let newest = control
            .blocking(|s| s.decisions(None, 50))
            .await
            .unwrap_or_default();
        if let Some(seen) = *last_decision {
            if listening {
                for d in newest.iter().rev().filter(|d| d.id > seen) {
                    self.publish(frame("decision", &json!(d)));
                }
            }
        }
        if let Some(top) = newest.first() {
            *last_decision = Some(last_decision.map_or(top.id, |s| s.max(top.id)));
        } else if last_decision.is_none() {
            *last_decision = Some(0);
        }
        if !listening {
            return;
        }
        let mut list = Vec::new();
        for name in control.experiment_names().await {
            if let Some(v) = control.experiment_view(&name).await {
                list.push(v);
            }
        }
        // Serialized once for every subscriber, on the blocking pool: with
        // fifty experiments a tick is a few hundred kilobytes of JSON, which
        // would otherwise hold up an async worker that also serves traffic.
        let event = super::off_thread(move || {
            let points: Vec<Value> = fresh
                .iter()
                .map(|(e, s, p)| json!({"experiment": e, "series": s, "point": super::series::point_json(p)}))
                .collect();
            frame("tick", &json!({"experiments": list, "points": points}))
        })
        .await;
        self.publish(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_subscriber_that_does_not_read_is_dropped_and_told_to_close() {
        let hub = EventHub::default();
        let close = Arc::new(Notify::new());
        let mut reader = hub.subscribe(Arc::new(Notify::new())).unwrap();
        let _stalled = hub.subscribe(close.clone()).unwrap();
        for i in 0..QUEUE + 1 {
            hub.publish(frame("tick", &json!(i)));
            reader.rx.recv().await.unwrap();
        }
        assert_eq!(hub.subscribers(), 1, "the stalled one is gone");
        assert_eq!(hub.dropped(), 1);
        // The close was signalled (a stored permit).
        tokio::time::timeout(std::time::Duration::from_secs(1), close.notified())
            .await
            .expect("close notified");
    }

    #[test]
    fn subscribers_are_bounded() {
        let hub = EventHub::default();
        let subs: Vec<_> = (0..MAX_SUBSCRIBERS)
            .map(|_| hub.subscribe(Arc::new(Notify::new())).unwrap())
            .collect();
        assert!(hub.subscribe(Arc::new(Notify::new())).is_err());
        hub.unsubscribe(subs[0].id);
        assert!(hub.subscribe(Arc::new(Notify::new())).is_ok());
    }
}
