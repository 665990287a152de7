//! The control plane: how the world drives a machine. Firecracker's REST
//! API on a Unix socket, so its clients (firecracker-go-sdk, firectl,
//! Kata Containers, firecracker-containerd, flintlock) drive Tsubame
//! unchanged; `--config-file` takes the same JSON.
//!
//! - [`http`]: the API thread (HTTP/1.1, bounded, never blocks the VMM).
//! - [`request`]: (method, path, body) → [`request::ApiRequest`]; new
//!   endpoints go there.
//! - [`resources`]: the JSON shapes and the pre-boot configuration.
//! - [`snapshot`]: the snapshot create and load bodies.
//! - [`controller`]: the VMM thread's side, before and after boot.
//! - [`metrics`]: JSON-lines metrics.

pub mod controller;
pub mod http;
pub mod metrics;
pub mod request;
pub mod resources;
pub mod snapshot;

pub use controller::{Controller, Finish};
