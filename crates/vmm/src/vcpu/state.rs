//! The per-vCPU state machine, driven by requests on the vCPU's channel:
//! created (waiting at the start gate) → running ⇄ paused → exiting.
//! A plain function of (state, request), tested without KVM.

/// What the controller asks of a vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuRequest {
    /// Leave KVM_RUN (completing any pending I/O first) and park.
    Pause,
    /// Run again.
    Resume,
    /// Leave the loop for good; the thread ends.
    Exit,
    /// Send a copy of the exit statistics (for metrics); no state change.
    ReportStats,
    /// Send the vCPU's state for a snapshot (only while paused); no state
    /// change.
    Save,
}

/// What a vCPU answers once a request has taken effect.
#[derive(Clone, Debug)]
pub enum VcpuResponse {
    Paused,
    Resumed,
    Stats(Box<super::stats::ExitStats>),
    Saved(Box<Result<crate::persist::vcpu::VcpuState, String>>),
    /// A restored vCPU took its state (and is paused), or could not.
    Restored(Result<(), String>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuState {
    Running,
    Paused,
    Exiting,
}

impl VcpuState {
    /// The state `request` leads to. Pausing a paused vCPU and resuming a
    /// running one are accepted and change nothing (as Firecracker does);
    /// nothing leaves `Exiting`.
    pub fn next(self, request: VcpuRequest) -> VcpuState {
        match (self, request) {
            (VcpuState::Exiting, _) | (_, VcpuRequest::Exit) => VcpuState::Exiting,
            (state, VcpuRequest::ReportStats | VcpuRequest::Save) => state,
            (_, VcpuRequest::Pause) => VcpuState::Paused,
            (_, VcpuRequest::Resume) => VcpuState::Running,
        }
    }

    /// The answer the controller waits for after `request`, if any
    /// (statistics are answered by the loop, which owns them).
    pub fn response(request: VcpuRequest) -> Option<VcpuResponse> {
        match request {
            VcpuRequest::Pause => Some(VcpuResponse::Paused),
            VcpuRequest::Resume => Some(VcpuResponse::Resumed),
            VcpuRequest::Exit | VcpuRequest::ReportStats | VcpuRequest::Save => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::VcpuRequest::*;
    use super::VcpuState::*;
    use super::*;

    #[test]
    fn every_state_and_request() {
        let table = [
            (Running, Pause, Paused),
            (Running, Resume, Running),
            (Running, Exit, Exiting),
            (Paused, Pause, Paused),
            (Paused, Resume, Running),
            (Paused, Exit, Exiting),
            (Exiting, Pause, Exiting),
            (Exiting, Resume, Exiting),
            (Exiting, Exit, Exiting),
            (Running, ReportStats, Running),
            (Paused, ReportStats, Paused),
            (Exiting, ReportStats, Exiting),
            (Running, Save, Running),
            (Paused, Save, Paused),
            (Exiting, Save, Exiting),
        ];
        for (from, req, to) in table {
            assert_eq!(from.next(req), to, "{from:?} + {req:?}");
        }
    }

    #[test]
    fn pause_and_resume_are_answered_exit_is_not() {
        assert!(matches!(
            VcpuState::response(Pause),
            Some(VcpuResponse::Paused)
        ));
        assert!(matches!(
            VcpuState::response(Resume),
            Some(VcpuResponse::Resumed)
        ));
        assert!(VcpuState::response(Exit).is_none());
        assert!(VcpuState::response(ReportStats).is_none());
        assert!(VcpuState::response(Save).is_none());
    }
}
