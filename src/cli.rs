//! The command line. Usage errors exit 1 (bad configuration or input), like
//! every other configuration error; `--help` and `--version` exit 0.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use vmm::boot::BootPath;
use vmm::config::{
    DiskConfig, NetConfig, ProfileChoice, SerialConfig, VmConfig, VsockConfig, DEFAULT_MEMORY_MIB,
};

const EXIT_STATUS_HELP: &str = "\
Exit status:
  0       the guest powered off or reset itself (or Ctrl-A x on the console)
  1       bad configuration or input, or Tsubame could not run the machine
  2       the guest died in a way the VMM can see (triple fault, KVM internal
          error, failed entry), or one of Tsubame's threads died (a vCPU,
          the device or the API thread); a report goes to stderr
  128+N   stopped by host signal N (130 for SIGINT, 143 for SIGTERM)
  159     a thread made a system call its seccomp filter forbids (the line
          on stderr names the thread and the call)";

#[derive(Parser, Debug)]
#[command(name = "tsubame", version, about = "A virtual machine monitor for Linux KVM", after_help = EXIT_STATUS_HELP,
    long_about = "A virtual machine monitor for Linux KVM.\n\nWith no subcommand Tsubame starts as Firecracker does: it serves Firecracker's API on --api-sock, and/or boots the machine described by --config-file.")]
pub struct Cli {
    /// Log level: error, warn, info, debug or trace.
    #[arg(long, global = true, value_enum, default_value = "info")]
    pub log_level: LogLevel,
    /// System-call filters on every thread: kill (a forbidden call ends
    /// Tsubame with status 159 and a line naming the thread and the call),
    /// log (allowed, logged by the kernel's audit) or off.
    #[arg(long, global = true, value_name = "MODE", default_value = "kill")]
    pub seccomp: vmm::confine::SeccompMode,
    /// Landlock (when the kernel has it): once set up, Tsubame may open only
    /// the files it was configured with; on or off.
    #[arg(long, global = true, value_name = "MODE", default_value = "on")]
    pub landlock: vmm::confine::LandlockMode,
    /// One more path Tsubame may open under Landlock, e.g. the directory
    /// snapshots are written to: path=P,access=r|rw (repeatable).
    #[arg(long, global = true, value_name = "RULE")]
    pub landlock_rule: Vec<vmm::confine::landlock::Rule>,
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Firecracker's command line, for the tools that start it.
#[derive(Args, Debug, Default)]
pub struct ApiArgs {
    /// Serve Firecracker's API on this Unix socket (must not exist).
    #[arg(long, value_name = "PATH")]
    pub api_sock: Option<PathBuf>,
    /// Boot at once from a Firecracker JSON configuration file.
    #[arg(long, value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    /// No API socket (needs --config-file).
    #[arg(long)]
    pub no_api: bool,
    /// The instance ID `GET /` reports.
    #[arg(long, value_name = "ID", default_value = "anonymous-instance")]
    pub id: String,
    /// Write the log to this file or named pipe.
    #[arg(long, value_name = "PATH")]
    pub log_path: Option<PathBuf>,
    /// Log level, as Firecracker takes it: Error, Warning, Info, Debug, Trace, Off.
    #[arg(long, value_name = "LEVEL")]
    pub level: Option<String>,
    /// Write metrics (JSON lines) to this file or named pipe.
    #[arg(long, value_name = "PATH")]
    pub metrics_path: Option<PathBuf>,
    /// Largest API request body, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = vmm::control::http::DEFAULT_MAX_BODY)]
    pub http_api_max_payload_size: usize,
    /// As Firecracker's: no system-call filters (`--seccomp off`).
    #[arg(long)]
    pub no_seccomp: bool,
    /// Process start time, as Firecracker's jailer passes it (logged).
    #[arg(long, value_name = "US")]
    pub start_time_us: Option<u64>,
    /// Process start CPU time, as the jailer passes it (logged).
    #[arg(long, value_name = "US")]
    pub start_time_cpu_us: Option<u64>,
    /// The jailer's CPU time, as it passes it (logged).
    #[arg(long, value_name = "US")]
    pub parent_cpu_time_us: Option<u64>,
}

/// Each subcommand's arguments are built only when it is the one given:
/// building all of them cost every start about 0.1 ms.
#[derive(Subcommand, Debug)]
#[command(defer = true)]
pub enum Command {
    /// Boot a kernel and run the VM until it stops.
    #[command(after_help = EXIT_STATUS_HELP)]
    Run(RunArgs),
    /// Measure exit costs, start-up time and memory overhead.
    Bench(crate::bench::BenchArgs),
    /// Talk to a running Tsubame (or Firecracker) over its API socket.
    Ctl(crate::ctl::CtlArgs),
    /// Bring a snapshot back to life in this process.
    #[command(after_help = EXIT_STATUS_HELP)]
    Restore(crate::snapshot::RestoreArgs),
    /// Edit snapshot files (merge a Diff onto its base).
    SnapshotEditor(crate::snapshot::EditorArgs),
    /// Start the VMM jailed, as Firecracker's jailer does: chroot, cgroup,
    /// namespaces, resource limits, an unprivileged user (run as root).
    Jail(crate::jail::JailArgs),
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootPathArg {
    /// Decompress a bzImage on the host and boot its vmlinux (default).
    HostDecompress,
    /// Run the bzImage's own decompressor in the guest.
    GuestDecompress,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum GapsArg {
    /// Complete what KVM's emulator rejects, repair `syscall` (default).
    Complete,
    /// Report the first emulator gap as a guest crash (exit 2).
    Report,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProfileArg {
    /// Chosen from the host kind (default).
    Auto,
    /// As on VT-x/AMD-V.
    Native,
    /// For emulation-only hosts: CX16 hidden, `noxsave`.
    Emulated,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Kernel image: bzImage, ELF vmlinux, or ELF with a PVH note.
    #[arg(long, value_name = "PATH")]
    pub kernel: PathBuf,
    /// Initial ramdisk.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line [default: console=ttyS0].
    #[arg(long, value_name = "STRING")]
    pub cmdline: Option<String>,
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub cpus: usize,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = DEFAULT_MEMORY_MIB)]
    pub memory: u64,
    /// Serial console: stdio, none, or a file path for the output.
    #[arg(long, value_name = "stdio|none|PATH", default_value = "stdio")]
    pub serial: String,
    /// Print exit statistics and memory use when the VM stops.
    #[arg(long)]
    pub stats: bool,
    /// How a bzImage is decompressed.
    #[arg(long, value_enum, default_value = "host-decompress")]
    pub boot_path: BootPathArg,
    /// CPU profile offered to the guest.
    #[arg(long, value_enum, default_value = "auto")]
    pub cpu_profile: ProfileArg,
    /// Emulation-only hosts: what to do with instructions KVM's emulator
    /// rejects.
    #[arg(long, value_enum, default_value = "complete")]
    pub emulator_gaps: GapsArg,
    /// Sample guest RIPs every 10 ms and print the most frequent at exit.
    #[arg(long)]
    pub sample_rip: bool,
    /// Where the interrupt controllers and the PIT live: `kernel` (KVM's),
    /// `split` (KVM's LAPICs, Tsubame's IOAPIC, PIC and PIT), or
    /// `userspace` (Tsubame's 8259A pair and 8254, one vCPU).
    #[arg(long, value_name = "kernel|split|userspace", default_value = "kernel")]
    pub irqchip: vmm::irqchip::IrqchipMode,
    /// The KVM device.
    #[arg(long, value_name = "PATH", default_value = vmm::config::DEFAULT_KVM_DEVICE)]
    pub kvm_device: PathBuf,
    /// A virtio-blk disk on a raw image (repeatable); engine: io_uring
    /// reads (async), pread/pwrite (sync), or io_uring where the kernel
    /// allows it (auto, the default).
    #[arg(
        long,
        value_name = "path=FILE[,readonly=on][,id=NAME][,engine=auto|sync|async]"
    )]
    pub disk: Vec<DiskConfig>,
    /// A virtio-rng device fed by the host's getrandom.
    #[arg(long)]
    pub rng: bool,
    /// A virtio-net device on a tap (created if missing; repeatable).
    #[arg(long, value_name = "tap=NAME[,mac=MAC]")]
    pub net: Vec<NetConfig>,
    /// A virtio-vsock device; the host side is a Unix socket.
    #[arg(long, value_name = "cid=N,socket=PATH")]
    pub vsock: Option<VsockConfig>,
    /// Also serve Firecracker's API on this Unix socket (pause, resume,
    /// snapshots, metrics, Ctrl-Alt-Del while the VM runs).
    #[arg(long, value_name = "PATH")]
    pub api_sock: Option<PathBuf>,
    /// Keep a dirty log of guest RAM, so Diff snapshots can be taken.
    #[arg(long)]
    pub track_dirty_pages: bool,
}

impl RunArgs {
    pub fn into_config(self) -> Result<VmConfig, String> {
        let serial = match self.serial.as_str() {
            "stdio" => SerialConfig::Stdio,
            "none" => SerialConfig::None,
            "" => return Err("--serial: expected stdio, none or a file path".into()),
            path => SerialConfig::File(path.into()),
        };
        let mut cfg = VmConfig::new(self.kernel);
        cfg.kvm_device = self.kvm_device;
        cfg.initrd = self.initrd;
        cfg.cmdline = self.cmdline;
        cfg.cpus = self.cpus;
        cfg.memory_mib = self.memory;
        cfg.serial = serial;
        cfg.stats = self.stats;
        cfg.sample_rip = self.sample_rip;
        cfg.disks = self.disk;
        cfg.rng = self.rng;
        cfg.nets = self.net;
        cfg.vsock = self.vsock;
        cfg.track_dirty_pages = self.track_dirty_pages;
        cfg.irqchip = self.irqchip;
        cfg.complete_gaps = self.emulator_gaps == GapsArg::Complete;
        cfg.boot_path = match self.boot_path {
            BootPathArg::HostDecompress => BootPath::HostDecompress,
            BootPathArg::GuestDecompress => BootPath::GuestDecompress,
        };
        cfg.profile = match self.cpu_profile {
            ProfileArg::Auto => ProfileChoice::Auto,
            ProfileArg::Native => ProfileChoice::Native,
            ProfileArg::Emulated => ProfileChoice::Emulated,
        };
        Ok(cfg)
    }
}

/// Parses `std::env::args`; on error prints clap's message and returns
/// the exit code (0 for help/version, 1 otherwise).
pub fn parse() -> Result<Cli, ExitCode> {
    parse_from(std::env::args_os())
}

pub fn parse_from<I, T>(args: I) -> Result<Cli, ExitCode>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    Cli::try_parse_from(args).map_err(|e| {
        let _ = e.print();
        if e.use_stderr() {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(args: &[&str]) -> Result<RunArgs, ()> {
        let mut v = vec!["tsubame", "run"];
        v.extend_from_slice(args);
        match Cli::try_parse_from(v) {
            Ok(Cli {
                command: Some(Command::Run(r)),
                ..
            }) => Ok(r),
            _ => Err(()),
        }
    }

    #[test]
    fn defaults() {
        let r = run_args(&["--kernel", "k"]).unwrap();
        assert_eq!((r.cpus, r.memory, r.stats), (1, 128, false));
        let cfg = r.into_config().unwrap();
        assert_eq!(cfg.serial, SerialConfig::Stdio);
        assert_eq!(cfg.guest_cmdline(&[]), "console=ttyS0");
        assert_eq!(cfg.boot_path, BootPath::HostDecompress);
    }

    #[test]
    fn every_option_parses() {
        let r = run_args(&[
            "--kernel",
            "k",
            "--initrd",
            "i",
            "--cmdline",
            "a b",
            "--cpus",
            "2",
            "--memory",
            "512",
            "--serial",
            "/tmp/out",
            "--stats",
            "--boot-path",
            "guest-decompress",
            "--cpu-profile",
            "native",
        ])
        .unwrap();
        let cfg = r.into_config().unwrap();
        assert_eq!(cfg.initrd, Some("i".into()));
        assert_eq!(cfg.cmdline.as_deref(), Some("a b"));
        assert_eq!((cfg.cpus, cfg.memory_mib), (2, 512));
        assert_eq!(cfg.serial, SerialConfig::File("/tmp/out".into()));
        assert_eq!(cfg.boot_path, BootPath::GuestDecompress);
        assert_eq!(cfg.profile, ProfileChoice::Native);
        assert!(cfg.stats);
        let none = run_args(&["--kernel", "k", "--serial", "none"]).unwrap();
        assert_eq!(none.into_config().unwrap().serial, SerialConfig::None);
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(run_args(&[]).is_err(), "no --kernel");
        assert!(run_args(&["--kernel", "k", "--cpus", "two"]).is_err());
        assert!(run_args(&["--kernel", "k", "--memory", "-5"]).is_err());
        assert!(run_args(&["--kernel", "k", "--frobnicate"]).is_err());
        assert!(run_args(&["--kernel", "k", "--boot-path", "sideways"]).is_err());
        let empty_serial = run_args(&["--kernel", "k", "--serial", ""]).unwrap();
        assert!(empty_serial.into_config().is_err());
    }

    #[test]
    fn firecracker_style_start_up_parses_without_a_subcommand() {
        let cli = Cli::try_parse_from([
            "tsubame",
            "--api-sock",
            "/tmp/fc.sock",
            "--id",
            "vm1",
            "--level",
            "Debug",
            "--start-time-us",
            "12",
        ])
        .unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.api.api_sock, Some("/tmp/fc.sock".into()));
        assert_eq!(cli.api.id, "vm1");
        assert_eq!(cli.api.level.as_deref(), Some("Debug"));
        assert!(Cli::try_parse_from(["tsubame", "--api-sock"]).is_err());
        assert!(Cli::try_parse_from(["tsubame", "--seccomp-filter", "f"]).is_err());
    }

    #[test]
    fn usage_errors_exit_1_and_help_exits_0() {
        assert_eq!(
            parse_from(["tsubame", "run", "--cpus", "x"]).unwrap_err(),
            ExitCode::from(1)
        );
        assert_eq!(
            parse_from(["tsubame", "--help"]).unwrap_err(),
            ExitCode::SUCCESS
        );
    }
}
