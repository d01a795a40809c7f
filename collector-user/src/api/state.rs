//! [`ApiState`]: what the filters and handlers share.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::{metrics, Acl};
use crate::snapshot::SnapshotStore;

/// What the handlers read: the snapshot store, and the tokens (swappable at run time);
/// the `host` label of metrics. Handlers only read: nothing here reaches the collector.
#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<SnapshotStore>,
    pub acl: Arc<ArcSwap<Acl>>,
    /// The node's hostname, as Nomad labels its metrics.
    pub host: Arc<str>,
}

impl ApiState {
    /// Metrics are labelled with this node's hostname (see [`ApiState::with_host`]).
    pub fn new(store: Arc<SnapshotStore>, acl: Acl) -> Self {
        Self {
            store,
            acl: Arc::new(ArcSwap::from_pointee(acl)),
            host: metrics::hostname().into(),
        }
    }

    /// Labels the metrics with `host` instead of the hostname (tests, fixed output).
    pub fn with_host(mut self, host: &str) -> Self {
        self.host = host.into();
        self
    }

    /// Replaces the accepted tokens (on SIGHUP); applies from the next request on.
    pub fn set_acl(&self, acl: Acl) {
        self.acl.store(Arc::new(acl));
    }
}
