//! Re-reading the config file: on change (the `notify` crate) and on SIGHUP.
//!
//! The file's directory is watched, not the file, because editors and config
//! management replace files by rename, which a file watch would lose.
//!
//! Only events that can change the file's content wake a reload: access
//! events (open, read, close without write: `cat`, an editor opening the file,
//! a backup) and metadata changes never do. The reload itself then applies the
//! file only if its content changed since abgate last read it (see
//! `control::apply`), so a spurious wake-up changes nothing either.

use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::ControlPlane;

/// Events arriving within this window are handled as one reload (an editor's
/// save is often several writes).
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Starts watching the config file; returns the watcher, which stops when dropped.
pub fn watch_file(control: Arc<ControlPlane>) -> Option<notify::RecommendedWatcher> {
    let path = control.config_path.clone()?;
    let file_name = path.file_name()?.to_owned();
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            if may_change_content(&ev.kind)
                && ev
                    .paths
                    .iter()
                    .any(|p| p.file_name() == Some(file_name.as_os_str()))
            {
                let _ = tx.send(());
            }
        }
    })
    .map_err(|e| tracing::warn!(error = %e, "cannot watch the config file"))
    .ok()?;
    if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
        tracing::warn!(error = %e, dir = %dir.display(), "cannot watch the config directory");
        return None;
    }
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            tokio::time::sleep(DEBOUNCE).await;
            while rx.try_recv().is_ok() {}
            let _ = control.reload_file("file").await;
        }
    });
    Some(watcher)
}

/// Whether an event of this kind can change a file's content: writes,
/// creations, renames and removals (and kinds the platform cannot tell apart).
/// Opening, reading and closing without a write never can; nor can metadata.
fn may_change_content(kind: &EventKind) -> bool {
    match kind {
        // A close after writing marks a finished save: the best moment to read.
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Modify(ModifyKind::Metadata(_)) => false,
        EventKind::Create(_)
        | EventKind::Modify(_)
        | EventKind::Remove(_)
        | EventKind::Any
        | EventKind::Other => true,
    }
}

/// Re-reads the config file on every SIGHUP.
pub fn reload_on_sighup(control: Arc<ControlPlane>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot install the SIGHUP handler");
            return;
        };
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                let _ = control.reload_file("sighup").await;
            }
        });
    }
    #[cfg(not(unix))]
    let _ = control;
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, DataChange, MetadataKind, RemoveKind, RenameMode};

    #[test]
    fn reading_the_file_never_wakes_a_reload() {
        for kind in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Open(AccessMode::Read)),
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Access(AccessKind::Close(AccessMode::Any)),
            EventKind::Access(AccessKind::Any),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)),
        ] {
            assert!(!may_change_content(&kind), "{kind:?}");
        }
    }

    #[test]
    fn writes_renames_and_removals_wake_a_reload() {
        for kind in [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
            EventKind::Modify(ModifyKind::Any),
            EventKind::Remove(RemoveKind::File),
            EventKind::Any,
            EventKind::Other,
        ] {
            assert!(may_change_content(&kind), "{kind:?}");
        }
    }
}
