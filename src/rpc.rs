//! Wire <-> domain translation: the `BasePlugin` and `Driver` gRPC services.
//! Each handler decodes the request, calls the driver, and maps the result;
//! errors become status in `status` only.

pub mod convert;
pub mod status;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt as _};
use tonic::{Request, Response, Status, Streaming};

use crate::driver::{Attr, Driver, Fingerprint, Health};
use crate::error::DriverError;
use crate::proto::base::{self, base_plugin_server::BasePlugin};
use crate::proto::drivers::{self as pb, driver_server};
use crate::proto::structs::{Attribute, attribute};
use status::to_status;

/// Plugin API versions we speak (Nomad's `drivers.ApiVersion010`).
pub const API_VERSIONS: &[&str] = &["v0.1.0"];

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// `hashicorp.nomad.plugins.base.proto.BasePlugin`.
pub struct BaseService {
    driver: Arc<Driver>,
}

impl BaseService {
    /// The base service of `driver`.
    pub fn new(driver: Arc<Driver>) -> Self {
        Self { driver }
    }
}

#[tonic::async_trait]
impl BasePlugin for BaseService {
    /// Identity: a DRIVER named `ecs`, API v0.1.0, our semver.
    #[tracing::instrument(skip_all, fields(otel.name = "hashicorp.nomad.plugins.base.proto.BasePlugin/PluginInfo", otel.kind = "server", rpc.system = "grpc", rpc.service = crate::telemetry::BASE_SERVICE, rpc.method = "PluginInfo"))]
    async fn plugin_info(
        &self,
        _: Request<base::PluginInfoRequest>,
    ) -> Result<Response<base::PluginInfoResponse>, Status> {
        Ok(Response::new(base::PluginInfoResponse {
            r#type: base::PluginType::Driver as i32,
            plugin_api_versions: API_VERSIONS.iter().map(|s| (*s).to_string()).collect(),
            plugin_version: env!("CARGO_PKG_VERSION").to_string(),
            name: crate::driver::NAME.to_string(),
        }))
    }

    /// The hclspec of the agent's `plugin` block.
    #[tracing::instrument(skip_all, fields(otel.name = "hashicorp.nomad.plugins.base.proto.BasePlugin/ConfigSchema", otel.kind = "server", rpc.system = "grpc", rpc.service = crate::telemetry::BASE_SERVICE, rpc.method = "ConfigSchema"))]
    async fn config_schema(
        &self,
        _: Request<base::ConfigSchemaRequest>,
    ) -> Result<Response<base::ConfigSchemaResponse>, Status> {
        Ok(Response::new(base::ConfigSchemaResponse {
            spec: Some(crate::config::schema().to_spec()),
        }))
    }

    /// Decode the cty-msgpack config and apply it. Nomad calls this twice on
    /// its validation launch and once more on the long-lived one.
    #[tracing::instrument(skip_all, fields(otel.name = "hashicorp.nomad.plugins.base.proto.BasePlugin/SetConfig", otel.kind = "server", rpc.system = "grpc", rpc.service = crate::telemetry::BASE_SERVICE, rpc.method = "SetConfig"))]
    async fn set_config(
        &self,
        request: Request<base::SetConfigRequest>,
    ) -> Result<Response<base::SetConfigResponse>, Status> {
        let req = request.into_inner();
        let result = async {
            let api = req.plugin_api_version.trim();
            if !api.is_empty()
                && !API_VERSIONS
                    .iter()
                    .any(|v| v.trim_start_matches('v') == api.trim_start_matches('v'))
            {
                return Err(DriverError::ApiVersion(api.to_string()));
            }
            let block = if req.msgpack_config.is_empty() {
                serde_json::Value::Object(serde_json::Map::new())
            } else {
                let value =
                    crate::cty::decode(&req.msgpack_config).map_err(DriverError::ConfigBytes)?;
                crate::config::schema()
                    .decode(&value)
                    .map_err(DriverError::ConfigShape)?
            };
            if req.nomad_config.is_some()
                && let Ok(settings) = crate::config::load(Some(block.clone()))
            {
                crate::telemetry::configure(&settings);
            }
            self.driver
                .set_config(block, req.nomad_config.is_some())
                .await
        }
        .await;
        match result {
            Ok(()) => Ok(Response::new(base::SetConfigResponse {})),
            Err(e) => {
                tracing::error!(error = %e, "SetConfig rejected");
                Err(to_status("SetConfig", &e))
            }
        }
    }
}

/// `hashicorp.nomad.plugins.drivers.proto.Driver`.
pub struct DriverService {
    driver: Arc<Driver>,
}

impl DriverService {
    /// The driver service of `driver`.
    pub fn new(driver: Arc<Driver>) -> Self {
        Self { driver }
    }
}

fn not_implemented<T>(rpc: &'static str) -> Result<Response<T>, Status> {
    Err(to_status(rpc, &DriverError::NotImplemented(rpc)))
}

impl From<Fingerprint> for pb::FingerprintResponse {
    fn from(fp: Fingerprint) -> Self {
        let health = match fp.health {
            Health::Undetected => pb::fingerprint_response::HealthState::Undetected,
            Health::Unhealthy => pb::fingerprint_response::HealthState::Unhealthy,
            Health::Healthy => pb::fingerprint_response::HealthState::Healthy,
        };
        let attributes: HashMap<String, Attribute> = fp
            .attributes
            .into_iter()
            .map(|(k, v)| {
                let value = match v {
                    Attr::Bool(b) => attribute::Value::BoolVal(b),
                    Attr::String(s) => attribute::Value::StringVal(s),
                };
                (
                    k,
                    Attribute {
                        value: Some(value),
                        unit: String::new(),
                    },
                )
            })
            .collect();
        Self {
            attributes,
            health: health as i32,
            health_description: fp.description,
            err: String::new(),
        }
    }
}

/// The capabilities we declare: no signals, no exec, no filesystem isolation
/// (nothing runs on the node), no volume mounts (ECS cannot see the node's
/// disks), and `remote_tasks` for Nomad 1.1 to 1.9 (ignored from 1.10 on).
pub fn capabilities() -> pb::DriverCapabilities {
    pb::DriverCapabilities {
        send_signals: false,
        exec: false,
        fs_isolation: pb::driver_capabilities::FsIsolation::None as i32,
        network_isolation_modes: vec![
            pb::network_isolation_spec::NetworkIsolationMode::Host as i32,
        ],
        must_create_network: false,
        mount_configs: pb::driver_capabilities::MountConfigs::NoMounts as i32,
        remote_tasks: true,
        disable_log_collection: false,
        dynamic_workload_users: false,
    }
}

#[tonic::async_trait]
impl driver_server::Driver for DriverService {
    type FingerprintStream = BoxStream<pb::FingerprintResponse>;
    type TaskStatsStream = BoxStream<pb::TaskStatsResponse>;
    type TaskEventsStream = BoxStream<pb::DriverTaskEvent>;
    type ExecTaskStreamingStream = BoxStream<pb::ExecTaskStreamingResponse>;

    /// Nomad 2.0.4+: called after every dispense; nothing to do beyond SetConfig.
    #[tracing::instrument(skip_all, fields(otel.name = "hashicorp.nomad.plugins.drivers.proto.Driver/Init", otel.kind = "server", rpc.system = "grpc", rpc.service = crate::telemetry::DRIVER_SERVICE, rpc.method = "Init"))]
    async fn init(
        &self,
        _: Request<pb::InitRequest>,
    ) -> Result<Response<pb::InitResponse>, Status> {
        Ok(Response::new(pb::InitResponse {}))
    }

    /// The hclspec of the job's `task { config { ... } }` block.
    #[tracing::instrument(skip_all, fields(otel.name = "hashicorp.nomad.plugins.drivers.proto.Driver/TaskConfigSchema", otel.kind = "server", rpc.system = "grpc", rpc.service = crate::telemetry::DRIVER_SERVICE, rpc.method = "TaskConfigSchema"))]
    async fn task_config_schema(
        &self,
        _: Request<pb::TaskConfigSchemaRequest>,
    ) -> Result<Response<pb::TaskConfigSchemaResponse>, Status> {
        Ok(Response::new(pb::TaskConfigSchemaResponse {
            spec: Some(crate::task_config::schema().to_spec()),
        }))
    }

    #[tracing::instrument(skip_all, fields(otel.name = "hashicorp.nomad.plugins.drivers.proto.Driver/Capabilities", otel.kind = "server", rpc.system = "grpc", rpc.service = crate::telemetry::DRIVER_SERVICE, rpc.method = "Capabilities"))]
    async fn capabilities(
        &self,
        _: Request<pb::CapabilitiesRequest>,
    ) -> Result<Response<pb::CapabilitiesResponse>, Status> {
        Ok(Response::new(pb::CapabilitiesResponse {
            capabilities: Some(capabilities()),
        }))
    }

    /// One long-lived stream: a snapshot at once, then periodically and on
    /// every configuration change, until the plugin exits.
    #[tracing::instrument(skip_all, fields(otel.name = "hashicorp.nomad.plugins.drivers.proto.Driver/Fingerprint", otel.kind = "server", rpc.system = "grpc", rpc.service = crate::telemetry::DRIVER_SERVICE, rpc.method = "Fingerprint"))]
    async fn fingerprint(
        &self,
        _: Request<pb::FingerprintRequest>,
    ) -> Result<Response<Self::FingerprintStream>, Status> {
        let rx = self.driver.fingerprints();
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx)
            .map(|fp| Ok(pb::FingerprintResponse::from(fp)));
        Ok(Response::new(Box::pin(stream)))
    }

    /// Rebuild a task from its handle alone (no task config after an agent
    /// restart). Idempotent.
    #[tracing::instrument(skip_all, fields(otel.name = "hashicorp.nomad.plugins.drivers.proto.Driver/RecoverTask", otel.kind = "server", rpc.system = "grpc", rpc.service = crate::telemetry::DRIVER_SERVICE, rpc.method = "RecoverTask"))]
    async fn recover_task(
        &self,
        request: Request<pb::RecoverTaskRequest>,
    ) -> Result<Response<pb::RecoverTaskResponse>, Status> {
        let req = request.into_inner();
        let handle = req
            .handle
            .ok_or_else(|| to_status("RecoverTask", &DriverError::BadRequest("handle")))?;
        let cfg = handle.config.unwrap_or_default();
        let task_id = if cfg.id.is_empty() {
            req.task_id
        } else {
            cfg.id.clone()
        };
        if task_id.is_empty() {
            return Err(to_status(
                "RecoverTask",
                &DriverError::BadRequest("handle.config.id"),
            ));
        }
        let alloc = convert::alloc_of(&cfg);
        self.driver
            .recover_task(&task_id, &alloc, &cfg.name, &handle.driver_state)
            .await
            .map_err(|e| to_status("RecoverTask", &e))?;
        Ok(Response::new(pb::RecoverTaskResponse {}))
    }

    /// Start the ECS task; the handle echoes the request's TaskConfig.
    #[tracing::instrument(skip_all, fields(otel.name = "hashicorp.nomad.plugins.drivers.proto.Driver/StartTask", otel.kind = "server", rpc.system = "grpc", rpc.service = crate::telemetry::DRIVER_SERVICE, rpc.method = "StartTask"))]
    async fn start_task(
        &self,
        request: Request<pb::StartTaskRequest>,
    ) -> Result<Response<pb::StartTaskResponse>, Status> {
        let req = request.into_inner();
        let start = crate::driver::lifecycle::StartRequest::try_from(&req)
            .map_err(|e| to_status("StartTask", &e))?;
        match self.driver.start_task(start).await {
            Ok(started) => Ok(Response::new(pb::StartTaskResponse {
                result: pb::start_task_response::Result::Success as i32,
                driver_error_msg: String::new(),
                handle: Some(pb::TaskHandle {
                    version: crate::driver::handle::HANDLE_VERSION,
                    config: req.task,
                    state: pb::TaskState::Running as i32,
                    driver_state: started.state.encode(),
                }),
                network_override: None,
            })),
            Err(e) => {
                tracing::warn!(error = %e, "StartTask failed");
                Err(to_status("StartTask", &e))
            }
        }
    }

    /// Block until the task exits; the result comes from ECS.
    #[tracing::instrument(skip_all, fields(otel.name = "hashicorp.nomad.plugins.drivers.proto.Driver/WaitTask", otel.kind = "server", rpc.system = "grpc", rpc.service = crate::telemetry::DRIVER_SERVICE, rpc.method = "WaitTask", nomad.task.id))]
    async fn wait_task(
        &self,
        request: Request<pb::WaitTaskRequest>,
    ) -> Result<Response<pb::WaitTaskResponse>, Status> {
        let req = request.into_inner();
        tracing::Span::current().record("nomad.task.id", req.task_id.as_str());
        let exit = self
            .driver
            .wait_task(&req.task_id)
            .await
            .map_err(|e| to_status("WaitTask", &e))?;
        Ok(Response::new(pb::WaitTaskResponse {
            result: Some(pb::ExitResult::from(&exit)),
            err: exit.err.clone().unwrap_or_default(),
        }))
    }

    /// Stop (or, with DETACH, let go of) the task; unknown tasks succeed.
    #[tracing::instrument(skip_all, fields(otel.name = "hashicorp.nomad.plugins.drivers.proto.Driver/StopTask", otel.kind = "server", rpc.system = "grpc", rpc.service = crate::telemetry::DRIVER_SERVICE, rpc.method = "StopTask"))]
    async fn stop_task(
        &self,
        request: Request<pb::StopTaskRequest>,
    ) -> Result<Response<pb::StopTaskResponse>, Status> {
        let req = request.into_inner();
        let timeout = req
            .timeout
            .and_then(|d| std::time::Duration::try_from(d).ok())
            .unwrap_or(std::time::Duration::from_secs(5));
        self.driver
            .stop_task(&req.task_id, timeout, &req.signal)
            .await
            .map_err(|e| to_status("StopTask", &e))?;
        Ok(Response::new(pb::StopTaskResponse {}))
    }

    /// Remove the task (stopping it first with force); unknown tasks succeed.
    #[tracing::instrument(skip_all, fields(otel.name = "hashicorp.nomad.plugins.drivers.proto.Driver/DestroyTask", otel.kind = "server", rpc.system = "grpc", rpc.service = crate::telemetry::DRIVER_SERVICE, rpc.method = "DestroyTask"))]
    async fn destroy_task(
        &self,
        request: Request<pb::DestroyTaskRequest>,
    ) -> Result<Response<pb::DestroyTaskResponse>, Status> {
        let req = request.into_inner();
        self.driver
            .destroy_task(&req.task_id, req.force)
            .await
            .map_err(|e| to_status("DestroyTask", &e))?;
        Ok(Response::new(pb::DestroyTaskResponse {}))
    }

    /// Full status; never leaves a required field unset.
    #[tracing::instrument(skip_all, fields(otel.name = "hashicorp.nomad.plugins.drivers.proto.Driver/InspectTask", otel.kind = "server", rpc.system = "grpc", rpc.service = crate::telemetry::DRIVER_SERVICE, rpc.method = "InspectTask"))]
    async fn inspect_task(
        &self,
        request: Request<pb::InspectTaskRequest>,
    ) -> Result<Response<pb::InspectTaskResponse>, Status> {
        let req = request.into_inner();
        let rec = self
            .driver
            .inspect_task(&req.task_id)
            .await
            .map_err(|e| to_status("InspectTask", &e))?;
        Ok(Response::new(convert::inspect_response(&rec)))
    }

    /// A stream of samples at the requested interval, each with a timestamp
    /// and aggregate usage (zero: ECS usage is not collected yet); it ends
    /// when the task exits.
    #[tracing::instrument(skip_all, fields(otel.name = "hashicorp.nomad.plugins.drivers.proto.Driver/TaskStats", otel.kind = "server", rpc.system = "grpc", rpc.service = crate::telemetry::DRIVER_SERVICE, rpc.method = "TaskStats"))]
    async fn task_stats(
        &self,
        request: Request<pb::TaskStatsRequest>,
    ) -> Result<Response<Self::TaskStatsStream>, Status> {
        let req = request.into_inner();
        self.driver
            .inspect_task(&req.task_id)
            .await
            .map_err(|e| to_status("TaskStats", &e))?;
        let interval = req
            .collection_interval
            .and_then(|d| std::time::Duration::try_from(d).ok())
            .filter(|d| !d.is_zero())
            .unwrap_or(std::time::Duration::from_secs(1))
            .max(std::time::Duration::from_millis(100));
        let driver = self.driver.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::spawn(async move {
            let stop = driver.shutdown_token();
            loop {
                let done = driver
                    .inspect_task(&req.task_id)
                    .await
                    .map_or(true, |r| r.exit.is_some());
                if done
                    || tx
                        .send(Ok(convert::zero_stats(
                            &req.task_id,
                            crate::reconcile::now_ms(),
                        )))
                        .await
                        .is_err()
                {
                    return;
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tx.closed() => return,
                    () = tokio::time::sleep(interval) => {}
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    /// One long-lived stream for every task's events.
    #[tracing::instrument(skip_all, fields(otel.name = "hashicorp.nomad.plugins.drivers.proto.Driver/TaskEvents", otel.kind = "server", rpc.system = "grpc", rpc.service = crate::telemetry::DRIVER_SERVICE, rpc.method = "TaskEvents"))]
    async fn task_events(
        &self,
        _: Request<pb::TaskEventsRequest>,
    ) -> Result<Response<Self::TaskEventsStream>, Status> {
        let driver = self.driver.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let stop = driver.shutdown_token();
            // Until the plugin is configured there is nothing to report.
            let mut events = loop {
                if let Some(ev) = driver.events().await {
                    break ev;
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tx.closed() => return,
                    () = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                }
            };
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tx.closed() => return,
                    ev = events.recv() => match ev {
                        Ok(ev) => if tx.send(Ok(pb::DriverTaskEvent::from(ev))).await.is_err() { return },
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => tracing::warn!(dropped = n, "task events dropped: the host reads too slowly"),
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    },
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    #[tracing::instrument(skip_all, fields(otel.name = "hashicorp.nomad.plugins.drivers.proto.Driver/Shutdown", otel.kind = "server", rpc.system = "grpc", rpc.service = crate::telemetry::DRIVER_SERVICE, rpc.method = "Shutdown"))]
    async fn shutdown(
        &self,
        _: Request<pb::ShutdownRequest>,
    ) -> Result<Response<pb::ShutdownResponse>, Status> {
        Ok(Response::new(pb::ShutdownResponse {}))
    }

    /// ECS tasks cannot be signalled through Nomad.
    #[tracing::instrument(skip_all, fields(otel.name = "hashicorp.nomad.plugins.drivers.proto.Driver/SignalTask", otel.kind = "server", rpc.system = "grpc", rpc.service = crate::telemetry::DRIVER_SERVICE, rpc.method = "SignalTask"))]
    async fn signal_task(
        &self,
        request: Request<pb::SignalTaskRequest>,
    ) -> Result<Response<pb::SignalTaskResponse>, Status> {
        let req = request.into_inner();
        Err(to_status(
            "SignalTask",
            &DriverError::Unsupported(format!(
                "the ecs driver cannot send {} to ECS task {}: ECS has no signal API; restart or stop the allocation instead",
                if req.signal.is_empty() {
                    "a signal"
                } else {
                    req.signal.as_str()
                },
                req.task_id
            )),
        ))
    }

    /// Commands cannot run inside ECS tasks through Nomad (no ECS Exec yet).
    #[tracing::instrument(skip_all, fields(otel.name = "hashicorp.nomad.plugins.drivers.proto.Driver/ExecTask", otel.kind = "server", rpc.system = "grpc", rpc.service = crate::telemetry::DRIVER_SERVICE, rpc.method = "ExecTask"))]
    async fn exec_task(
        &self,
        request: Request<pb::ExecTaskRequest>,
    ) -> Result<Response<pb::ExecTaskResponse>, Status> {
        let req = request.into_inner();
        Err(to_status(
            "ExecTask",
            &DriverError::Unsupported(format!(
                "the ecs driver cannot exec in ECS task {}: script checks and change_script need a local driver",
                req.task_id
            )),
        ))
    }

    #[tracing::instrument(skip_all, fields(otel.name = "hashicorp.nomad.plugins.drivers.proto.Driver/ExecTaskStreaming", otel.kind = "server", rpc.system = "grpc", rpc.service = crate::telemetry::DRIVER_SERVICE, rpc.method = "ExecTaskStreaming"))]
    async fn exec_task_streaming(
        &self,
        _: Request<Streaming<pb::ExecTaskStreamingRequest>>,
    ) -> Result<Response<Self::ExecTaskStreamingStream>, Status> {
        Err(to_status(
            "ExecTaskStreaming",
            &DriverError::Unsupported("the ecs driver does not support `nomad alloc exec`".into()),
        ))
    }

    #[tracing::instrument(skip_all, fields(otel.name = "hashicorp.nomad.plugins.drivers.proto.Driver/CreateNetwork", otel.kind = "server", rpc.system = "grpc", rpc.service = crate::telemetry::DRIVER_SERVICE, rpc.method = "CreateNetwork"))]
    async fn create_network(
        &self,
        _: Request<pb::CreateNetworkRequest>,
    ) -> Result<Response<pb::CreateNetworkResponse>, Status> {
        not_implemented("CreateNetwork")
    }

    #[tracing::instrument(skip_all, fields(otel.name = "hashicorp.nomad.plugins.drivers.proto.Driver/DestroyNetwork", otel.kind = "server", rpc.system = "grpc", rpc.service = crate::telemetry::DRIVER_SERVICE, rpc.method = "DestroyNetwork"))]
    async fn destroy_network(
        &self,
        _: Request<pb::DestroyNetworkRequest>,
    ) -> Result<Response<pb::DestroyNetworkResponse>, Status> {
        not_implemented("DestroyNetwork")
    }
}
