//! Opening a disk image: a regular file or a block device, locked the way
//! Cloud Hypervisor and QEMU lock images, with open-file-description locks
//! on the whole file: a writer holds a write lock, so a second writer or a
//! reader of an image in use is refused; read-only users share a read lock.
//! OFD locks belong to the open file, not the process: they go with it when
//! Tsubame exits or the disk is closed, and are not inherited across exec.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

vmm_sys_util::ioctl_ior_nr!(BLKGETSIZE64, 0x12, 114, u64);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("disk image {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "disk image {path}: in use by another process (locked {held}); \
         two writers, or a writer and a reader, cannot share an image"
    )]
    Locked { path: String, held: &'static str },
    #[error("disk image {path}: cannot lock it: {source}")]
    Lock {
        path: String,
        source: std::io::Error,
    },
    #[error("disk image {path}: cannot read its size: {source}")]
    Size {
        path: String,
        source: std::io::Error,
    },
}

/// An open, locked image and its size in bytes.
pub struct Image {
    pub file: File,
    pub size: u64,
}

pub fn open(path: &Path, read_only: bool) -> Result<Image, Error> {
    let name = || path.display().to_string();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(path)
        .map_err(|source| Error::Open {
            path: name(),
            source,
        })?;
    lock(&file, read_only).map_err(|e| match e {
        LockError::Held(held) => Error::Locked { path: name(), held },
        LockError::Io(source) => Error::Lock {
            path: name(),
            source,
        },
    })?;
    let size = size(&file).map_err(|source| Error::Size {
        path: name(),
        source,
    })?;
    Ok(Image { file, size })
}

enum LockError {
    /// Another open file holds a conflicting lock ("for writing"/"for reading").
    Held(&'static str),
    Io(std::io::Error),
}

fn flock(kind: libc::c_int) -> libc::flock {
    libc::flock {
        l_type: kind as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0, // to the end, however far it grows
        l_pid: 0, // OFD locks require 0
    }
}

fn lock(file: &File, read_only: bool) -> Result<(), LockError> {
    let mut want = flock(if read_only {
        libc::F_RDLCK
    } else {
        libc::F_WRLCK
    });
    // SAFETY: fcntl(F_OFD_SETLK) on an fd we own, with a valid flock that
    // lives across the call.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &mut want) };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if !matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) {
        return Err(LockError::Io(e));
    }
    // Who holds it, for the message.
    let mut probe = flock(libc::F_WRLCK);
    // SAFETY: as above, F_OFD_GETLK only fills `probe`.
    let held = if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut probe) } == 0
        && probe.l_type == libc::F_RDLCK as libc::c_short
    {
        "for reading"
    } else {
        "for writing"
    };
    Err(LockError::Held(held))
}

/// A regular file's length, or a block device's size (`BLKGETSIZE64`: its
/// inode says 0).
fn size(file: &File) -> std::io::Result<u64> {
    let m = file.metadata()?;
    if !m.file_type().is_block_device() {
        return Ok(m.len());
    }
    let mut bytes = 0u64;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which is
    // valid for the call.
    let r = unsafe { vmm_sys_util::ioctl::ioctl_with_mut_ref(file, BLKGETSIZE64(), &mut bytes) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(name: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("tsubame-image-{}-{name}", std::process::id()));
        std::fs::write(&p, vec![0u8; 4096]).unwrap();
        p
    }

    #[test]
    fn two_writers_are_refused_and_readers_share() {
        let p = image("locks");
        let w = open(&p, false).unwrap();
        assert_eq!(w.size, 4096);
        let second = open(&p, false).err().expect("a second writer");
        assert!(
            matches!(
                second,
                Error::Locked {
                    held: "for writing",
                    ..
                }
            ),
            "{second}"
        );
        assert!(second.to_string().contains("in use by another process"));
        assert!(
            matches!(open(&p, true), Err(Error::Locked { .. })),
            "reader of a written image"
        );
        drop(w);
        let r1 = open(&p, true).unwrap();
        let _r2 = open(&p, true).expect("readers share");
        let writer = open(&p, false).err().expect("a writer beside readers");
        assert!(
            matches!(
                writer,
                Error::Locked {
                    held: "for reading",
                    ..
                }
            ),
            "{writer}"
        );
        drop(r1);
        let _ = std::fs::remove_file(&p);
    }
}
