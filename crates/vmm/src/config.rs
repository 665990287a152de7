//! What a user asks for, checked before anything is created.

use std::path::PathBuf;

use crate::boot::BootPath;
use crate::devices::virtio::block::IoEngine;
use crate::vm::layout::MIB;

/// Where the serial console goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SerialConfig {
    /// Output to stdout, input from stdin (raw mode on a terminal).
    #[default]
    Stdio,
    None,
    File(PathBuf),
}

/// Which CPU profile to offer the guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProfileChoice {
    /// From the detected host kind.
    #[default]
    Auto,
    /// As if on VT-x/AMD-V, even on an emulation-only host.
    Native,
    /// The emulation-only profile, on any host.
    Emulated,
}

/// A virtio-blk disk: `--disk path=FILE[,readonly=on][,id=NAME]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub read_only: bool,
    /// What GET_ID answers (at most 20 bytes); default: the file name.
    pub id: Option<String>,
    /// How its data moves (`engine=auto|sync|async`).
    pub engine: IoEngine,
}

/// Splits `key=value,key=value`, refusing keys not in `known`.
fn key_values<'a>(s: &'a str, known: &[&str]) -> Result<Vec<(&'a str, &'a str)>, String> {
    s.split(',')
        .map(|part| {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}`: expected key=value"))?;
            if !known.contains(&key) {
                return Err(format!("unknown key `{key}` ({})", known.join(", ")));
            }
            Ok((key, value))
        })
        .collect()
}

fn on_off(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        _ => Err(format!("{key}={value}: expected on or off")),
    }
}

impl std::str::FromStr for DiskConfig {
    type Err = String;

    fn from_str(s: &str) -> Result<DiskConfig, String> {
        let mut path = None;
        let mut read_only = false;
        let mut id = None;
        let mut engine = IoEngine::default();
        for (key, value) in key_values(s, &["path", "readonly", "id", "engine"])? {
            match key {
                "path" if value.is_empty() => return Err("path=: empty path".into()),
                "path" => path = Some(PathBuf::from(value)),
                "readonly" => read_only = on_off(key, value)?,
                "engine" => engine = value.parse()?,
                _ if value.len() <= 20 => id = Some(value.to_string()),
                _ => return Err(format!("id={value}: at most 20 bytes")),
            }
        }
        let path = path.ok_or("path=FILE is required")?;
        Ok(DiskConfig {
            path,
            read_only,
            id,
            engine,
        })
    }
}

/// A virtio-net device on a tap: `--net tap=NAME[,mac=MAC]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The interface's ID (`iface_id` in the API), for snapshot overrides.
    pub id: Option<String>,
    pub tap: String,
    /// Default: a locally administered address numbered by device.
    pub mac: Option<[u8; 6]>,
}

impl std::str::FromStr for NetConfig {
    type Err = String;

    fn from_str(s: &str) -> Result<NetConfig, String> {
        let mut tap = None;
        let mut mac = None;
        let mut id = None;
        for (key, value) in key_values(s, &["tap", "mac", "id"])? {
            match key {
                "id" if value.is_empty() => return Err("id=: empty".into()),
                "id" => id = Some(value.to_string()),
                "tap" if value.is_empty() || value.len() > 15 => {
                    return Err(format!("tap={value}: a name of 1 to 15 bytes"))
                }
                "tap" => tap = Some(value.to_string()),
                _ => {
                    let m = crate::devices::virtio::net::parse_mac(value).ok_or_else(|| {
                        format!("mac={value}: expected six hex pairs like 0e:00:00:00:00:01")
                    })?;
                    if m[0] & 1 != 0 {
                        return Err(format!("mac={value}: a multicast address"));
                    }
                    mac = Some(m);
                }
            }
        }
        Ok(NetConfig {
            id,
            tap: tap.ok_or("tap=NAME is required")?,
            mac,
        })
    }
}

/// A hybrid virtio-vsock device: `--vsock cid=N,socket=PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context ID (3 or more; 0-2 are reserved).
    pub cid: u32,
    /// The host side: a Unix socket the VMM listens on (`CONNECT <port>`);
    /// guest connections to port P go to `<socket>_P`.
    pub socket: PathBuf,
}

impl std::str::FromStr for VsockConfig {
    type Err = String;

    fn from_str(s: &str) -> Result<VsockConfig, String> {
        let mut cid = None;
        let mut socket = None;
        for (key, value) in key_values(s, &["cid", "socket"])? {
            match key {
                "cid" => {
                    let n: u32 = value
                        .parse()
                        .map_err(|_| format!("cid={value}: expected a number"))?;
                    if n < 3 || n == u32::MAX {
                        return Err(format!(
                            "cid={value}: 0, 1, 2 and {} are reserved",
                            u32::MAX
                        ));
                    }
                    cid = Some(n);
                }
                _ if value.is_empty() => return Err("socket=: empty path".into()),
                _ => socket = Some(PathBuf::from(value)),
            }
        }
        Ok(VsockConfig {
            cid: cid.ok_or("cid=N is required")?,
            socket: socket.ok_or("socket=PATH is required")?,
        })
    }
}

pub const DEFAULT_MEMORY_MIB: u64 = 128;

/// The KVM device a VM is made on unless `--kvm-device` says otherwise.
pub const DEFAULT_KVM_DEVICE: &str = "/dev/kvm";
pub const DEFAULT_CMDLINE: &str = "console=ttyS0";
/// MADT LAPIC entries and the MP table carry 8-bit APIC IDs; 255 is broadcast.
pub const MAX_VCPUS: usize = 254;

#[derive(Clone, Debug)]
pub struct VmConfig {
    pub kvm_device: PathBuf,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// `None`: [`DEFAULT_CMDLINE`].
    pub cmdline: Option<String>,
    pub cpus: usize,
    pub memory_mib: u64,
    pub serial: SerialConfig,
    pub boot_path: BootPath,
    pub profile: ProfileChoice,
    /// Print exit statistics and memory figures when the machine stops.
    pub stats: bool,
    /// On emulation-only hosts, complete instructions the emulator rejects
    /// (and repair `syscall`); `false` reports the first such gap as a
    /// guest crash.
    pub complete_gaps: bool,
    /// Sample guest RIPs every 10 ms (a profile of where the guest spends
    /// its time, printed at exit).
    pub sample_rip: bool,
    /// virtio-blk disks, in order.
    pub disks: Vec<DiskConfig>,
    /// A virtio-rng device.
    pub rng: bool,
    /// virtio-net devices, in order.
    pub nets: Vec<NetConfig>,
    /// A virtio-vsock device.
    pub vsock: Option<VsockConfig>,
    /// Queue notifications as ioeventfds (KVM signals the device thread
    /// without an exit); `false` makes each notify an MMIO exit, for
    /// measuring the difference.
    pub ioeventfd: bool,
    /// KVM's dirty log on guest RAM, so Diff snapshots can be taken.
    pub track_dirty_pages: bool,
    /// Where the interrupt controllers and the PIT live.
    pub irqchip: crate::irqchip::IrqchipMode,
}

impl VmConfig {
    pub fn new(kernel: impl Into<PathBuf>) -> VmConfig {
        VmConfig {
            kvm_device: PathBuf::from(DEFAULT_KVM_DEVICE),
            kernel: kernel.into(),
            initrd: None,
            cmdline: None,
            cpus: 1,
            memory_mib: DEFAULT_MEMORY_MIB,
            serial: SerialConfig::Stdio,
            boot_path: BootPath::default(),
            profile: ProfileChoice::Auto,
            stats: false,
            complete_gaps: true,
            sample_rip: false,
            disks: Vec::new(),
            rng: false,
            nets: Vec::new(),
            vsock: None,
            ioeventfd: true,
            track_dirty_pages: false,
            irqchip: crate::irqchip::IrqchipMode::Kernel,
        }
    }

    /// The command line the guest gets: the user's (or the default), with
    /// the host profile's additions placed before any `--` init arguments.
    /// An addition is left out when the user's line already sets the same
    /// parameter (`mitigations=auto` keeps `mitigations=off` out).
    pub fn guest_cmdline(&self, additions: &[&str]) -> String {
        let base = self.cmdline.as_deref().unwrap_or(DEFAULT_CMDLINE);
        let kernel_part = base.split(" -- ").next().unwrap_or("");
        let key = |p: &str| p.split('=').next().unwrap_or(p).to_string();
        let missing: Vec<&str> = additions
            .iter()
            .copied()
            .filter(|a| !kernel_part.split_whitespace().any(|w| key(w) == key(a)))
            .collect();
        if missing.is_empty() {
            return base.to_string();
        }
        let extra = missing.join(" ");
        match base.find(" -- ") {
            Some(i) => format!("{} {extra}{}", &base[..i], &base[i..]),
            None if base.is_empty() => extra,
            None => format!("{base} {extra}"),
        }
    }
}

/// Host memory in MiB, from sysinfo(2).
pub fn host_memory_mib() -> Option<u64> {
    // SAFETY: sysinfo is plain old data; all-zero is a valid value.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: sysinfo writes only into the struct we pass.
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return None;
    }
    Some(info.totalram as u64 * u64::from(info.mem_unit) / MIB)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_options_parse_and_errors_name_the_problem() {
        let d: DiskConfig = "path=/a.img,readonly=on,id=root,engine=sync"
            .parse()
            .unwrap();
        assert_eq!(
            d,
            DiskConfig {
                path: "/a.img".into(),
                read_only: true,
                id: Some("root".into()),
                engine: IoEngine::Sync,
            }
        );
        let d: DiskConfig = "path=b.img".parse().unwrap();
        assert!(!d.read_only && d.id.is_none() && d.engine == IoEngine::Auto);
        let d: DiskConfig = "path=b.img,engine=async".parse().unwrap();
        assert_eq!(d.engine, IoEngine::Async);
        for (bad, needle) in [
            ("readonly=on", "path=FILE is required"),
            ("path=", "empty path"),
            ("path=a,readonly=maybe", "readonly=maybe"),
            ("path=a,speed=9", "unknown key `speed`"),
            ("path=a,id=123456789012345678901", "at most 20"),
            ("a.img", "`a.img`: expected key=value"),
            (
                "path=a,engine=uring",
                "engine=uring: expected auto, sync or async",
            ),
        ] {
            let e = bad.parse::<DiskConfig>().unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn net_and_vsock_options_parse_and_errors_name_the_problem() {
        let n: NetConfig = "tap=tap0,mac=0e:00:00:00:00:07".parse().unwrap();
        assert_eq!(n.tap, "tap0");
        assert_eq!(n.mac, Some([0x0e, 0, 0, 0, 0, 7]));
        assert_eq!("tap=t".parse::<NetConfig>().unwrap().mac, None);
        for (bad, needle) in [
            ("mac=0e:00:00:00:00:07", "tap=NAME is required"),
            ("tap=", "1 to 15 bytes"),
            ("tap=a-very-long-tap-name", "1 to 15 bytes"),
            ("tap=t,mac=0e:00", "six hex pairs"),
            ("tap=t,mac=01:00:00:00:00:01", "multicast"),
            ("tap=t,queues=4", "unknown key `queues`"),
        ] {
            let e = bad.parse::<NetConfig>().unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
        let v: VsockConfig = "cid=3,socket=/tmp/v.sock".parse().unwrap();
        assert_eq!((v.cid, v.socket), (3, PathBuf::from("/tmp/v.sock")));
        for (bad, needle) in [
            ("cid=2,socket=/s", "reserved"),
            ("cid=x,socket=/s", "expected a number"),
            ("socket=/s", "cid=N is required"),
            ("cid=3", "socket=PATH is required"),
            ("cid=3,socket=", "empty path"),
            ("cid=3,socket=/s,port=1", "unknown key `port`"),
        ] {
            let e = bad.parse::<VsockConfig>().unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn default_cmdline_is_the_serial_console() {
        let c = VmConfig::new("k");
        assert_eq!(c.guest_cmdline(&[]), "console=ttyS0");
        assert_eq!(c.guest_cmdline(&["noxsave"]), "console=ttyS0 noxsave");
    }

    #[test]
    fn additions_go_before_init_arguments_and_are_not_repeated() {
        let mut c = VmConfig::new("k");
        c.cmdline = Some("console=ttyS0 quiet -- init-arg noxsave".into());
        assert_eq!(
            c.guest_cmdline(&["noxsave"]),
            "console=ttyS0 quiet noxsave -- init-arg noxsave"
        );
        c.cmdline = Some("noxsave console=ttyS0".into());
        assert_eq!(c.guest_cmdline(&["noxsave"]), "noxsave console=ttyS0");
        c.cmdline = Some(String::new());
        assert_eq!(c.guest_cmdline(&["noxsave"]), "noxsave");
        c.cmdline = Some("console=ttyS0 mitigations=auto".into());
        assert_eq!(
            c.guest_cmdline(&["mitigations=off", "noxsave"]),
            "console=ttyS0 mitigations=auto noxsave",
            "the user's setting wins"
        );
        c.cmdline = Some(String::new());
        assert_eq!(c.guest_cmdline(&[]), "");
    }

    #[test]
    fn host_memory_is_known() {
        assert!(host_memory_mib().unwrap() > 0);
    }
}
