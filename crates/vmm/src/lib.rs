//! Tsubame's VMM: a virtual machine's life on Linux KVM, in the order it is
//! lived.
//!
//! 1. [`kvm`]: open `/dev/kvm`, check it, learn what host we are on.
//! 2. [`vm`]: create the VM, its memory and interrupt controllers; the
//!    [`vm::builder`] runs every step of the machine's birth in order.
//! 3. [`vcpu`]: one thread per vCPU, waiting for the machine, then running
//!    KVM_RUN and dispatching exits ([`vcpu::exit`]).
//! 4. [`devices`] answer those exits; [`boot`] loads the kernel and
//!    describes the machine to it.
//! 5. [`machine`] runs the machine until [`lifecycle`] says why it ended;
//!    [`persist`] puts a paused machine to sleep in files and
//!    [`vm::restore`] wakes it in a new process.

pub mod boot;
pub mod config;
pub mod confine;
pub mod console;
pub mod control;
pub mod devices;
pub mod faults;
pub mod irqchip;
pub mod kvm;
pub mod lifecycle;
pub mod logger;
pub mod machine;
pub mod persist;
pub mod signals;
pub mod trace;
pub mod vcpu;
pub mod vm;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use config::VmConfig;
pub use lifecycle::StopReason;
pub use machine::{Machine, RunOutcome};

static START: OnceLock<Instant> = OnceLock::new();

/// Marks process start; the binary calls it first thing in `main`.
pub fn mark_start() {
    START.get_or_init(Instant::now);
}

/// Time since [`mark_start`] (or since the first call, if never marked).
pub fn since_start() -> Duration {
    START.get_or_init(Instant::now).elapsed()
}
