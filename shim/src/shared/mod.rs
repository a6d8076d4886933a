//! What both processes use: the launch plan the daemon hands an instance,
//! the pipes between them, the node cache, the container's cgroup, and the
//! allocator's tuning. Nothing here reaches into `daemon` or `instance`.

pub mod allocator;
pub mod cgroup;
pub mod compile_protocol;
pub mod engine_config;
pub mod launch_plan;
pub mod mount_api;
pub mod node_cache;
pub mod sandbox;
pub mod seccomp_profile;
pub mod status_pipe;
