//! The local stack used by tests and the dev tool: an emulated Nomad client
//! host that drives the real plugin binary over the real protocol, and the
//! ECS emulator launcher.
pub mod ecs_proxy;
pub mod emulator;
pub mod host;
pub mod jobfile;
pub mod nomad_api;
