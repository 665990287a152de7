//! Helpers for end-to-end tests: run the `tsubame` binary as a child with a
//! deadline (a hang is a failure, never a stuck CI job), find test guests,
//! build initramfs images.
#![allow(dead_code)]

pub mod api;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

pub struct Run {
    /// Exit code, or 128+N when killed by signal N.
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    /// Everything printed, for assertion messages.
    pub fn output(&self) -> String {
        format!(
            "status {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }

    /// Lines Tsubame itself wrote as errors (`tsubame: ...`).
    pub fn error_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("tsubame: "))
            .collect()
    }
}

pub fn tsubame_bin() -> &'static str {
    env!("CARGO_BIN_EXE_tsubame")
}

pub fn guest(name: &str) -> PathBuf {
    tsubame_test_guests::path(name)
}

/// True on an emulation-only KVM host (guest kernel code is emulated).
pub fn host_is_emulated() -> bool {
    vmm::kvm::HostFacts::read(Path::new("/"))
        .kind()
        .is_emulated()
}

fn collect(mut r: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    })
}

fn wait(mut child: Child, deadline: Duration, what: &str) -> (i32, Duration) {
    use std::os::unix::process::ExitStatusExt;
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().expect("wait for tsubame") {
            let code = st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0));
            return (code, start.elapsed());
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {deadline:?}: a hang");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `tsubame ARGS` with `stdin` as its input (or /dev/null).
pub fn spawn(args: &[&str], stdin: Option<Vec<u8>>) -> Child {
    spawn_env(args, stdin, &[])
}

/// `spawn` with extra environment variables.
pub fn spawn_env(args: &[&str], stdin: Option<Vec<u8>>, env: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(tsubame_bin());
    cmd.envs(env.iter().copied());
    cmd.args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let mut child = cmd.spawn().expect("spawn tsubame");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        thread::spawn(move || {
            let _ = pipe.write_all(&input);
            // Keep the pipe open a little: EOF is not part of the input.
            thread::sleep(Duration::from_secs(2));
        });
    }
    child
}

/// Runs `tsubame ARGS` to completion within `deadline`.
pub fn run_with(args: &[&str], stdin: Option<Vec<u8>>, deadline: Duration) -> Run {
    let child = spawn(args, stdin);
    finish(child, deadline, &args.join(" "))
}

/// Collects a spawned tsubame's output and waits for it to end within
/// `deadline`.
pub fn finish(mut child: Child, deadline: Duration, what: &str) -> Run {
    let out = collect(child.stdout.take().unwrap());
    let err = collect(child.stderr.take().unwrap());
    let (status, elapsed) = wait(child, deadline, what);
    Run {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
        elapsed,
    }
}

pub fn run(args: &[&str]) -> Run {
    run_with(args, None, Duration::from_secs(60))
}

/// Starts `tsubame ARGS`, waits until stdout contains `marker`, sends
/// `signal`, and returns the finished run.
pub fn run_and_signal(args: &[&str], stdin: Option<Vec<u8>>, marker: &str, signal: i32) -> Run {
    let mut child = spawn(args, stdin);
    let pid = child.id() as i32;
    let mut stdout = child.stdout.take().unwrap();
    let err = collect(child.stderr.take().unwrap());
    let mut seen = Vec::new();
    let start = Instant::now();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains(marker) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "never printed {marker}"
        );
        match stdout.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    // Let the guest settle into its loop, then signal.
    thread::sleep(Duration::from_millis(200));
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(pid, signal) };
    let rest = collect(stdout);
    let (status, elapsed) = wait(child, Duration::from_secs(30), "signalled tsubame");
    Run {
        status,
        stdout: String::from_utf8_lossy(&seen).into_owned() + &rest.join().unwrap(),
        stderr: err.join().unwrap(),
        elapsed,
    }
}

/// A unique scratch directory under the system temp dir.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tsubame-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A `newc` cpio archive, the format of Linux's initramfs.
#[derive(Default)]
pub struct Cpio {
    data: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, body: &[u8]) {
        self.ino += 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            body.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        self.data.extend(header.as_bytes());
        self.data.extend(name.as_bytes());
        self.data.push(0);
        while !self.data.len().is_multiple_of(4) {
            self.data.push(0);
        }
        self.data.extend(body);
        while !self.data.len().is_multiple_of(4) {
            self.data.push(0);
        }
    }

    pub fn dir(&mut self, name: &str) -> &mut Self {
        self.entry(name, 0o040755, &[]);
        self
    }

    pub fn file(&mut self, name: &str, mode: u32, body: &[u8]) -> &mut Self {
        self.entry(name, 0o100000 | mode, body);
        self
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.data
    }
}

/// Debian's stock cloud kernel, as `.ci/run` installs it.
pub fn debian_kernel() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/boot")
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    let n = p.file_name().unwrap().to_string_lossy();
                    n.starts_with("vmlinuz-") && n.ends_with("-cloud-amd64")
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().expect(
        "no /boot/vmlinuz-*-cloud-amd64: install Debian's linux-image-cloud-amd64 (.ci/run does)",
    )
}

/// `tsubame run` of Debian's kernel with `initrd`, `cpus` vCPUs and
/// 128 MiB, then `extra` arguments.
pub fn boot_debian(initrd: &Path, cpus: &str, extra: &[&str], deadline: Duration) -> Run {
    let kernel = debian_kernel();
    let mut args = vec![
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--cpus",
        cpus,
        "--memory",
        "128",
    ];
    args.extend_from_slice(extra);
    run_with(&args, None, deadline)
}

/// The modules directory of the kernel `debian_kernel()` found.
pub fn debian_modules(kernel: &Path) -> PathBuf {
    let name = kernel.file_name().unwrap().to_string_lossy();
    let version = name.trim_start_matches("vmlinuz-");
    Path::new("/lib/modules").join(version).join("kernel")
}

/// Debian's static busybox, as `.ci/run` installs it.
pub fn busybox() -> Vec<u8> {
    std::fs::read("/bin/busybox")
        .expect("no /bin/busybox: install Debian's busybox-static (.ci/run does)")
}

/// A busybox /init that runs `body`. No command is ever run again: on
/// emulation-only hosts static busybox used to fault now and then in
/// glibc's start-up (issue 10), and tests retried it; the fault is gone
/// (`linux_process_starts.rs` counts).
pub fn init_script(body: &str) -> String {
    ["#!/bin/busybox sh\n", body].concat()
}

/// A busybox initramfs whose /init is `script`.
pub fn busybox_initramfs(dir: &Path, script: &str) -> PathBuf {
    initramfs_with(dir, script, &[])
}

/// The same, with extra executables: (path in the image, file on the host).
pub fn initramfs_with(dir: &Path, script: &str, extra: &[(&str, PathBuf)]) -> PathBuf {
    let mut c = Cpio::default();
    c.dir("bin")
        .dir("dev")
        .dir("lib")
        .dir("mnt")
        .dir("proc")
        .dir("sys")
        .dir("tmp")
        .file("bin/busybox", 0o755, &busybox())
        .file("init", 0o755, script.as_bytes());
    for (name, host) in extra {
        c.file(name, 0o755, &std::fs::read(host).unwrap());
    }
    let path = dir.join("initramfs.cpio");
    std::fs::write(&path, c.finish()).unwrap();
    path
}
