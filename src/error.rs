//! Errors at the driver boundary: what a plugin RPC can fail with. Mapped to
//! gRPC status in exactly one place (`rpc::status`).

use std::path::PathBuf;

use thiserror::Error;

use crate::config::ConfigError;
use crate::cty::DecodeError;
use crate::schema::SchemaError;
use crate::store::StoreError;

/// A failed driver operation.
#[derive(Debug, Error)]
pub enum DriverError {
    /// The config bytes are not cty-msgpack.
    #[error("the plugin config is not valid cty-msgpack: {0}")]
    ConfigBytes(#[source] DecodeError),
    /// The config does not match the schema.
    #[error("plugin config: {0}")]
    ConfigShape(#[source] SchemaError),
    /// The config is unusable.
    #[error("plugin config: {0}")]
    Config(#[source] ConfigError),
    /// Nomad negotiated an API version we do not speak.
    #[error("unsupported plugin API version {0:?}; this plugin speaks v0.1.0")]
    ApiVersion(String),
    /// The state directory could not be opened.
    #[error(transparent)]
    StateDir(StoreError),
    /// A later SetConfig tried to move the open state directory.
    #[error(
        "state_dir cannot change while the plugin runs (open: {open}, requested: {requested}); restart the Nomad agent"
    )]
    StateDirChanged {
        /// The directory in use.
        open: PathBuf,
        /// The directory asked for.
        requested: PathBuf,
    },
    /// The RPC exists but this version does not implement it.
    #[error("{0} is not implemented by nomad-driver-ecs yet")]
    NotImplemented(&'static str),
    /// A feature ECS tasks cannot offer.
    #[error("{0}")]
    Unsupported(String),
    /// The task config bytes are not cty-msgpack.
    #[error("the task config is not valid cty-msgpack: {0}")]
    TaskConfigBytes(#[source] DecodeError),
    /// The task config does not match the schema.
    #[error("task config: {0}")]
    TaskConfigShape(#[source] SchemaError),
    /// The task config is not runnable.
    #[error(transparent)]
    TaskConfig(#[from] crate::task_config::TaskConfigError),
    /// The request lacks something Nomad always sends.
    #[error("the request lacks {0}")]
    BadRequest(&'static str),
    /// The driver is disabled or not configured yet.
    #[error("the ecs driver is {0}")]
    NotReady(&'static str),
    /// RunTask did not produce a task.
    #[error("{message}")]
    StartFailed {
        /// Why.
        message: String,
        /// Whether Nomad's restart policy should apply.
        recoverable: bool,
    },
    /// StopTask could not be delivered before the timeout.
    #[error("could not stop ECS task {arn}: {message}")]
    StopFailed {
        /// The task.
        arn: String,
        /// Why.
        message: String,
    },
    /// No such task.
    #[error("task {0} not found")]
    TaskNotFound(String),
    /// DestroyTask without force on a running task.
    #[error("task {0} is still running; stop it first or destroy with force")]
    StillRunning(String),
    /// A task handle we cannot use.
    #[error("RecoverTask: {0}")]
    BadHandle(#[from] crate::driver::handle::HandleError),
    /// The store failed.
    #[error("task store: {0}")]
    Store(#[source] StoreError),
}
