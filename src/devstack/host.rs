//! Emulated Nomad client host: launches the plugin binary as Nomad does.
