//! The synchronous engine: a request's data moves between the image and
//! guest memory with pread/pwrite (preadv/pwritev for several buffers),
//! straight into the mapped guest buffers, on the device's thread.

use super::super::iov::IoVecs;
use super::super::ram::HostRam;
use super::Fault;
use std::fs::File;
use std::os::unix::fs::FileExt;

/// preadv (`write == false`: file into guest memory) or pwritev of the
/// whole of `segs` at `offset`, resuming after short transfers.
pub(super) fn transfer(
    file: &File,
    ram: &HostRam,
    segs: &[(u64, usize)],
    offset: u64,
    write: bool,
) -> Result<(), Fault> {
    use std::os::fd::AsRawFd;
    if let [(addr, len)] = segs {
        return transfer_one(file, ram, *addr, *len, offset, write);
    }
    let iov = match write {
        true => IoVecs::new(ram, segs),
        false => IoVecs::writable(ram, segs),
    };
    let mut iov = iov.ok_or(Fault::Io)?;
    let mut done = 0usize;
    while !iov.is_empty() {
        let at = i64::try_from(offset + done as u64).map_err(|_| Fault::Io)?;
        let v = iov.as_slice();
        // SAFETY: every iovec points into guest memory that `iov` keeps
        // mapped and bounds-checked; the kernel touches only those bytes.
        let n = unsafe {
            match write {
                true => libc::pwritev(file.as_raw_fd(), v.as_ptr(), v.len() as i32, at),
                false => libc::preadv(file.as_raw_fd(), v.as_ptr(), v.len() as i32, at),
            }
        };
        let Some(n) = progress(n)? else {
            continue;
        };
        done += n;
        iov.advance(n);
    }
    Ok(())
}

/// What a `pread`/`pwrite` returned `n` means for a transfer: bytes
/// moved, `None` to retry (interrupted), or a failure (an error, or the
/// end of the file inside the disk's size).
pub(super) fn progress(n: isize) -> Result<Option<usize>, Fault> {
    match n {
        n if n > 0 => Ok(Some(n as usize)),
        0 => Err(Fault::Io),
        _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => Ok(None),
        _ => Err(Fault::Io),
    }
}

/// `transfer` of one buffer (the usual request): the guest range mapped
/// once and `pread`/`pwrite` straight into it, without the iovec list a
/// chain of several needs (a tenth of the device's own time per 4 KiB
/// read went to building and advancing it).
fn transfer_one(
    file: &File,
    ram: &HostRam,
    addr: u64,
    len: usize,
    offset: u64,
    write: bool,
) -> Result<(), Fault> {
    use std::os::fd::AsRawFd;
    if len == 0 {
        return Ok(());
    }
    let base = match write {
        true => ram.host_ptr(addr, len),
        false => ram.host_ptr_for_write(addr, len),
    }
    .ok_or(Fault::Io)?;
    let fd = file.as_raw_fd();
    let mut done = 0usize;
    while done < len {
        let at = i64::try_from(offset + done as u64).map_err(|_| Fault::Io)?;
        // SAFETY: [base, base + len) is guest memory that `ram` keeps
        // mapped and checked (host_ptr); the kernel touches only the
        // len - done bytes from base + done.
        let n = unsafe {
            let p = base.add(done).cast();
            match write {
                true => libc::pwrite(fd, p, len - done, at),
                false => libc::pread(fd, p, len - done, at),
            }
        };
        let Some(n) = progress(n)? else {
            continue;
        };
        done += n;
    }
    Ok(())
}

/// What the page cache alone gave a read.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Cached {
    /// Every byte.
    All,
    /// Not every byte (the rest needs the disk, which was asked for it),
    /// or the read failed: whatever was read is read again.
    Not,
    /// The file system takes no `RWF_NOWAIT` reads.
    Unsupported,
}

/// Reads `segs` at `offset` from the page cache without waiting for the
/// disk (`preadv2` with `RWF_NOWAIT`).
pub(super) fn read_cached(
    file: &File,
    ram: &HostRam,
    segs: &[(u64, usize)],
    offset: u64,
) -> Cached {
    use std::os::fd::AsRawFd;
    let (Some(iov), Ok(at)) = (IoVecs::writable(ram, segs), i64::try_from(offset)) else {
        return Cached::Not;
    };
    let v = iov.as_slice();
    let want: usize = v.iter().map(|v| v.iov_len).sum();
    // SAFETY: every iovec points into guest memory that `iov` keeps
    // mapped and bounds-checked; the kernel writes only those bytes.
    let n = unsafe {
        libc::preadv2(
            file.as_raw_fd(),
            v.as_ptr(),
            v.len() as i32,
            at,
            libc::RWF_NOWAIT,
        )
    };
    match n {
        n if want > 0 && n == want as isize => Cached::All,
        n if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EOPNOTSUPP) => {
            Cached::Unsupported
        }
        _ => Cached::Not,
    }
}

/// Discard punches a hole (the image stays the same size); write-zeroes
/// must read back as zeros, which a punched hole also guarantees.
pub(super) fn punch_or_zero(
    file: &File,
    offset: u64,
    len: u64,
    zeroes: bool,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    if len == 0 {
        return Ok(());
    }
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: fallocate on a file descriptor we own, with a checked range;
    // it touches no memory of ours.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset as i64, len as i64) };
    if rc == 0 {
        return Ok(());
    }
    if !zeroes {
        // Discard is a hint: a file system that cannot punch holes may ignore it.
        return Ok(());
    }
    let zero = vec![0u8; len as usize];
    file.write_all_at(&zero, offset)
}
