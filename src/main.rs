//! The `tsubame` binary: command line, logging, exit status. The VM's life
//! itself is in the `vmm` crate.
//!
//! Four ways in: `tsubame run …` (one command line), `tsubame --api-sock
//! S` (Firecracker's API, as its clients start it), `tsubame
//! --config-file F [--no-api]` (Firecracker's JSON, booted at once), and
//! `tsubame restore --snapshot S --mem M` (a snapshot brought back).

mod bench;
mod cli;
mod ctl;
mod jail;
mod snapshot;

use std::path::Path;
use std::process::ExitCode;

use vmm::control::resources::{FullVmConfiguration, VmResources};
use vmm::control::{http, Controller, Finish};
use vmm::VmConfig;

fn main() -> ExitCode {
    vmm::mark_start();
    create_vm_ahead();
    let cli = match cli::parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    vmm::logger::init(cli.log_level.filter());
    vmm::trace::mark("command line parsed");
    let seccomp = if cli.api.no_seccomp {
        vmm::confine::SeccompMode::Off
    } else {
        cli.seccomp
    };
    if let Err(e) = vmm::confine::set_mode(seccomp) {
        return fail(e);
    }
    vmm::confine::landlock::set_mode(cli.landlock);
    for rule in &cli.landlock_rule {
        vmm::confine::landlock::grant(&rule.path, rule.grant);
    }
    match cli.command {
        Some(cli::Command::Run(args)) => run(args),
        Some(cli::Command::Bench(args)) => bench::main(args),
        Some(cli::Command::Ctl(args)) => ctl::main(args),
        Some(cli::Command::Restore(args)) => snapshot::restore(args),
        Some(cli::Command::SnapshotEditor(args)) => snapshot::editor(args),
        Some(cli::Command::Jail(args)) => jail::main(args),
        None => firecracker_style(cli.api),
    }
}

/// `tsubame run` and `tsubame restore` make a VM: its KVM_CREATE_VM
/// starts now, on a helper thread, while the command line is parsed (see
/// `vmm::vm::ahead`). Only as the first argument, before anything else
/// could start a thread (the jailer must be single-threaded to unshare),
/// and not for another `--kvm-device`. A wrong guess costs the helper's
/// work, nothing else: the builder makes the VM itself.
fn create_vm_ahead() {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let makes_vm = args.first().is_some_and(|a| a == "run" || a == "restore");
    let other_device = args
        .iter()
        .any(|a| a.as_encoded_bytes().starts_with(b"--kvm-device"));
    if makes_vm && !other_device {
        vmm::vm::ahead::start(Path::new(vmm::config::DEFAULT_KVM_DEVICE));
    }
}

pub(crate) fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("tsubame: {e}");
    ExitCode::from(1)
}

/// The stop signals' handlers go in before anything that needs cleaning
/// up (the API socket, the terminal): a SIGTERM that came earlier would
/// kill the process with its socket file left behind.
pub(crate) fn install_signal_handlers() -> Result<(), ExitCode> {
    vmm::signals::install()
        .map(|_| ())
        .map_err(|e| fail(format!("cannot install signal handlers: {e}")))
}

fn run(mut args: cli::RunArgs) -> ExitCode {
    if let Err(code) = install_signal_handlers() {
        return code;
    }
    let stats = args.stats;
    let api_sock = args.api_sock.take();
    let cfg = match args.into_config() {
        Ok(cfg) => cfg,
        Err(e) => return fail(e),
    };
    let api = match &api_sock {
        Some(path) => match http::start(path, http::DEFAULT_MAX_BODY) {
            Ok(api) => Some(api),
            Err(e) => return fail(e),
        },
        None => None,
    };
    let controller = Controller::new(
        "anonymous-instance".into(),
        cfg.clone(),
        VmResources::default(),
        api,
    );
    finish(controller.run(Some(cfg)), stats)
}

/// Reads and checks a Firecracker configuration file; errors name the
/// file and the key.
fn load_config_file(path: &Path) -> Result<VmResources, String> {
    let name = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("config file {name}: {e}"))?;
    if meta.len() > 1 << 20 {
        return Err(format!(
            "config file {name}: {} bytes; at most 1 MiB",
            meta.len()
        ));
    }
    let text = std::fs::read(path).map_err(|e| format!("config file {name}: {e}"))?;
    let value: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| format!("config file {name}: {e}"))?;
    if !value.is_object() {
        return Err(format!("config file {name}: expected a JSON object"));
    }
    let full: FullVmConfiguration =
        serde_json::from_value(value).map_err(|e| format!("config file {name}: {e}"))?;
    VmResources::from_full_config(full).map_err(|e| format!("config file {name}: {e}"))
}

fn firecracker_style(a: cli::ApiArgs) -> ExitCode {
    if let Err(code) = install_signal_handlers() {
        return code;
    }
    if a.no_api && a.config_file.is_none() {
        return fail("--no-api needs --config-file (there is nothing else to start from)");
    }
    if a.no_api && a.api_sock.is_some() {
        return fail("--no-api and --api-sock contradict each other");
    }
    if !a.no_api && a.api_sock.is_none() {
        return fail(
            "give --api-sock PATH (Firecracker's API), or --config-file FILE --no-api; see --help",
        );
    }
    if let Some(level) = &a.level {
        match vmm::logger::parse_level(level) {
            Some(l) => log::set_max_level(l),
            None => {
                return fail(format!(
                    "--level {level}: expected Error, Warning, Info, Debug, Trace or Off"
                ))
            }
        }
    }
    if let Some(p) = &a.log_path {
        if let Err(e) = vmm::logger::set_path(p) {
            return fail(format!("--log-path {}: {e}", p.display()));
        }
    }
    if let Some(t) = a.start_time_us {
        log::debug!(
            "started by a jailer at {t} µs (CPU {:?} µs, parent CPU {:?} µs)",
            a.start_time_cpu_us,
            a.parent_cpu_time_us
        );
    }
    let resources = match &a.config_file {
        Some(path) => match load_config_file(path) {
            Ok(r) => r,
            Err(e) => return fail(e),
        },
        None => VmResources::default(),
    };
    let base = VmConfig::new("");
    let start = match &a.config_file {
        Some(path) => match resources.to_vm_config(&base) {
            Ok(cfg) => Some(cfg),
            Err(e) => return fail(format!("config file {}: {e}", path.display())),
        },
        None => None,
    };
    let api = match &a.api_sock {
        Some(path) => match http::start(path, a.http_api_max_payload_size) {
            Ok(api) => Some(api),
            Err(e) => return fail(e),
        },
        None => None,
    };
    let logger = resources.logger.clone();
    let metrics = a
        .metrics_path
        .as_ref()
        .map(|p| p.to_string_lossy().into_owned())
        .or_else(|| resources.metrics.as_ref().map(|m| m.metrics_path.clone()));
    let mut controller = Controller::new(a.id, base, resources, api);
    if let Some(l) = logger {
        if let Err(e) = controller.set_logger(l) {
            return fail(format!("config file: logger: {e}"));
        }
    }
    if let Some(m) = metrics {
        if let Err(e) = controller.set_metrics_path(&m) {
            return fail(e);
        }
    }
    finish(controller.run(start), false)
}

pub(crate) fn finish(f: Finish, stats: bool) -> ExitCode {
    let outcome = match f {
        Finish::Ran(outcome) => outcome,
        Finish::Signal(n) => {
            log::info!("stopped by host signal {n} before the machine started");
            return ExitCode::from((128 + n) as u8);
        }
        Finish::StartFailed(e) => return fail(e),
    };
    match &outcome.reason {
        vmm::StopReason::GuestCrash { report, .. } => eprint!("tsubame: the guest died\n{report}"),
        vmm::StopReason::VmmError(e) => eprintln!("tsubame: {e}"),
        r @ vmm::StopReason::ThreadDied { .. } => {
            eprintln!("tsubame: {r}; the machine was stopped")
        }
        _ => {}
    }
    if let (true, Some(m)) = (stats, outcome.memory) {
        eprint!("{}", outcome.stats_text);
        eprintln!(
            "memory: peak RSS {} KiB, guest RAM resident {} KiB, VMM overhead {} KiB (now: private {} KiB beyond guest RAM, file-backed {} KiB shared with every process mapping the same files)",
            m.peak_rss_kib,
            m.guest_resident_kib,
            m.overhead_kib(),
            m.private_overhead_kib(),
            m.file_kib
        );
    }
    if !outcome.samples.is_empty() {
        let total: u64 = outcome.samples.iter().map(|(_, n)| n).sum();
        eprintln!("guest RIP samples ({total} in all):");
        for ((rip, cpl, caller), n) in outcome.samples.iter().take(2000) {
            eprintln!(
                "  {rip:#018x} cpl{cpl} {n:>8} {:5.1}% caller {caller:#x}",
                *n as f64 * 100.0 / total as f64
            );
        }
    }
    let code = outcome.reason.exit_code();
    log::info!("{} (exit status {code})", outcome.reason);
    vmm::trace::mark("exit");
    vmm::trace::report();
    ExitCode::from(code as u8)
}
