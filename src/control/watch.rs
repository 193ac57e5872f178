//! Re-reading the config file: on change (the `notify` crate) and on SIGHUP.
//!
//! The file's directory is watched, not the file, because editors and config
//! management replace files by rename, which a file watch would lose.

use std::sync::Arc;
use std::time::Duration;

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
            if ev
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
