//! What replicas sharing one PostgreSQL store coordinate through it: the
//! leader lease, the fleet's change lock, and the revision every recorded
//! change bumps.
//!
//! Owns: three dedicated connections, apart from the pool so a busy pool
//! never delays a lease renewal or a notification:
//! - the **lease**: the session advisory lock [`LEADER_LOCK`]. Whoever holds
//!   it leads (runs the controllers and drift watches). Kill -9 of the leader
//!   closes its session, which frees the lock at once; a leader whose machine
//!   vanished is dropped by the server's TCP keepalives (set on the session to
//!   fit `lease_ttl`). A leader that cannot renew (check) its lease within
//!   half of `lease_ttl` steps down before anyone can take over.
//! - the **change lock** [`CHANGE_LOCK`]: every change (config, manual action,
//!   decision) holds it from reading the store to its last write, so changes
//!   made on different replicas never interleave and a change is always made
//!   on the latest state (manual control wins across the fleet too).
//! - **LISTEN** on [`CHANNEL`]: the store's triggers bump `abgate_revision`
//!   and notify with `n:at_ms:application_name` at each commit that touched
//!   config, decisions, states or weight history; polled every second as the
//!   fallback for a notification lost with a connection.
//!
//! Never: reads or writes abgate's records (the [`super::Store`] calls do),
//! or decides anything: it reports (leader or not, the latest revision) and
//! the control plane acts.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Mutex, OwnedMutexGuard};
use tokio_postgres::{AsyncMessage, Client};

use super::StoreError;
use crate::clock::now_ms;

/// The session lock the leader holds ("abgate" in ASCII, + 2; + 0 serialises
/// migrations).
pub const LEADER_LOCK: i64 = 0x6162_6761_7465 + 2;

/// The session lock a change holds from its first read to its last write.
pub const CHANGE_LOCK: i64 = 0x6162_6761_7465 + 3;

/// The notification channel of recorded changes.
pub const CHANNEL: &str = "abgate_changes";

/// How long a change waits for the fleet's change lock before it is refused
/// (503, retry): another replica's change takes milliseconds.
const CHANGE_WAIT: Duration = Duration::from_secs(5);

/// How often the revision is polled besides the notifications.
const POLL: Duration = Duration::from_secs(1);

/// A dedicated connection: its client, and the notifications its session
/// receives (closed when the connection ends).
pub(super) struct Link {
    client: Client,
    notes: tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::Notification>,
}

impl Link {
    /// Spawns the driver of `connection`, forwarding its notifications.
    pub(super) fn drive<S, T>(
        client: Client,
        mut connection: tokio_postgres::Connection<S, T>,
    ) -> Link
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (tx, notes) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(n))) => {
                        if tx.send(n).is_err() {
                            return;
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "a fleet connection ended");
                        return;
                    }
                    None => return,
                }
            }
        });
        Link { client, notes }
    }
}

/// Opens a dedicated connection (the store's URL, TLS and timeouts).
pub(super) type Connect =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<Link, StoreError>> + Send>> + Send + Sync>;

/// The latest recorded change the store reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revision {
    /// Bumped once per committed statement that changed config, decisions,
    /// states or weight history.
    pub n: u64,
    /// When it was committed (the database's clock, Unix ms).
    pub at_ms: u64,
}

/// A replica's link to the fleet (see the module doc).
pub struct FleetLink {
    replica: String,
    lease_ttl: Duration,
    connect: Connect,
    leader: watch::Sender<bool>,
    revision: watch::Sender<Revision>,
    /// The change lock's connection; `None` until first needed or after it broke.
    change: Arc<Mutex<Option<Link>>>,
    /// Set while the store's connections fail: the lease task's last error.
    reachable: watch::Sender<bool>,
}

impl FleetLink {
    pub(super) fn new(replica: String, lease_ttl: Duration, connect: Connect) -> Arc<FleetLink> {
        let link = Arc::new(FleetLink {
            replica,
            lease_ttl,
            connect,
            leader: watch::channel(false).0,
            revision: watch::channel(Revision::default()).0,
            change: Arc::new(Mutex::new(None)),
            reachable: watch::channel(true).0,
        });
        tokio::spawn(lease(Arc::downgrade(&link)));
        tokio::spawn(listen(Arc::downgrade(&link)));
        link
    }

    /// This replica's id (persisted in its state_dir).
    pub fn replica(&self) -> &str {
        &self.replica
    }

    pub fn lease_ttl(&self) -> Duration {
        self.lease_ttl
    }

    /// Whether this replica holds the lease, as it changes.
    pub fn leader(&self) -> watch::Receiver<bool> {
        self.leader.subscribe()
    }

    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// Whether the lease's last check reached the store.
    pub fn is_reachable(&self) -> bool {
        *self.reachable.borrow()
    }

    /// The latest revision the store reported, as it changes.
    pub fn revision(&self) -> watch::Receiver<Revision> {
        self.revision.subscribe()
    }

    /// Takes the fleet's change lock (waiting for another replica's change to
    /// finish). Released when the guard drops.
    pub async fn lock_changes(&self) -> Result<ChangeLock, StoreError> {
        let mut slot = self.change.clone().lock_owned().await;
        let attempt = async {
            if slot.is_none() {
                let link = (self.connect)().await?;
                // Server-side: a wait past this fails with 55P03 instead of
                // acquiring the lock later for a caller who gave up.
                link.client
                    .batch_execute(&format!(
                        "SET lock_timeout = '{}ms'",
                        CHANGE_WAIT.as_millis()
                    ))
                    .await?;
                *slot = Some(link);
            }
            let link = slot.as_ref().expect("connected above");
            link.client
                .execute("SELECT pg_advisory_lock($1)", &[&CHANGE_LOCK])
                .await?;
            Ok::<(), StoreError>(())
        };
        match tokio::time::timeout(CHANGE_WAIT + Duration::from_secs(1), attempt).await {
            Ok(Ok(())) => Ok(ChangeLock { slot: Some(slot) }),
            Ok(Err(e)) => {
                // A broken session holds no lock; a fresh one is opened next time.
                *slot = None;
                Err(match e {
                    StoreError::Postgres(m) if m.contains("55P03") => StoreError::Unavailable(
                        "another replica's change holds the fleet's change lock".into(),
                    ),
                    other => other,
                })
            }
            Err(_) => {
                *slot = None;
                Err(StoreError::Unavailable(
                    "timed out waiting for the fleet's change lock".into(),
                ))
            }
        }
    }
}

/// The fleet's change lock, held (see [`FleetLink::lock_changes`]).
pub struct ChangeLock {
    slot: Option<OwnedMutexGuard<Option<Link>>>,
}

impl Drop for ChangeLock {
    fn drop(&mut self) {
        let Some(mut slot) = self.slot.take() else {
            return;
        };
        // The unlock goes out on the same session before the next lock can
        // (the slot stays locked until it is done); a failed unlock drops
        // the session, which frees the lock as well.
        tokio::spawn(async move {
            let unlocked = match slot.as_ref() {
                Some(link) => tokio::time::timeout(
                    CHANGE_WAIT,
                    link.client
                        .execute("SELECT pg_advisory_unlock($1)", &[&CHANGE_LOCK]),
                )
                .await
                .is_ok_and(|r| r.is_ok()),
                None => true,
            };
            if !unlocked {
                *slot = None;
            }
        });
    }
}

/// Keeps trying for the lease every fifth of `lease_ttl`; once held, checks
/// its session as often and steps down when a check fails or takes more than
/// half of `lease_ttl`.
async fn lease(link: std::sync::Weak<FleetLink>) {
    let mut held: Option<Link> = None;
    loop {
        let Some(fleet) = link.upgrade() else { return };
        let ttl = fleet.lease_ttl;
        let check = ttl / 2;
        let every = ttl / 5;
        let attempt = async {
            if held.is_none() {
                let l = (fleet.connect)().await?;
                // The server drops a vanished leader's session (and so its
                // lock) within about half of lease_ttl plus two probes.
                let idle = (ttl.as_secs() / 2).max(1);
                l.client
                    .batch_execute(&format!(
                        "SET tcp_keepalives_idle = {idle}; SET tcp_keepalives_interval = 1; \
                         SET tcp_keepalives_count = 2"
                    ))
                    .await?;
                held = Some(l);
            }
            let client = &held.as_ref().expect("connected above").client;
            if *fleet.leader.borrow() {
                client.execute("SELECT 1", &[]).await?;
                Ok::<bool, StoreError>(true)
            } else {
                Ok(client
                    .query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK])
                    .await?
                    .get(0))
            }
        };
        match tokio::time::timeout(check, attempt).await {
            Ok(Ok(leads)) => {
                fleet
                    .reachable
                    .send_if_modified(|r| !std::mem::replace(r, true));
                if leads != *fleet.leader.borrow() {
                    tracing::info!(replica = %fleet.replica, "this replica now leads the fleet");
                    fleet.leader.send_replace(leads);
                }
            }
            outcome => {
                if *fleet.leader.borrow() {
                    tracing::warn!(replica = %fleet.replica, "lost the store: this replica steps down as leader");
                }
                if let Ok(Err(e)) = &outcome {
                    tracing::debug!(error = %e, "lease check failed");
                }
                fleet.leader.send_replace(false);
                fleet.reachable.send_replace(false);
                // A new session starts without the lock.
                held = None;
            }
        }
        drop(fleet);
        tokio::time::sleep(every).await;
    }
}

/// LISTENs for recorded changes and polls the revision every [`POLL`].
async fn listen(link: std::sync::Weak<FleetLink>) {
    let mut session: Option<Link> = None;
    loop {
        let Some(fleet) = link.upgrade() else { return };
        if session.is_none() {
            let opened = tokio::time::timeout(fleet.lease_ttl, async {
                let l = (fleet.connect)().await?;
                l.client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
                Ok::<Link, StoreError>(l)
            })
            .await;
            match opened {
                Ok(Ok(l)) => session = Some(l),
                _ => {
                    drop(fleet);
                    tokio::time::sleep(POLL).await;
                    continue;
                }
            }
        }
        let l = session.as_mut().expect("opened above");
        // Poll first: it catches up after a (re)connect and stands in for a
        // lost notification.
        let polled = tokio::time::timeout(
            POLL,
            l.client
                .query_one("SELECT n, at_ms FROM abgate_revision", &[]),
        )
        .await;
        match polled {
            Ok(Ok(row)) => {
                let r = Revision {
                    n: row.get::<_, i64>(0).max(0) as u64,
                    at_ms: row.get::<_, i64>(1).max(0) as u64,
                };
                advance(&fleet.revision, r);
            }
            _ => {
                session = None;
                continue;
            }
        }
        let deadline = tokio::time::Instant::now() + POLL;
        loop {
            match tokio::time::timeout_at(deadline, l.notes.recv()).await {
                Ok(Some(note)) => {
                    if let Some(r) = parse_note(note.payload()) {
                        advance(&fleet.revision, r);
                    }
                }
                Ok(None) => {
                    session = None;
                    break;
                }
                Err(_) => break,
            }
        }
    }
}

/// Publishes `r` if it is newer than what is known.
fn advance(revision: &watch::Sender<Revision>, r: Revision) {
    revision.send_if_modified(|known| {
        if r.n > known.n {
            *known = r;
            true
        } else {
            false
        }
    });
}

/// `n:at_ms` (what the store's trigger sends).
fn parse_note(payload: &str) -> Option<Revision> {
    let (n, at) = payload.split_once(':')?;
    let at = at.split(':').next()?;
    Some(Revision {
        n: n.parse().ok()?,
        at_ms: at.parse().ok()?,
    })
}

/// This replica's id: read from `state_dir/replica-id`, or made (random) and
/// written there on first start, so a restarted replica keeps its saved counts
/// and a new one (an empty state_dir) starts its own.
pub fn replica_id(state_dir: &std::path::Path) -> Result<String, StoreError> {
    let path = state_dir.join("replica-id");
    let dir_error = |source| StoreError::Dir {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(dir_error(e)),
    }
    std::fs::create_dir_all(state_dir).map_err(dir_error)?;
    let id = format!("{:016x}", rand::random::<u64>());
    // Written whole or not at all: a crash mid-write leaves no half id.
    let tmp = state_dir.join("replica-id.tmp");
    std::fs::write(&tmp, &id).map_err(dir_error)?;
    std::fs::rename(&tmp, &path).map_err(dir_error)?;
    Ok(id)
}

/// How far behind the store a replica that applied revision `applied` is:
/// zero when it is current, else the time since the newest revision was
/// committed.
pub fn lag_ms(applied: u64, latest: &Revision) -> u64 {
    if applied >= latest.n {
        0
    } else {
        now_ms().saturating_sub(latest.at_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notification_reads_as_its_revision_and_time() {
        assert_eq!(
            parse_note("42:1700000000123:abgate/r1"),
            Some(Revision {
                n: 42,
                at_ms: 1_700_000_000_123
            })
        );
        assert_eq!(parse_note("42"), None);
        assert_eq!(parse_note("x:1"), None);
        let (tx, rx) = watch::channel(Revision { n: 5, at_ms: 1 });
        advance(&tx, Revision { n: 4, at_ms: 9 });
        assert_eq!(rx.borrow().n, 5, "an older revision never goes back");
        advance(&tx, Revision { n: 6, at_ms: 9 });
        assert_eq!(*rx.borrow(), Revision { n: 6, at_ms: 9 });
        assert_eq!(lag_ms(6, &rx.borrow()), 0);
        assert!(lag_ms(5, &rx.borrow()) > 0);
    }
}
