//! The driver: Nomad's lifecycle semantics over ECS. It owns the current
//! configuration, the store and the reconciler; plugin RPCs call into it. It
//! never talks to ECS about tasks itself: it records desired state and waits
//! on the reconciler.

pub mod handle;
pub mod lifecycle;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{self, Settings};
use crate::ecs::{ClusterState, Ecs};
use crate::error::DriverError;
use crate::reconcile::{self, Reconciler};
use crate::store::{SledStore, StateDir, Store};

/// The name jobs use: `driver = "ecs"` (upstream's name).
pub const NAME: &str = "ecs";

/// How long SetConfig waits for a previous process to release the state
/// directory (Nomad gives a killed plugin up to 2 s).
const STATE_DIR_WAIT: Duration = Duration::from_secs(5);

/// Driver health, as the fingerprint reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Disabled or not configured: Nomad removes `driver.ecs`.
    Undetected,
    /// Configured but not working.
    Unhealthy,
    /// Tasks can be placed here.
    Healthy,
}

/// A fingerprint attribute value.
#[derive(Clone, Debug, PartialEq)]
pub enum Attr {
    /// A boolean.
    Bool(bool),
    /// A string.
    String(String),
}

/// One fingerprint snapshot.
#[derive(Clone, Debug, PartialEq)]
pub struct Fingerprint {
    /// The health state.
    pub health: Health,
    /// Why, in words an operator can act on.
    pub description: String,
    /// Node attributes (`driver.ecs.*`).
    pub attributes: BTreeMap<String, Attr>,
}

/// The configuration in force and the client built from it.
#[derive(Debug)]
pub struct Configured {
    /// The validated settings.
    pub settings: Settings,
    /// The ECS client, or why there is none.
    pub ecs: Result<Ecs, String>,
    /// The Nomad API client; none without an address (safe mode: StopTask
    /// stops, StartTask starts, no hand-off, no adoption, no orphan sweep).
    pub nomad: Option<crate::nomad::NomadApi>,
}

/// The driver instance of one plugin process.
pub struct Driver {
    shutdown: CancellationToken,
    current: watch::Sender<Option<Arc<Configured>>>,
    runtime: Mutex<Option<Arc<Runtime>>>,
}

/// The open store and the running reconciler.
pub struct Runtime {
    /// The locked state directory.
    pub state_dir: StateDir,
    /// The reconciler's handle.
    pub reconciler: reconcile::Handle,
}

impl Driver {
    /// A driver that is not configured yet.
    pub fn new(shutdown: CancellationToken) -> Self {
        Self {
            shutdown,
            current: watch::Sender::new(None),
            runtime: Mutex::new(None),
        }
    }

    /// The store and reconciler, once the plugin is configured for real.
    pub async fn runtime(&self) -> Option<Arc<Runtime>> {
        self.runtime.lock().await.clone()
    }

    /// Apply a plugin config (decoded by the schema). Idempotent: the same
    /// config twice changes nothing. `for_real` is false on Nomad's
    /// validation launch (no `nomad_config`): then the state directory is not
    /// touched, so validation never competes with the long-lived instance.
    ///
    /// # Errors
    /// [`DriverError::Config`] naming the bad option; [`DriverError::StateDir`]
    /// when another live process holds the state directory.
    pub async fn set_config(
        &self,
        block: serde_json::Value,
        for_real: bool,
    ) -> Result<(), DriverError> {
        let settings = config::load(Some(block)).map_err(DriverError::Config)?;
        let unchanged = self
            .current
            .borrow()
            .as_ref()
            .is_some_and(|c| c.settings == settings);
        let ecs = if unchanged {
            self.configured()
                .and_then(|c| c.ecs.clone().ok())
                .ok_or("disabled".to_string())
        } else if settings.enabled {
            Ecs::connect(&settings).await.map_err(|e| e.to_string())
        } else {
            Err("disabled".to_string())
        };
        let nomad = if unchanged {
            // Same settings: keep the client (building one reads the CA files).
            self.configured().and_then(|c| c.nomad.clone())
        } else {
            match settings
                .nomad_api()
                .map(|c| crate::nomad::NomadApi::new(&c))
            {
                None => {
                    if settings.enabled {
                        tracing::warn!(
                            "no Nomad API address (nomad_address or NOMAD_ADDR): drains and node loss stop ECS tasks \
                         instead of handing them over, and the orphan sweep is off"
                        );
                    }
                    None
                }
                Some(Ok(api)) => Some(api),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "the Nomad API client cannot be built; running without it (safe mode)");
                    None
                }
            }
        };
        if for_real && settings.enabled {
            let mut held = self.runtime.lock().await;
            match held.as_ref() {
                Some(rt) if rt.state_dir.path() != settings.state_dir => {
                    return Err(DriverError::StateDirChanged {
                        open: rt.state_dir.path().to_path_buf(),
                        requested: settings.state_dir.clone(),
                    });
                }
                Some(rt) => {
                    if let Ok(ecs) = &ecs {
                        rt.reconciler.set_ecs(ecs.clone()).await;
                    }
                    rt.reconciler.set_nomad(nomad.clone()).await;
                }
                None => {
                    if let Ok(ecs) = &ecs {
                        let dir = StateDir::open(&settings.state_dir, STATE_DIR_WAIT)
                            .await
                            .map_err(DriverError::StateDir)?;
                        let store: Arc<dyn Store> =
                            Arc::new(SledStore::open(dir.path()).map_err(DriverError::StateDir)?);
                        let (reconciler, handle) = Reconciler::new(
                            store,
                            ecs.clone(),
                            settings.clone(),
                            reconcile::plan::Policy::from_settings(&settings),
                            nomad.clone(),
                        );
                        tokio::spawn(reconciler.run(self.shutdown.clone()));
                        *held = Some(Arc::new(Runtime {
                            state_dir: dir,
                            reconciler: handle,
                        }));
                    } else {
                        // Without an ECS client nothing can run; the store
                        // stays closed until a config that works arrives.
                        tracing::warn!(
                            "no ECS client; the task store stays closed until SetConfig succeeds"
                        );
                    }
                }
            }
        }
        if unchanged {
            tracing::debug!("SetConfig: configuration unchanged");
            return Ok(());
        }
        tracing::info!(
            enabled = settings.enabled,
            cluster = %settings.cluster,
            region = settings.region.as_deref().unwrap_or(""),
            endpoint = settings.endpoint.as_deref().unwrap_or(""),
            "configured"
        );
        self.current.send_replace(Some(Arc::new(Configured {
            settings,
            ecs,
            nomad,
        })));
        Ok(())
    }

    /// The configuration in force, if any.
    pub fn configured(&self) -> Option<Arc<Configured>> {
        self.current.borrow().clone()
    }

    /// Check ECS and describe the driver's health now.
    pub async fn fingerprint(&self) -> Fingerprint {
        let version = || {
            (
                "driver.ecs.version".to_string(),
                Attr::String(env!("CARGO_PKG_VERSION").into()),
            )
        };
        let Some(conf) = self.configured() else {
            return Fingerprint {
                health: Health::Undetected,
                description: "not configured yet (waiting for SetConfig)".into(),
                attributes: BTreeMap::new(),
            };
        };
        if !conf.settings.enabled {
            return Fingerprint {
                health: Health::Undetected,
                description: "disabled".into(),
                attributes: BTreeMap::new(),
            };
        }
        let unhealthy = |description: String| Fingerprint {
            health: Health::Unhealthy,
            description,
            attributes: BTreeMap::from([("driver.ecs".to_string(), Attr::Bool(false)), version()]),
        };
        let ecs = match &conf.ecs {
            Ok(ecs) => ecs,
            Err(why) => return unhealthy(why.clone()),
        };
        let cluster = &conf.settings.cluster;
        match ecs.describe_cluster(cluster).await {
            Ok(ClusterState::Active { arn }) => Fingerprint {
                health: Health::Healthy,
                description: "Healthy".into(),
                attributes: BTreeMap::from([
                    ("driver.ecs".to_string(), Attr::Bool(true)),
                    (
                        "driver.ecs.cluster".to_string(),
                        Attr::String(cluster.clone()),
                    ),
                    ("driver.ecs.cluster_arn".to_string(), Attr::String(arn)),
                    (
                        "driver.ecs.region".to_string(),
                        Attr::String(ecs.region().to_string()),
                    ),
                    version(),
                ]),
            },
            Ok(ClusterState::Missing) => unhealthy(format!(
                "ECS cluster {cluster:?} does not exist in region {} (endpoint {})",
                ecs.region(),
                ecs.endpoint()
            )),
            Ok(ClusterState::NotActive { status }) => {
                unhealthy(format!("ECS cluster {cluster:?} is {status}, not ACTIVE"))
            }
            Err(e) => unhealthy(e.to_string()),
        }
    }

    /// A stream of fingerprints: one at once, then one per
    /// `fingerprint_interval` and one whenever the configuration changes.
    /// Ends when the receiver is dropped or the plugin shuts down.
    pub fn fingerprints(self: &Arc<Self>) -> mpsc::Receiver<Fingerprint> {
        let (tx, rx) = mpsc::channel(4);
        let me = self.clone();
        tokio::spawn(async move {
            let mut changes = me.current.subscribe();
            loop {
                let fp = tokio::select! {
                    () = me.shutdown.cancelled() => return,
                    () = tx.closed() => return,
                    fp = me.fingerprint() => fp,
                };
                tracing::debug!(health = ?fp.health, description = %fp.description, "fingerprint");
                if tx.send(fp).await.is_err() {
                    return;
                }
                let period = me
                    .configured()
                    .map_or(Duration::from_secs(30), |c| c.settings.fingerprint_interval);
                changes.mark_unchanged();
                tokio::select! {
                    () = me.shutdown.cancelled() => return,
                    () = tx.closed() => return,
                    () = tokio::time::sleep(period) => {}
                    res = changes.changed() => if res.is_err() { return },
                }
            }
        });
        rx
    }

    /// The token cancelled when the plugin shuts down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Flush and release what the driver holds. Idempotent.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
    }
}
