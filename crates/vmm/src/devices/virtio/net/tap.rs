//! A Linux tap device: one frame per read or write, each behind the
//! 12-byte virtio-net header (`IFF_VNET_HDR`), so guest offloads (partial
//! checksums, TSO) pass through to the host stack untouched.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref, ioctl_with_val};
use vmm_sys_util::ioctl_iow_nr;

ioctl_iow_nr!(TUNSETIFF, b'T' as u32, 202, libc::c_int);
ioctl_iow_nr!(TUNSETOFFLOAD, b'T' as u32, 208, libc::c_uint);
ioctl_iow_nr!(TUNSETVNETHDRSZ, b'T' as u32, 216, libc::c_int);

const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;

/// Offloads the host may hand the guest (`TUNSETOFFLOAD`).
pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;
pub const TUN_F_TSO_ECN: u32 = 0x08;

/// `struct virtio_net_hdr_v1`: what VERSION_1 drivers use.
pub const VNET_HDR_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("tap name `{0}`: 1 to 15 bytes, no `/`, NUL or whitespace")]
    Name(String),
    #[error("cannot open /dev/net/tun: {0}")]
    OpenTun(std::io::Error),
    #[error("tap `{name}`: TUNSETIFF: {source} (needs CAP_NET_ADMIN, or a tap this user owns)")]
    SetIff {
        name: String,
        source: std::io::Error,
    },
    #[error("tap `{name}`: TUNSETVNETHDRSZ: {source}")]
    VnetHdr {
        name: String,
        source: std::io::Error,
    },
}

/// `struct ifreq` with the flags member of its union.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: i16,
    _pad: [u8; 22],
}

pub struct Tap {
    file: File,
    name: String,
    /// False for a stand-in socket (tests): no tap ioctls.
    is_tap: bool,
}

impl Tap {
    /// Attaches to tap `name`, creating it if it does not exist (then it
    /// lives as long as this process holds it). Non-blocking.
    pub fn open(name: &str) -> Result<Tap, Error> {
        if name.is_empty()
            || name.len() >= libc::IFNAMSIZ
            || name
                .bytes()
                .any(|b| b == b'/' || b == 0 || b.is_ascii_whitespace())
        {
            return Err(Error::Name(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(Error::OpenTun)?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which IfReq
        // lays out (40 bytes); the fd is the tun device we just opened.
        let rc = unsafe { ioctl_with_mut_ref(&file, TUNSETIFF(), &mut req) };
        if rc < 0 {
            return Err(Error::SetIff {
                name: name.to_string(),
                source: std::io::Error::last_os_error(),
            });
        }
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer.
        let rc = unsafe { ioctl_with_ref(&file, TUNSETVNETHDRSZ(), &hdr_len) };
        if rc < 0 {
            return Err(Error::VnetHdr {
                name: name.to_string(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Tap {
            file,
            name: name.to_string(),
            is_tap: true,
        })
    }

    /// A message-preserving socket standing in for a tap, and its peer:
    /// the other end of the "wire" (for tests and benchmarks without
    /// CAP_NET_ADMIN).
    pub fn socket_pair() -> std::io::Result<(Tap, File)> {
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two fds into the array we pass.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        use std::os::fd::FromRawFd;
        // SAFETY: both fds are new and owned by nobody else.
        let (a, b) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
        Ok((
            Tap {
                file: a,
                name: "socketpair".into(),
                is_tap: false,
            },
            b,
        ))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Which offloads the host stack may use in frames towards the guest.
    pub fn set_offload(&self, flags: u32) -> std::io::Result<()> {
        if !self.is_tap {
            return Ok(());
        }
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        let rc = unsafe { ioctl_with_val(&self.file, TUNSETOFFLOAD(), flags.into()) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// One frame into `iov`; `Ok(None)` when none is waiting. One buffer
    /// (a small-buffer receive chain) is read with `read`: the kernel then
    /// imports no iovec, a fifth of a small frame's system call here.
    pub fn read_frame(&self, iov: &[libc::iovec]) -> std::io::Result<Option<usize>> {
        loop {
            // SAFETY: the caller's iovecs describe writable memory it keeps
            // mapped (guest buffers via `IoVecs`).
            let n = unsafe {
                match iov {
                    [one] => libc::read(self.fd(), one.iov_base, one.iov_len),
                    _ => libc::readv(self.fd(), iov.as_ptr(), iov.len() as i32),
                }
            };
            if n >= 0 {
                return Ok(Some(n as usize));
            }
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::Interrupted => continue,
                std::io::ErrorKind::WouldBlock => return Ok(None),
                _ => return Err(e),
            }
        }
    }

    /// One frame from `iov`; `Ok(false)` when the tap's queue is full. One
    /// buffer (Linux puts the header in front of a linear frame) is
    /// written with `write`, as `read_frame` reads.
    pub fn write_frame(&self, iov: &[libc::iovec]) -> std::io::Result<bool> {
        loop {
            // SAFETY: the caller's iovecs describe readable memory it keeps
            // mapped; the kernel only reads it.
            let n = unsafe {
                match iov {
                    [one] => libc::write(self.fd(), one.iov_base, one.iov_len),
                    _ => libc::writev(self.fd(), iov.as_ptr(), iov.len() as i32),
                }
            };
            if n >= 0 {
                return Ok(true);
            }
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::Interrupted => continue,
                std::io::ErrorKind::WouldBlock => return Ok(false),
                _ => return Err(e),
            }
        }
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_are_refused_before_any_syscall() {
        for bad in ["", "a/b", "sixteen-chars-xx", "a b"] {
            assert!(matches!(Tap::open(bad), Err(Error::Name(_))), "{bad:?}");
        }
    }

    #[test]
    fn ifreq_is_the_kernels_size() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
    }
}
