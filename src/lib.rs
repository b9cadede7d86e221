//! nomad-driver-ecs: a Nomad task driver that runs tasks as AWS ECS tasks.
//!
//! The binary speaks go-plugin's gRPC protocol to the Nomad client (`plugin`),
//! translates wire types (`rpc`), implements Nomad's lifecycle verbs (`driver`)
//! and talks to ECS (`ecs`). `devstack` holds the local development and test
//! stack: an emulated Nomad client host and the ECS emulator launcher.
pub mod config;
pub mod cty;
pub mod devstack;
pub mod driver;
pub mod ecs;
pub mod error;
pub mod logging;
pub mod nomad;
pub mod plugin;
pub mod proto;
pub mod reconcile;
pub mod rpc;
pub mod schema;
pub mod store;
pub mod task_config;
pub mod telemetry;
