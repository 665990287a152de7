//! Disks on a host file system that Tsubame does not control: a FUSE file
//! system in this process, `ImageFs`, holding one image. It models stable
//! storage honestly (what a write puts in is lost at a power cut unless an
//! fsync came after it, as dm-flakey's drop_writes shows on a device), and
//! it can stall: an fsync that never returns.

mod common;

use common::{guest, scratch, tsubame_bin};
use fuser::{
    FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyData, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyWrite, Request,
};
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

const IMAGE_INO: u64 = 2;
const TTL: Duration = Duration::from_secs(1);

/// One file, `disk.img`: `data` is what reads see (the host's cache),
/// `durable` what a power cut leaves (updated by fsync only). Each fsync
/// is reported on `synced`; with `stall`, it then waits there.
struct ImageFs {
    data: Vec<u8>,
    durable: Arc<Mutex<Vec<u8>>>,
    synced: Sender<()>,
    stall: Option<Receiver<()>>,
}

/// Mounts an `ImageFs` holding `data` at `dir`/mnt.
fn mount(
    dir: &std::path::Path,
    data: Vec<u8>,
    stall: Option<Receiver<()>>,
) -> (fuser::BackgroundSession, Arc<Mutex<Vec<u8>>>, Receiver<()>) {
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let (synced, synced_rx) = mpsc::channel();
    let durable = Arc::new(Mutex::new(data.clone()));
    let fs = ImageFs {
        data,
        durable: durable.clone(),
        synced,
        stall,
    };
    let session = fuser::spawn_mount2(fs, &mnt, &[MountOption::FSName("imagefs".into())])
        .expect("mount the FUSE file system (needs /dev/fuse and root)");
    (session, durable, synced_rx)
}

fn image_data() -> Vec<u8> {
    let mut data = vec![0u8; 8 * 512];
    data[..8].copy_from_slice(b"HOSTDISK");
    data
}

fn attr(ino: u64, size: u64) -> FileAttr {
    let dir = ino == fuser::FUSE_ROOT_ID;
    FileAttr {
        ino,
        size,
        blocks: size.div_ceil(512),
        atime: SystemTime::UNIX_EPOCH,
        mtime: SystemTime::UNIX_EPOCH,
        ctime: SystemTime::UNIX_EPOCH,
        crtime: SystemTime::UNIX_EPOCH,
        kind: if dir {
            FileType::Directory
        } else {
            FileType::RegularFile
        },
        perm: if dir { 0o755 } else { 0o644 },
        nlink: if dir { 2 } else { 1 },
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 512,
        flags: 0,
    }
}

impl Filesystem for ImageFs {
    fn lookup(&mut self, _r: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        if parent == fuser::FUSE_ROOT_ID && name == "disk.img" {
            reply.entry(&TTL, &attr(IMAGE_INO, self.data.len() as u64), 0);
        } else {
            reply.error(libc::ENOENT);
        }
    }

    fn getattr(&mut self, _r: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match ino {
            fuser::FUSE_ROOT_ID => reply.attr(&TTL, &attr(ino, 0)),
            IMAGE_INO => reply.attr(&TTL, &attr(ino, self.data.len() as u64)),
            _ => reply.error(libc::ENOENT),
        }
    }

    fn open(&mut self, _r: &Request<'_>, _ino: u64, _flags: i32, reply: ReplyOpen) {
        reply.opened(0, 0);
    }

    fn read(
        &mut self,
        _r: &Request<'_>,
        _ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock: Option<u64>,
        reply: ReplyData,
    ) {
        let start = (offset as usize).min(self.data.len());
        let end = (start + size as usize).min(self.data.len());
        reply.data(&self.data[start..end]);
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &mut self,
        _r: &Request<'_>,
        _ino: u64,
        _fh: u64,
        offset: i64,
        data: &[u8],
        _wflags: u32,
        _flags: i32,
        _lock: Option<u64>,
        reply: ReplyWrite,
    ) {
        let start = offset as usize;
        if start + data.len() > self.data.len() {
            self.data.resize(start + data.len(), 0);
        }
        self.data[start..start + data.len()].copy_from_slice(data);
        reply.written(data.len() as u32);
    }

    fn flush(&mut self, _r: &Request<'_>, _ino: u64, _fh: u64, _lo: u64, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fsync(&mut self, _r: &Request<'_>, _ino: u64, _fh: u64, _ds: bool, reply: ReplyEmpty) {
        self.durable.lock().unwrap().clone_from(&self.data);
        let _ = self.synced.send(());
        if let Some(release) = &self.stall {
            // Stalled: nothing answers until the test lets go (or a minute).
            let _ = release.recv_timeout(Duration::from_secs(60));
        }
        reply.ok();
    }
}

#[test]
fn a_disk_stuck_in_fsync_stops_neither_the_vcpu_nor_sigterm() {
    let dir = scratch("stalled-disk");
    let (release, release_rx) = mpsc::channel();
    let (session, _, synced) = mount(&dir, image_data(), Some(release_rx));
    let img = dir.join("mnt/disk.img");
    let disk = format!("path={}", img.display());
    let kernel = guest("virtioblk_stall");
    let mut child = Command::new(tsubame_bin())
        .args(["run", "--kernel", kernel.to_str().unwrap(), "--disk", &disk])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tsubame");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    // stderr as it comes: the log's last line says when Tsubame finished.
    let (err_tx, err_chunks) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0
                || err_tx
                    .send(String::from_utf8_lossy(&buf[..n]).into())
                    .is_err()
            {
                break;
            }
        }
    });
    let (lines_tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        let mut all = String::new();
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.push_str(&String::from_utf8_lossy(&buf[..n]));
            let _ = lines_tx.send(all.clone());
        }
    });
    // All the guest printed once it says `what` (None: not in 30 s).
    let wait_for = |what: &str| -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(out) if out.contains(what) => return Some(out),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    };
    assert!(
        wait_for("flush posted").is_some(),
        "the guest never posted its flush"
    );
    synced
        .recv_timeout(Duration::from_secs(30))
        .expect("the flush never reached the file system");
    // The device thread is inside fdatasync now; the guest reads the
    // transport's InterruptStatus.
    stdin.write_all(b"g").unwrap();
    let vcpu_ran = wait_for("interrupt status").is_some();
    let sent = Instant::now();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    // Tsubame's part of the shutdown ends with its exit-status line. The
    // kernel then keeps the process until the fsync it is inside returns
    // (FUSE waits uninterruptibly for a request the daemon has read, as a
    // hard NFS mount does): no VMM can cut that short.
    let mut stderr = String::new();
    let finished = loop {
        let left = Duration::from_secs(10).saturating_sub(sent.elapsed());
        match err_chunks.recv_timeout(left) {
            Ok(chunk) => {
                stderr += &chunk;
                if stderr.contains("(exit status 143)") {
                    break Some(sent.elapsed());
                }
            }
            Err(_) => break None,
        }
    };
    let _ = release.send(());
    let reaped = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if reaped.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    drop(session);
    while let Ok(chunk) = err_chunks.try_recv() {
        stderr += &chunk;
    }
    assert!(
        vcpu_ran,
        "the vCPU froze reading InterruptStatus (no answer in 30 s): {stderr}"
    );
    let took = finished.unwrap_or_else(|| panic!("no exit 10 s after SIGTERM: {stderr}"));
    assert!(
        took < Duration::from_secs(1),
        "SIGTERM took {took:?}: {stderr}"
    );
    let status = status.expect("not reaped once the file system answered");
    assert_eq!(status.code(), Some(143), "{stderr}");
}

#[test]
fn a_flushed_write_is_on_stable_storage_when_the_vmm_is_killed() {
    let dir = scratch("durable-disk");
    let (session, durable, synced) = mount(&dir, image_data(), None);
    let disk = format!("path={}", dir.join("mnt/disk.img").display());
    let kernel = guest("virtioblk_hang");
    // The guest writes sector 1, flushes, says so, then waits to be killed.
    let r = common::run_and_signal(
        &["run", "--kernel", kernel.to_str().unwrap(), "--disk", &disk],
        None,
        "flush 0000000000000000",
        libc::SIGKILL,
    );
    drop(session);
    let flushes = synced.try_iter().count();
    let stable = durable.lock().unwrap().clone();
    assert!(
        stable[512..1024].chunks(8).all(|c| c == b"TSUBAME!"),
        "the guest's flushed sector is not on stable storage ({flushes} fsyncs reached it): {}",
        r.output()
    );
    assert_eq!(&stable[..8], b"HOSTDISK");
}
