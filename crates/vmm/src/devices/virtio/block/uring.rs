//! The batched engine: the reads of one turn's chains go to the kernel
//! together through an io_uring, one `io_uring_enter` for the batch
//! instead of a `pread` each, and the turn waits for all of them before
//! it answers the driver, so nothing is in flight between turns (pause,
//! snapshot and stop see an idle device, as with the synchronous engine).
//! Reads that miss the page cache run side by side instead of one after
//! another. Which reads come here is `route`'s choice: those the page
//! cache could not answer at once, or all of them where the file system
//! cannot say.
//!
//! The ring can do nothing but read: it is restricted before it is
//! enabled to READ and READV with no SQE flags, which the device thread's
//! seccomp filter allows as system calls anyway, so a compromised device
//! thread gains nothing through it (seccomp does not see what a ring
//! does). The image is not registered as a fixed file: a
//! registered file stays open, and locked, until the kernel's deferred
//! teardown of the ring, after Tsubame has closed it or even exited.

use super::super::ram::HostRam;
use io_uring::register::Restriction;
use io_uring::{opcode, squeue, types, IoUring};
use smallvec::SmallVec;
use std::fs::File;
use std::os::fd::AsRawFd;

/// An op's result before the kernel answered (the ring failed first).
pub(super) const NOT_DONE: i32 = i32::MIN;

/// One read of a batch: the file into guest memory.
pub(super) struct Op {
    /// The guest buffers, in order (`(address, length)`).
    pub segs: SmallVec<[(u64, usize); 4]>,
    pub offset: u64,
    /// What the kernel answered: bytes moved or `-errno` (`-EFAULT` for a
    /// buffer outside guest RAM, which is never submitted), or `NOT_DONE`.
    pub result: i32,
    /// The op's iovecs in `Uring::iovs`: (first, count).
    iov: (usize, usize),
}

impl Op {
    pub fn read(segs: &[(u64, usize)], offset: u64) -> Op {
        Op {
            segs: segs.iter().copied().filter(|s| s.1 > 0).collect(),
            offset,
            result: NOT_DONE,
            iov: (0, 0),
        }
    }

    /// A read already done (`len` bytes, from the page cache), kept in
    /// its place among the batch's so that it is answered in order
    /// without making the batch complete early.
    pub fn done(segs: &[(u64, usize)], offset: u64, len: i32) -> Op {
        Op {
            result: len,
            ..Op::read(segs, offset)
        }
    }
}

/// How many times in a row `io_uring_enter` may find the kernel short of
/// memory before the ring counts as failed.
const MAX_SHORTAGES: u32 = 1000;

pub(super) struct Uring {
    ring: IoUring,
    /// The image's descriptor; the device owns the file and outlives the
    /// ring (a field of the same device).
    fd: std::os::fd::RawFd,
    /// Every op's iovecs for the batch, laid out before any is submitted
    /// (the kernel reads them while the op runs: they must not move).
    iovs: Vec<libc::iovec>,
}

// SAFETY: the iovecs are addresses in guest memory, which every thread
// may use (a HostRam's are too); they are used only inside `run`, and the
// vector is cleared before it is filled again.
unsafe impl Send for Uring {}

impl Uring {
    /// A ring of `entries` for `file`.
    pub fn new(file: &File, entries: u32) -> std::io::Result<Uring> {
        if crate::faults::armed(crate::faults::NO_IO_URING) {
            return Err(std::io::Error::from_raw_os_error(libc::EPERM));
        }
        let ring = IoUring::builder()
            .setup_r_disabled()
            .setup_clamp()
            .build(entries)?;
        let submitter = ring.submitter();
        submitter.register_restrictions(&mut [
            Restriction::sqe_op(opcode::Read::CODE),
            Restriction::sqe_op(opcode::Readv::CODE),
            Restriction::sqe_flags_allowed(0),
        ])?;
        submitter.register_enable_rings()?;
        Ok(Uring {
            ring,
            fd: file.as_raw_fd(),
            iovs: Vec::new(),
        })
    }

    /// Runs every op not done yet (`Op::done` ones are) and sets its
    /// `result`; returns when all are done. An error means the ring itself
    /// failed (not an op): the ops without a completion keep `NOT_DONE`.
    pub fn run(&mut self, ram: &HostRam, ops: &mut [Op]) -> std::io::Result<()> {
        self.iovs.clear();
        for op in ops.iter_mut() {
            let first = self.iovs.len();
            op.iov = (first, 0);
            if op.result != NOT_DONE {
                // Done before the batch (`Op::done`).
                continue;
            }
            for &(addr, len) in &op.segs {
                // The kernel writes guest memory behind vm-memory's back:
                // marked dirty here, as the synchronous engine does.
                let Some(p) = ram.host_ptr_for_write(addr, len) else {
                    op.result = -libc::EFAULT;
                    break;
                };
                self.iovs.push(libc::iovec {
                    iov_base: p.cast(),
                    iov_len: len,
                });
            }
            op.iov = (first, self.iovs.len() - first);
        }
        let mut in_flight = 0usize;
        for i in 0..ops.len() {
            if ops[i].result != NOT_DONE || ops[i].iov.1 == 0 {
                continue;
            }
            let sqe = self.entry(&ops[i]).user_data(i as u64);
            loop {
                // SAFETY: the buffers are guest memory, mapped for as long
                // as `ram` borrows it, and the iovecs are in `self.iovs`,
                // untouched until every op has completed (below).
                if unsafe { self.ring.submission().push(&sqe) }.is_ok() {
                    break;
                }
                // The submission queue is full: hand it to the kernel.
                self.enter(0)?;
                self.reap(ops, &mut in_flight);
            }
            in_flight += 1;
        }
        while in_flight > 0 {
            self.enter(1)?;
            self.reap(ops, &mut in_flight);
        }
        Ok(())
    }

    fn entry(&self, op: &Op) -> squeue::Entry {
        let fd = types::Fd(self.fd);
        let (first, count) = op.iov;
        if count == 1 {
            let v = self.iovs[first];
            let (p, n) = (v.iov_base.cast::<u8>(), v.iov_len as u32);
            return opcode::Read::new(fd, p, n).offset(op.offset).build();
        }
        let v = self.iovs[first..].as_ptr();
        opcode::Readv::new(fd, v, count as u32)
            .offset(op.offset)
            .build()
    }

    /// Submits what is queued and waits for `want` completions; a signal
    /// or a momentary shortage of kernel memory is retried.
    fn enter(&mut self, want: usize) -> std::io::Result<()> {
        let mut shortages = 0;
        loop {
            match self.ring.submit_and_wait(want) {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e)
                    if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EBUSY))
                        && shortages < MAX_SHORTAGES =>
                {
                    shortages += 1;
                    std::thread::yield_now();
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn reap(&mut self, ops: &mut [Op], in_flight: &mut usize) {
        for cqe in self.ring.completion() {
            if let Some(op) = ops.get_mut(cqe.user_data() as usize) {
                op.result = cqe.result();
                *in_flight = in_flight.saturating_sub(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The restrictions hold: a write, a read with a flag, a no-op and an
    /// open are refused before they run; a plain read works.
    #[test]
    fn the_ring_refuses_anything_but_reads() {
        let path = std::env::temp_dir().join(format!("tsubame-uring-{}", std::process::id()));
        std::fs::write(&path, [7u8; 64]).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut u = Uring::new(&file, 8).unwrap();
        let fd = types::Fd(file.as_raw_fd());
        let mut buf = [0u8; 16];
        let refused = [
            opcode::Write::new(fd, buf.as_ptr(), 16).build(),
            opcode::Read::new(fd, buf.as_mut_ptr(), 16)
                .build()
                .flags(squeue::Flags::ASYNC),
            opcode::Nop::new().build(),
            opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), c"/etc/hostname".as_ptr()).build(),
        ];
        let ok = opcode::Read::new(fd, buf.as_mut_ptr(), 16).build();
        for (sqe, want) in refused
            .iter()
            .map(|e| (e, -libc::EACCES))
            .chain([(&ok, 16)])
        {
            // SAFETY: `buf` and the path outlive the wait below.
            unsafe { u.ring.submission().push(sqe).unwrap() };
            u.ring.submit_and_wait(1).unwrap();
            let cqe = u.ring.completion().next().unwrap();
            assert_eq!(cqe.result(), want, "{sqe:?}");
        }
        assert_eq!(buf, [7u8; 16]);
        assert_eq!(std::fs::read(&path).unwrap(), [7u8; 64], "nothing written");
        std::fs::remove_file(&path).unwrap();
    }
}
