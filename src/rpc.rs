//! Wire <-> domain translation: the `BasePlugin` and `Driver` gRPC services.
//! Each handler decodes the request, calls the driver, and maps the result;
//! errors become status in `status` only.

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
    #[tracing::instrument(skip_all, fields(rpc.method = "PluginInfo"))]
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
    #[tracing::instrument(skip_all, fields(rpc.method = "ConfigSchema"))]
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
    #[tracing::instrument(skip_all, fields(rpc.method = "SetConfig"))]
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
    async fn init(
        &self,
        _: Request<pb::InitRequest>,
    ) -> Result<Response<pb::InitResponse>, Status> {
        Ok(Response::new(pb::InitResponse {}))
    }

    /// The hclspec of the job's `task { config { ... } }` block.
    #[tracing::instrument(skip_all, fields(rpc.method = "TaskConfigSchema"))]
    async fn task_config_schema(
        &self,
        _: Request<pb::TaskConfigSchemaRequest>,
    ) -> Result<Response<pb::TaskConfigSchemaResponse>, Status> {
        Ok(Response::new(pb::TaskConfigSchemaResponse {
            spec: Some(crate::task_config::schema().to_spec()),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc.method = "Capabilities"))]
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
    #[tracing::instrument(skip_all, fields(rpc.method = "Fingerprint"))]
    async fn fingerprint(
        &self,
        _: Request<pb::FingerprintRequest>,
    ) -> Result<Response<Self::FingerprintStream>, Status> {
        let rx = self.driver.fingerprints();
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx)
            .map(|fp| Ok(pb::FingerprintResponse::from(fp)));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn recover_task(
        &self,
        _: Request<pb::RecoverTaskRequest>,
    ) -> Result<Response<pb::RecoverTaskResponse>, Status> {
        not_implemented("RecoverTask")
    }

    async fn start_task(
        &self,
        _: Request<pb::StartTaskRequest>,
    ) -> Result<Response<pb::StartTaskResponse>, Status> {
        not_implemented("StartTask")
    }

    async fn wait_task(
        &self,
        _: Request<pb::WaitTaskRequest>,
    ) -> Result<Response<pb::WaitTaskResponse>, Status> {
        not_implemented("WaitTask")
    }

    async fn stop_task(
        &self,
        _: Request<pb::StopTaskRequest>,
    ) -> Result<Response<pb::StopTaskResponse>, Status> {
        not_implemented("StopTask")
    }

    async fn destroy_task(
        &self,
        _: Request<pb::DestroyTaskRequest>,
    ) -> Result<Response<pb::DestroyTaskResponse>, Status> {
        not_implemented("DestroyTask")
    }

    async fn inspect_task(
        &self,
        _: Request<pb::InspectTaskRequest>,
    ) -> Result<Response<pb::InspectTaskResponse>, Status> {
        not_implemented("InspectTask")
    }

    async fn task_stats(
        &self,
        _: Request<pb::TaskStatsRequest>,
    ) -> Result<Response<Self::TaskStatsStream>, Status> {
        not_implemented("TaskStats")
    }

    /// One long-lived stream for every task's events.
    async fn task_events(
        &self,
        _: Request<pb::TaskEventsRequest>,
    ) -> Result<Response<Self::TaskEventsStream>, Status> {
        let stop = self.driver.shutdown_token();
        let stream = futures::stream::once(async move { stop.cancelled_owned().await })
            .filter_map(|()| async { None::<Result<pb::DriverTaskEvent, Status>> });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn shutdown(
        &self,
        _: Request<pb::ShutdownRequest>,
    ) -> Result<Response<pb::ShutdownResponse>, Status> {
        Ok(Response::new(pb::ShutdownResponse {}))
    }

    async fn signal_task(
        &self,
        _: Request<pb::SignalTaskRequest>,
    ) -> Result<Response<pb::SignalTaskResponse>, Status> {
        not_implemented("SignalTask")
    }

    async fn exec_task(
        &self,
        _: Request<pb::ExecTaskRequest>,
    ) -> Result<Response<pb::ExecTaskResponse>, Status> {
        not_implemented("ExecTask")
    }

    async fn exec_task_streaming(
        &self,
        _: Request<Streaming<pb::ExecTaskStreamingRequest>>,
    ) -> Result<Response<Self::ExecTaskStreamingStream>, Status> {
        not_implemented("ExecTaskStreaming")
    }

    async fn create_network(
        &self,
        _: Request<pb::CreateNetworkRequest>,
    ) -> Result<Response<pb::CreateNetworkResponse>, Status> {
        not_implemented("CreateNetwork")
    }

    async fn destroy_network(
        &self,
        _: Request<pb::DestroyNetworkRequest>,
    ) -> Result<Response<pb::DestroyNetworkResponse>, Status> {
        not_implemented("DestroyNetwork")
    }
}
