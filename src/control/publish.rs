//! The one publisher: the only code that builds a routing table and swaps it
//! into the data plane.
//!
//! Owns: the table version counter, the upstream pools kept across swaps, and
//! the listener certificate's reload. A [`Publisher`] lives inside the control
//! plane's state and every method that changes what requests see takes
//! `&mut self`, so two publishes can never interleave: serialisation is a
//! property of the signature (the holder of the control plane's lock is the only
//! one who can reach `&mut Publisher`), not a convention.
//!
//! Never: validates config (it is given a valid one), records anything in the
//! store (the caller records first: write-ahead), or runs on the request path.

use std::sync::Arc;

use crate::config::Config;
use crate::outcomes::RecorderRegistry;
use crate::proxy::plane::DataPlane;
use crate::proxy::shadow::ShadowGates;
use crate::proxy::tls::{TlsError, TlsTerminator};
use crate::proxy::upstream::UpstreamPool;
use crate::proxy::wiring::Published;
use crate::routing::Layout;

pub struct Publisher {
    plane: Arc<DataPlane>,
    pools: UpstreamPool,
    recorders: Arc<RecorderRegistry>,
    /// The data-plane listener's certificate, when it terminates TLS.
    tls: Option<Arc<TlsTerminator>>,
    /// The version the next publish gets; version 0 is the empty startup table.
    next_version: u64,
    /// Shadow arms' in-flight bounds, kept across swaps like the pools.
    shadows: ShadowGates,
}

impl Publisher {
    pub fn new(
        plane: Arc<DataPlane>,
        pools: UpstreamPool,
        recorders: Arc<RecorderRegistry>,
        tls: Option<Arc<TlsTerminator>>,
    ) -> Publisher {
        Publisher {
            plane,
            pools,
            recorders,
            tls,
            next_version: 1,
            shadows: ShadowGates::default(),
        }
    }

    /// Builds a table from `config` off the hot path, each experiment's
    /// buckets laid out by `layout(name)`, and publishes it with one store;
    /// in-flight requests finish on the table they loaded. Pools of backends no
    /// table uses any more are dropped. Returns the new version.
    pub fn publish<'l>(
        &mut self,
        config: &Config,
        layout: impl Fn(&str) -> Option<&'l Layout>,
    ) -> u64 {
        let version = self.next_version;
        self.next_version += 1;
        let table = Published::build_shadowed(
            config,
            layout,
            version,
            &self.pools,
            &self.recorders,
            &self.shadows,
        );
        self.plane.table.store(Arc::new(table));
        self.plane
            .telemetry
            .gauge("abgate_table_version", &[])
            .set(version as f64);
        self.pools.prune();
        self.shadows.prune();
        version
    }

    /// Re-reads the listener certificate and key named by `config.tls`; called
    /// whenever a config is re-applied so renewed certificates take effect for
    /// new connections. Turning TLS on or off needs a restart (the listener's
    /// mode is fixed at bind). On error the old certificate stays in use.
    pub fn reload_tls(&mut self, config: &Config) -> Result<(), TlsError> {
        match (&self.tls, &config.tls) {
            (Some(t), Some(files)) => t.reload(files),
            (None, None) => Ok(()),
            _ => Err(TlsError::ModeChange),
        }
    }
}
