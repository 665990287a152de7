//! The VMM thread's side of the API: before `InstanceStart` it keeps the
//! pre-boot [`VmResources`]; once the machine runs, it serves run-time
//! requests from inside the machine's main loop ([`Control`]). Phase
//! rules and their wording follow Firecracker's.

use std::os::fd::{AsRawFd, RawFd};

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};

use super::http::{ApiLink, ApiServer};
use super::metrics::{self, ApiCounters, MetricsWriter};
use super::request::{ActionType, ApiRequest, ApiResponse, VmState};
use super::resources::{MachineConfig, VmResources};
use crate::config::VmConfig;
use crate::lifecycle::StopReason;
use crate::machine::{Control, Machine, RunOutcome};
use crate::vm::restore::LoadRequest;

pub const NOT_AFTER_BOOT: &str =
    "The requested operation is not supported after starting the microVM.";
pub const NOT_BEFORE_BOOT: &str =
    "The requested operation is not supported before starting the microVM.";

pub const LOAD_AFTER_CONFIG: &str =
    "Loading a microVM snapshot not allowed after configuring boot-specific resources.";

/// Restores a machine, resumed or left paused.
fn restore_machine(base: &VmConfig, req: &LoadRequest, resume: bool) -> Result<Machine, String> {
    let m = crate::vm::restore::restore(base, req).map_err(|e| e.to_string())?;
    if resume {
        if let Err(e) = m.resume() {
            m.lifecycle()
                .request_stop(crate::StopReason::VmmError(e.clone()));
            m.discard();
            return Err(e);
        }
    }
    Ok(m)
}

/// How the controller's life ended.
#[derive(Debug)]
pub enum Finish {
    /// The machine ran and stopped.
    Ran(Box<RunOutcome>),
    /// A host signal arrived before the machine started.
    Signal(i32),
    /// The machine could not be built (with `start`, or without an API).
    StartFailed(String),
}

pub struct Controller {
    id: String,
    /// Settings that are not Firecracker's (serial, KVM device, profile).
    base: VmConfig,
    resources: VmResources,
    link: Option<ApiLink>,
    /// Kept so the socket stays up while the machine runs.
    _server: Option<ApiServer>,
    metrics: Option<MetricsWriter>,
    api: ApiCounters,
}

impl Controller {
    pub fn new(
        id: String,
        base: VmConfig,
        resources: VmResources,
        api: Option<(ApiServer, ApiLink)>,
    ) -> Controller {
        let (server, link) = match api {
            Some((s, l)) => (Some(s), Some(l)),
            None => (None, None),
        };
        Controller {
            id,
            base,
            resources,
            link,
            _server: server,
            metrics: None,
            api: ApiCounters::default(),
        }
    }

    /// Opens the metrics file now (`--metrics-path`, or the config file).
    pub fn set_metrics_path(&mut self, path: &str) -> Result<(), String> {
        let w = MetricsWriter::open(std::path::Path::new(path))
            .map_err(|e| format!("Cannot open the metrics file {path}: {e}."))?;
        self.metrics = Some(w);
        self.resources.metrics = Some(super::resources::Metrics {
            metrics_path: path.into(),
        });
        Ok(())
    }

    /// Serves the API until `InstanceStart` (or starts at once with
    /// `start`), then runs the machine until it stops.
    pub fn run(mut self, start: Option<VmConfig>) -> Finish {
        let machine = match start {
            Some(cfg) => {
                if self.resources == VmResources::default() {
                    self.resources = VmResources::from_vm_config(&cfg);
                }
                match crate::vm::builder::build(&cfg) {
                    Ok(m) => m,
                    Err(e) => return Finish::StartFailed(e.to_string()),
                }
            }
            None if self.link.is_none() => {
                return Finish::StartFailed("nothing to start: no API and no configuration".into())
            }
            None => match self.pre_boot() {
                Ok(m) => m,
                Err(PreBootEnd::Signal(n)) => return Finish::Signal(n),
                Err(PreBootEnd::Failed(e)) => return Finish::StartFailed(e),
            },
        };
        self.run_machine(machine)
    }

    /// Restores the snapshot `req` names (resumed with `resume`), then
    /// serves the API while it runs (`tsubame restore`).
    pub fn restore_and_run(mut self, req: &LoadRequest, resume: bool) -> Finish {
        match restore_machine(&self.base, req, resume) {
            Ok(m) => {
                self.resources = VmResources::from_vm_config(&m.shape().to_config(&self.base));
                self.run_machine(m)
            }
            Err(e) => Finish::StartFailed(e),
        }
    }

    fn run_machine(mut self, machine: Machine) -> Finish {
        let outcome = machine.run(Some(&mut self));
        if self.metrics.is_some() {
            let _ = self.flush_metrics(None, "Stopped");
        }
        Finish::Ran(Box::new(outcome))
    }

    fn pre_boot(&mut self) -> Result<Machine, PreBootEnd> {
        let failed = |e: String| PreBootEnd::Failed(format!("API loop: {e}"));
        let signal = crate::signals::install().map_err(|e| failed(e.to_string()))?;
        let mut manager = EventManager::new().map_err(|e| failed(e.to_string()))?;
        let id = manager.add_subscriber(PreBoot {
            controller: self,
            signal,
            timer_watched: false,
            started: None,
            error: None,
        });
        loop {
            if let Some(sig) = crate::signals::take() {
                return Err(PreBootEnd::Signal(sig));
            }
            let sub = manager
                .subscriber_mut(id)
                .map_err(|e| failed(e.to_string()))?;
            if let Some(e) = sub.error.take() {
                return Err(failed(e));
            }
            if let Some(m) = sub.started.take() {
                return Ok(m);
            }
            manager.run().map_err(|e| failed(e.to_string()))?;
        }
    }

    fn respond(&mut self, resp: ApiResponse) {
        self.api.requests += 1;
        if resp.status >= 400 {
            self.api.failures += 1;
        }
        if let Some(l) = &self.link {
            l.respond(resp);
        }
    }

    /// Answers that do not depend on the phase; `None` for the rest.
    fn any_phase(&mut self, req: &ApiRequest, machine: Option<&Machine>) -> Option<ApiResponse> {
        let r = match req {
            ApiRequest::Describe => ApiResponse::ok(&serde_json::json!({
                "id": self.id,
                "state": state_name(machine),
                "vmm_version": env!("CARGO_PKG_VERSION"),
                "app_name": "Tsubame",
            })),
            ApiRequest::Version => ApiResponse::ok(&serde_json::json!({
                "firecracker_version": env!("CARGO_PKG_VERSION"),
            })),
            ApiRequest::GetMachineConfig => ApiResponse::ok(&self.resources.machine),
            ApiRequest::GetVmConfig => ApiResponse::ok(&self.resources.full_config()),
            ApiRequest::Action(ActionType::FlushMetrics) => {
                if self.metrics.is_none() {
                    return Some(ApiResponse::bad_request(
                        "Metrics are not configured (PUT /metrics first).",
                    ));
                }
                match self.flush_metrics(machine, state_name(machine)) {
                    Ok(()) => ApiResponse::no_content(),
                    Err(e) => ApiResponse::bad_request(e),
                }
            }
            _ => return None,
        };
        Some(r)
    }

    fn flush_metrics(&mut self, machine: Option<&Machine>, state: &str) -> Result<(), String> {
        let (vcpus, devices) = match machine {
            Some(m) => (m.exit_stats()?, m.device_counters()),
            None => (Vec::new(), Vec::new()),
        };
        let line = metrics::line(crate::since_start(), self.api, state, &vcpus, &devices);
        match &mut self.metrics {
            Some(w) => w
                .write(&line)
                .map_err(|e| format!("Cannot write metrics: {e}.")),
            None => Ok(()),
        }
    }

    /// One request before boot; `InstanceStart` returns the machine.
    fn pre_boot_request(&mut self, req: ApiRequest) -> (ApiResponse, Option<Machine>) {
        if let Some(r) = self.any_phase(&req, None) {
            return (r, None);
        }
        let done = |r: Result<(), String>| match r {
            Ok(()) => ApiResponse::no_content(),
            Err(e) => ApiResponse::bad_request(e),
        };
        let r = match req {
            ApiRequest::PutMachineConfig(m) => done(self.resources.set_machine_config(m)),
            ApiRequest::PatchMachineConfig(u) => {
                let m: MachineConfig = self.resources.machine.apply(u);
                done(self.resources.set_machine_config(m))
            }
            ApiRequest::PutBootSource(b) => done(self.resources.set_boot_source(b)),
            ApiRequest::PutDrive(d) => done(self.resources.set_drive(d)),
            ApiRequest::PutNet(n) => done(self.resources.set_net(n)),
            ApiRequest::PutVsock(v) => done(self.resources.set_vsock(v)),
            ApiRequest::PutEntropy(e) => done(self.resources.set_entropy(e)),
            ApiRequest::PutLogger(l) => done(self.set_logger(l)),
            ApiRequest::PutMetrics(m) => done(self.set_metrics_path(&m.metrics_path)),
            ApiRequest::Action(ActionType::InstanceStart) => {
                let built = self
                    .resources
                    .to_vm_config(&self.base)
                    .and_then(|cfg| crate::vm::builder::build(&cfg).map_err(|e| e.to_string()));
                return match built {
                    Ok(m) => {
                        log::info!("InstanceStart: the machine runs");
                        (ApiResponse::no_content(), Some(m))
                    }
                    Err(e) => (
                        ApiResponse::bad_request(format!("Start microvm error: {e}")),
                        None,
                    ),
                };
            }
            ApiRequest::SnapshotLoad(p) => {
                if self.resources != VmResources::default() {
                    return (ApiResponse::bad_request(LOAD_AFTER_CONFIG), None);
                }
                let restored = p
                    .to_request()
                    .and_then(|req| restore_machine(&self.base, &req, p.resume_vm));
                return match restored {
                    Ok(m) => {
                        self.resources =
                            VmResources::from_vm_config(&m.shape().to_config(&self.base));
                        (ApiResponse::no_content(), Some(m))
                    }
                    Err(e) => (
                        ApiResponse::bad_request(format!("Load snapshot error: {e}")),
                        None,
                    ),
                };
            }
            ApiRequest::Action(ActionType::SendCtrlAltDel)
            | ApiRequest::SnapshotCreate(_)
            | ApiRequest::PatchVm(_)
            | ApiRequest::PatchDrive(_)
            | ApiRequest::PatchNet(_) => ApiResponse::bad_request(NOT_BEFORE_BOOT),
            other => ApiResponse::bad_request(format!("Unhandled request {other:?}.")),
        };
        (r, None)
    }

    pub fn set_logger(&mut self, l: super::resources::Logger) -> Result<(), String> {
        let level = match l.level.as_deref() {
            None => None,
            Some(s) => Some(
                crate::logger::parse_level(s).ok_or_else(|| format!("Invalid log level: {s}."))?,
            ),
        };
        if let Some(p) = &l.log_path {
            crate::logger::set_path(std::path::Path::new(p))
                .map_err(|e| format!("Cannot open the log file {p}: {e}."))?;
        }
        if let Some(level) = level {
            log::set_max_level(level);
        }
        self.resources.logger = Some(l);
        Ok(())
    }

    /// One request while the machine runs.
    fn runtime_request(&mut self, req: ApiRequest, machine: &Machine) -> ApiResponse {
        if let Some(r) = self.any_phase(&req, Some(machine)) {
            return r;
        }
        match req {
            ApiRequest::PatchVm(VmState::Paused) => match machine.pause() {
                Ok(()) => ApiResponse::no_content(),
                Err(e) => ApiResponse::bad_request(format!("Cannot pause the microVM: {e}.")),
            },
            ApiRequest::PatchVm(VmState::Resumed) => match machine.resume() {
                Ok(()) => ApiResponse::no_content(),
                Err(e) => ApiResponse::bad_request(format!("Cannot resume the microVM: {e}.")),
            },
            ApiRequest::Action(ActionType::SendCtrlAltDel) => {
                machine.send_ctrl_alt_del();
                ApiResponse::no_content()
            }
            ApiRequest::SnapshotCreate(p) => match p.to_request().and_then(|r| machine.snapshot(&r)) {
                Ok(_) => ApiResponse::no_content(),
                Err(e) => ApiResponse::bad_request(format!("Create snapshot error: {e}")),
            },
            ApiRequest::SnapshotLoad(_) => ApiResponse::bad_request(LOAD_AFTER_CONFIG),
            ApiRequest::PatchDrive(id) => ApiResponse::bad_request(format!(
                "Updating drive {id} of a running microVM is not supported by Tsubame yet."
            )),
            ApiRequest::PatchNet(id) => ApiResponse::bad_request(format!(
                "Updating network interface {id} of a running microVM is not supported by Tsubame yet."
            )),
            _ => ApiResponse::bad_request(NOT_AFTER_BOOT),
        }
    }
}

/// The instance state as `GET /` reports it.
fn state_name(machine: Option<&Machine>) -> &'static str {
    match machine {
        None => "Not started",
        Some(m) if m.is_paused() => "Paused",
        Some(_) => "Running",
    }
}

/// What the data of a pre-boot event says it is.
const SIGNAL: u32 = 0;
const API: u32 = 1;
const METRICS: u32 = 2;

/// The pre-boot loop's subscriber: host signals, API requests, and the
/// metrics timer (watched once a metrics file is configured).
struct PreBoot<'a> {
    controller: &'a mut Controller,
    signal: &'static vmm_sys_util::eventfd::EventFd,
    timer_watched: bool,
    /// Set by `InstanceStart`: the loop ends with it.
    started: Option<Machine>,
    error: Option<String>,
}

impl PreBoot<'_> {
    fn watch_metrics_timer(&mut self, ops: &mut EventOps) {
        if let (false, Some(m)) = (self.timer_watched, &self.controller.metrics) {
            self.timer_watched = ops
                .add(Events::with_data_raw(m.timer_fd(), METRICS, EventSet::IN))
                .is_ok();
        }
    }
}

impl MutEventSubscriber for PreBoot<'_> {
    fn init(&mut self, ops: &mut EventOps) {
        let mut fds = vec![(self.signal.as_raw_fd(), SIGNAL)];
        if let Some(l) = &self.controller.link {
            fds.push((l.fd(), API));
        }
        for (fd, data) in fds {
            if let Err(e) = ops.add(Events::with_data_raw(fd, data, EventSet::IN)) {
                self.error = Some(format!("cannot watch fd {fd}: {e}"));
            }
        }
        self.watch_metrics_timer(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let c = &mut *self.controller;
        match events.data() {
            SIGNAL => {
                let _ = self.signal.read();
            }
            METRICS => {
                if let Some(m) = &mut c.metrics {
                    m.timer_fired();
                }
                if let Err(e) = c.flush_metrics(None, state_name(None)) {
                    log::warn!("metrics: {e}");
                }
            }
            _ => {
                if let Some(cause) = c.link.as_ref().and_then(ApiLink::died) {
                    self.error = Some(format!("thread 'api' died: {cause}"));
                    return;
                }
                let Some(req) = c.link.as_ref().and_then(ApiLink::next) else {
                    return;
                };
                let (resp, machine) = c.pre_boot_request(req);
                c.respond(resp);
                self.started = machine;
                // A metrics file configured just now gets its timer.
                self.watch_metrics_timer(ops);
            }
        }
    }
}

enum PreBootEnd {
    Signal(i32),
    Failed(String),
}

impl Control for Controller {
    fn fds(&self) -> Vec<RawFd> {
        let mut fds = Vec::new();
        if let Some(l) = &self.link {
            fds.push(l.fd());
        }
        if let Some(m) = &self.metrics {
            fds.push(m.timer_fd());
        }
        fds
    }

    fn on_ready(&mut self, fd: RawFd, machine: &Machine) {
        if self.metrics.as_ref().map(MetricsWriter::timer_fd) == Some(fd) {
            if let Some(m) = &mut self.metrics {
                m.timer_fired();
            }
            if let Err(e) = self.flush_metrics(Some(machine), state_name(Some(machine))) {
                log::warn!("metrics: {e}");
            }
            return;
        }
        if let Some(cause) = self.link.as_ref().and_then(ApiLink::died) {
            machine.lifecycle().request_stop(StopReason::ThreadDied {
                thread: "api".into(),
                cause,
            });
            return;
        }
        while let Some(req) = self.link.as_ref().and_then(ApiLink::next) {
            let resp = self.runtime_request(req, machine);
            self.respond(resp);
        }
    }
}
