//! `tsubame restore` (a snapshot brought back from the command line) and
//! `tsubame snapshot-editor` (Firecracker's tool: merge a Diff memory file
//! onto the Full one it follows).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use vmm::config::{SerialConfig, VmConfig};
use vmm::control::resources::VmResources;
use vmm::control::{http, Controller};
use vmm::persist::Overrides;
use vmm::vm::restore::LoadRequest;

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The state file `PUT /snapshot/create` (or `ctl snapshot`) wrote.
    #[arg(long, value_name = "PATH")]
    pub snapshot: PathBuf,
    /// The memory file written with it.
    #[arg(long, value_name = "PATH")]
    pub mem: PathBuf,
    /// Run the guest at once (otherwise it waits, paused, for a resume).
    #[arg(long)]
    pub resume: bool,
    /// Serve Firecracker's API on this Unix socket.
    #[arg(long, value_name = "PATH")]
    pub api_sock: Option<PathBuf>,
    /// Serial console: stdio, none, or a file path for the output.
    #[arg(long, value_name = "stdio|none|PATH", default_value = "stdio")]
    pub serial: String,
    /// Open this tap for the interface with this ID (repeatable).
    #[arg(long, value_name = "IFACE_ID=TAP")]
    pub net_override: Vec<String>,
    /// The vsock device's host socket, instead of the saved path.
    #[arg(long, value_name = "PATH")]
    pub vsock_socket: Option<PathBuf>,
    /// Keep a dirty log, so Diff snapshots of the restored VM can be taken.
    #[arg(long)]
    pub track_dirty_pages: bool,
    /// Advance the guest's clock by the time the snapshot slept.
    #[arg(long)]
    pub clock_realtime: bool,
    /// The KVM device.
    #[arg(long, value_name = "PATH", default_value = vmm::config::DEFAULT_KVM_DEVICE)]
    pub kvm_device: PathBuf,
    /// Print exit statistics and memory use when the VM stops.
    #[arg(long)]
    pub stats: bool,
}

impl RestoreArgs {
    fn request(&self) -> Result<(VmConfig, LoadRequest), String> {
        let serial = match self.serial.as_str() {
            "stdio" => SerialConfig::Stdio,
            "none" => SerialConfig::None,
            "" => return Err("--serial: expected stdio, none or a file path".into()),
            path => SerialConfig::File(path.into()),
        };
        let mut taps = Vec::new();
        for o in &self.net_override {
            match o.split_once('=') {
                Some((id, tap)) if !id.is_empty() && !tap.is_empty() && tap.len() <= 15 => {
                    taps.push((id.to_string(), tap.to_string()))
                }
                _ => {
                    return Err(format!(
                        "--net-override {o}: expected IFACE_ID=TAP (a tap name of 1 to 15 bytes)"
                    ))
                }
            }
        }
        let mut base = VmConfig::new("");
        base.kvm_device = self.kvm_device.clone();
        base.serial = serial.clone();
        base.stats = self.stats;
        let req = LoadRequest {
            state_path: self.snapshot.clone(),
            mem_path: self.mem.clone(),
            overrides: Overrides {
                taps,
                vsock_socket: self.vsock_socket.clone(),
                serial: Some(serial),
            },
            track_dirty_pages: self.track_dirty_pages,
            clock_realtime: self.clock_realtime,
        };
        Ok((base, req))
    }
}

pub fn restore(args: RestoreArgs) -> ExitCode {
    if let Err(code) = crate::install_signal_handlers() {
        return code;
    }
    let (base, req) = match args.request() {
        Ok(r) => r,
        Err(e) => return crate::fail(e),
    };
    let api = match &args.api_sock {
        Some(path) => match http::start(path, http::DEFAULT_MAX_BODY) {
            Ok(api) => Some(api),
            Err(e) => return crate::fail(e),
        },
        None => None,
    };
    let controller = Controller::new(
        "anonymous-instance".into(),
        base,
        VmResources::default(),
        api,
    );
    crate::finish(controller.restore_and_run(&req, args.resume), args.stats)
}

#[derive(Args, Debug)]
pub struct EditorArgs {
    #[command(subcommand)]
    pub what: EditorCommand,
}

#[derive(Subcommand, Debug)]
pub enum EditorCommand {
    /// Memory file operations.
    EditMemory {
        #[command(subcommand)]
        op: MemoryOp,
    },
}

#[derive(Subcommand, Debug)]
pub enum MemoryOp {
    /// Write a Diff snapshot's pages onto the memory file it follows; the
    /// state file of the Diff then restores from the merged file.
    Rebase {
        /// The base (Full, or already rebased) memory file; changed in place.
        #[arg(long, value_name = "PATH")]
        memory_path: PathBuf,
        /// The Diff snapshot's memory file.
        #[arg(long, value_name = "PATH")]
        diff_path: PathBuf,
    },
}

pub fn editor(args: EditorArgs) -> ExitCode {
    let EditorCommand::EditMemory {
        op: MemoryOp::Rebase {
            memory_path,
            diff_path,
        },
    } = args.what;
    match vmm::persist::memory::rebase(&memory_path, &diff_path) {
        Ok(n) => {
            println!(
                "{n} bytes of {} written onto {}",
                diff_path.display(),
                memory_path.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => crate::fail(format!("rebase: {e}")),
    }
}
