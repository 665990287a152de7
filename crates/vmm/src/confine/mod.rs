//! Confinement: what a thread of Tsubame may still do once a guest or a
//! client can reach it. Each thread kind installs its own system-call
//! filter (`seccomp`) before it handles guest- or client-controlled input.

pub mod seccomp;
mod syscalls;

pub use seccomp::{install, set_mode, SeccompMode, ThreadKind};
