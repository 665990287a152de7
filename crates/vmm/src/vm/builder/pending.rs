//! The vCPU threads between their start and the machine's: a build that
//! fails halfway aborts their gates and joins them.

use std::sync::mpsc;
use std::sync::Arc;

use super::Error;
use crate::vcpu::{self, CpuPlan, Gate, StartGate, VcpuHandle};

/// vCPU threads started but not yet running: on any later failure, the
/// gate is aborted and the threads joined.
pub(super) struct PendingVcpus {
    pub(super) gate: Arc<StartGate>,
    pub(super) plan: Option<Arc<Gate<CpuPlan>>>,
    pub(super) threads: Vec<VcpuHandle>,
    /// Each thread's "created and prepared" report.
    pub(super) created: mpsc::Receiver<(u8, Result<(), vcpu::Error>)>,
    /// Every report came, and said so.
    pub(super) all_created: bool,
}

impl PendingVcpus {
    /// Waits until every vCPU is created and prepared (at once after the
    /// first time).
    pub(super) fn wait_created(&mut self) -> Result<(), Error> {
        if self.all_created {
            return Ok(());
        }
        for _ in 0..self.threads.len() {
            match self.created.recv() {
                Ok((_, Ok(()))) => {}
                Ok((id, Err(source))) => return Err(Error::Vcpu { id, source }),
                Err(_) => return Err(Error::Thread(std::io::Error::other("a vCPU thread died"))),
            }
        }
        self.all_created = true;
        crate::trace::mark("vcpus created");
        Ok(())
    }

    /// The threads, for a machine that starts: the gate opens when the
    /// last vCPU arrives, which may be after this (each reports "created"
    /// before it arrives), so it must not be aborted now.
    pub(super) fn release(mut self) -> Vec<VcpuHandle> {
        std::mem::take(&mut self.threads)
    }
}

impl Drop for PendingVcpus {
    fn drop(&mut self) {
        if self.threads.is_empty() {
            // Released (or none): nothing to stop.
            return;
        }
        if let Some(plan) = &self.plan {
            plan.abort();
        }
        self.gate.abort();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
