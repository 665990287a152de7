//! End-to-end: virtio devices driven from inside the tiny guests
//! (tests/guests/asm/virtio*.S, on libvirtio.S), checked from the host.

mod common;

use common::{finish, guest, run, run_and_signal, scratch, spawn};
use std::time::Duration;

fn kernel(name: &str) -> String {
    guest(name).to_string_lossy().into_owned()
}

fn disk_image(name: &str) -> std::path::PathBuf {
    let img = scratch(name).join("disk.img");
    let mut data = vec![0u8; 8 * 512];
    data[..8].copy_from_slice(b"HOSTDISK");
    std::fs::write(&img, &data).unwrap();
    img
}

fn hex(v: u64) -> String {
    format!("{v:016x}")
}

#[test]
fn virtio_blk_guest_reads_writes_and_flushes_an_image() {
    // Both engines, under the default seccomp filters (a call the device
    // thread may not make ends the run with status 159).
    for engine in ["sync", "async"] {
        guest_reads_writes_and_flushes(engine);
    }
}

fn guest_reads_writes_and_flushes(engine: &str) {
    let img = disk_image(&format!("virtio-blk-{engine}"));
    let disk = format!("path={},id=guest-disk,engine={engine}", img.display());
    let r = run(&["run", "--kernel", &kernel("virtioblk"), "--disk", &disk]);
    assert_eq!(r.status, 0, "{engine}: {}", r.output());
    let ok = hex(0);
    let marker = hex(u64::from_le_bytes(*b"HOSTDISK"));
    let pattern = hex(u64::from_le_bytes(*b"TSUBAME!"));
    for want in [
        "virtio-blk found, queue ready".to_string(),
        format!("read0 {ok} {marker}"),
        format!("write1 {ok}"),
        format!("flush {ok}"),
        format!("read1 {ok} {pattern}"),
    ] {
        assert!(r.stdout.contains(&want), "missing {want}: {}", r.output());
    }
    let data = std::fs::read(&img).unwrap();
    assert_eq!(&data[..8], b"HOSTDISK");
    assert!(
        data[512..1024].chunks(8).all(|c| c == b"TSUBAME!"),
        "sector 1 on the host is not what the guest wrote"
    );
    assert!(data[1024..].iter().all(|&b| b == 0));
}

#[test]
fn virtio_blk_read_only_disk_refuses_the_guest_write() {
    let img = disk_image("virtio-blk-ro");
    let disk = format!("path={},readonly=on", img.display());
    let r = run(&["run", "--kernel", &kernel("virtioblk"), "--disk", &disk]);
    assert_eq!(r.status, 0, "{}", r.output());
    assert!(
        r.stdout.contains(&format!("write1 {}", hex(1))),
        "expected IOERR: {}",
        r.output()
    );
    let data = std::fs::read(&img).unwrap();
    assert!(
        data[512..].iter().all(|&b| b == 0),
        "read-only image changed"
    );
}

#[test]
fn virtio_blk_flushed_write_survives_kill_9() {
    let img = disk_image("virtio-blk-kill");
    let disk = format!("path={}", img.display());
    let r = run_and_signal(
        &[
            "run",
            "--kernel",
            &kernel("virtioblk_hang"),
            "--disk",
            &disk,
        ],
        None,
        "flush 0000000000000000",
        libc::SIGKILL,
    );
    assert_ne!(r.status, 0, "{}", r.output());
    let data = std::fs::read(&img).unwrap();
    assert!(
        data[512..1024].chunks(8).all(|c| c == b"TSUBAME!"),
        "the flushed sector is not in the image after kill -9: {}",
        r.output()
    );
}

#[test]
fn virtio_rng_guest_gets_host_entropy_in_a_two_descriptor_chain() {
    let r = run(&["run", "--kernel", &kernel("virtiorng"), "--rng"]);
    assert_eq!(r.status, 0, "{}", r.output());
    let line = r
        .stdout
        .lines()
        .find(|l| l.starts_with("entropy "))
        .unwrap_or_else(|| panic!("no entropy line: {}", r.output()));
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words.len(), 4, "{line}");
    assert_eq!(words[1], hex(64), "both 32-byte buffers filled: {line}");
    // 64 random bits are zero with probability 2^-64.
    assert_ne!(words[2], hex(0), "first buffer untouched: {line}");
    assert_ne!(words[3], hex(0), "second buffer untouched: {line}");
    assert_ne!(words[2], words[3]);
}

/// Runs `f` on a thread in a network namespace of its own, so the taps it
/// makes vanish with it and never touch the host's network.
fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: unshare(CLONE_NEWNET) changes only this thread's network
        // namespace; processes it spawns inherit it.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET): {} (the virtio-net test needs root, as in CI)",
            std::io::Error::last_os_error()
        );
        f()
    })
    .join()
    .unwrap()
}

fn ip(args: &[&str]) {
    let st = std::process::Command::new("ip")
        .args(args)
        .status()
        .expect("run `ip` (iproute2; .ci/run installs it)");
    assert!(st.success(), "ip {args:?} failed");
}

const ETHERTYPE: u16 = 0x88b5;

/// A raw socket on `ifname` for one EtherType: what the host sees of the
/// guest's wire, and how it sends frames to the guest.
struct PacketSocket {
    fd: std::os::fd::OwnedFd,
    ifindex: i32,
}

impl PacketSocket {
    fn open(ifname: &str) -> PacketSocket {
        use std::os::fd::FromRawFd;
        let proto = ETHERTYPE.to_be() as i32;
        // SAFETY: plain socket(2) call; the fd is owned below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto) };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: fd is new and ours.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let name = std::ffi::CString::new(ifname).unwrap();
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
        assert!(ifindex > 0, "no interface {ifname}");
        let s = PacketSocket { fd, ifindex };
        let addr = s.addr(&[0; 6]);
        // SAFETY: binding to a sockaddr_ll we built, with its size.
        let rc = unsafe {
            libc::bind(
                s.raw(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        let tv = libc::timeval {
            tv_sec: 30,
            tv_usec: 0,
        };
        // SAFETY: SO_RCVTIMEO takes a timeval, passed with its size.
        unsafe {
            libc::setsockopt(
                s.raw(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        s
    }

    fn raw(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.fd.as_raw_fd()
    }

    fn addr(&self, mac: &[u8; 6]) -> libc::sockaddr_ll {
        // SAFETY: sockaddr_ll is plain data; all-zero is valid.
        let mut a: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        a.sll_family = libc::AF_PACKET as u16;
        a.sll_protocol = ETHERTYPE.to_be();
        a.sll_ifindex = self.ifindex;
        a.sll_halen = 6;
        a.sll_addr[..6].copy_from_slice(mac);
        a
    }

    /// One frame, or None after the receive timeout.
    fn recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 2048];
        // SAFETY: recv into a buffer we own, with its length.
        let n = unsafe { libc::recv(self.raw(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        (n >= 0).then(|| buf[..n as usize].to_vec())
    }

    fn send(&self, frame: &[u8]) {
        let mut dst = [0u8; 6];
        dst.copy_from_slice(&frame[..6]);
        let addr = self.addr(&dst);
        // SAFETY: sendto from a slice we own, to a sockaddr_ll we built.
        let n = unsafe {
            libc::sendto(
                self.raw(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(
            n,
            frame.len() as isize,
            "send: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[test]
fn virtio_net_guest_frames_cross_a_real_tap_both_ways() {
    const GUEST_MAC: [u8; 6] = [0x0e, 0, 0, 0, 0, 0x42];
    const HOST_MAC: [u8; 6] = [0x0e, 0, 0, 0, 0, 0xfe];
    let (r, from_guest) = in_new_netns(|| {
        ip(&["tuntap", "add", "dev", "tsb0", "mode", "tap"]);
        ip(&["link", "set", "tsb0", "up"]);
        let sock = PacketSocket::open("tsb0");
        let child = spawn(
            &[
                "run",
                "--kernel",
                &kernel("virtionet"),
                "--net",
                "tap=tsb0,mac=0e:00:00:00:00:42",
            ],
            None,
        );
        let from_guest = sock.recv();
        if from_guest.is_some() {
            let mut reply = Vec::new();
            reply.extend_from_slice(&GUEST_MAC);
            reply.extend_from_slice(&HOST_MAC);
            reply.extend_from_slice(&ETHERTYPE.to_be_bytes());
            reply.extend_from_slice(b"HOST2GST from the host");
            sock.send(&reply);
        }
        let r = finish(child, Duration::from_secs(60), "virtio-net guest");
        (r, from_guest)
    });
    let frame = from_guest.unwrap_or_else(|| panic!("no frame from the guest: {}", r.output()));
    assert_eq!(r.status, 0, "{}", r.output());
    assert_eq!(&frame[..6], &[0xff; 6], "broadcast");
    assert_eq!(&frame[6..12], &GUEST_MAC, "source is the guest's MAC");
    assert_eq!(&frame[14..], b"GST2HOST from the guest");
    let mut mac = [0u8; 8];
    mac[..6].copy_from_slice(&GUEST_MAC);
    for want in [
        format!("virtio-net found, mac {}", hex(u64::from_le_bytes(mac))),
        "frame sent".to_string(),
        format!(
            "frame received {} {}",
            hex(12 + 14 + 22),
            hex(u64::from_le_bytes(*b"HOST2GST"))
        ),
    ] {
        assert!(r.stdout.contains(&want), "missing {want}: {}", r.output());
    }
}

/// Accepts one connection within 30 s.
fn accept_within(l: &std::os::unix::net::UnixListener) -> Option<std::os::unix::net::UnixStream> {
    l.set_nonblocking(true).unwrap();
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if let Ok((s, _)) = l.accept() {
            s.set_nonblocking(false).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

fn read_n(s: &mut impl std::io::Read, n: usize) -> String {
    let mut b = vec![0u8; n];
    match s.read_exact(&mut b) {
        Ok(()) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => format!("<read failed: {e}>"),
    }
}

#[test]
fn virtio_vsock_guest_and_host_connect_to_each_other_over_unix_sockets() {
    use std::io::{BufRead, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    let dir = scratch("vsock");
    let sock = dir.join("v.sock");
    let guest_side = UnixListener::bind(format!("{}_5000", sock.display())).unwrap();
    let vsock = format!("cid=42,socket={}", sock.display());
    let child = spawn(
        &["run", "--kernel", &kernel("virtiovsock"), "--vsock", &vsock],
        None,
    );
    // The guest connects to host port 5000 and says ping.
    let mut from_guest = String::new();
    if let Some(mut s) = accept_within(&guest_side) {
        from_guest = read_n(&mut s, 15);
        s.write_all(b"pong from host").unwrap();
    }
    // The host connects to guest port 6000; the guest echoes.
    let (mut ok_line, mut echo) = (String::new(), String::new());
    if let Ok(mut c) = UnixStream::connect(&sock) {
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        c.write_all(b"CONNECT 6000\n").unwrap();
        let mut r = std::io::BufReader::new(c.try_clone().unwrap());
        let _ = r.read_line(&mut ok_line);
        c.write_all(b"echo me").unwrap();
        echo = read_n(&mut r, 7);
    }
    let r = finish(child, Duration::from_secs(60), "virtio-vsock guest");
    assert_eq!(r.status, 0, "{}", r.output());
    assert_eq!(from_guest, "ping from guest", "{}", r.output());
    assert!(
        ok_line.starts_with("OK ") && ok_line.ends_with('\n'),
        "{ok_line:?}"
    );
    assert_eq!(echo, "echo me", "{}", r.output());
    for want in [
        format!("virtio-vsock found, cid {}", hex(42)),
        "connected to 5000".to_string(),
        format!("guest got {}", hex(u64::from_le_bytes(*b"pong fro"))),
        "echoed".to_string(),
        "vsock done".to_string(),
    ] {
        assert!(r.stdout.contains(&want), "missing {want}: {}", r.output());
    }
    assert!(!sock.exists(), "the socket is removed at exit");
}

/// Nothing Tsubame opens leaks into a program it (or a library it calls)
/// would exec: every fd past stdio is close-on-exec, eventfds included.
#[test]
fn every_fd_of_a_running_vmm_is_close_on_exec() {
    use common::api::{wait_for_socket, Vmm};
    let dir = scratch("cloexec");
    let img = disk_image("cloexec-disk");
    let disk = format!("path={}", img.display());
    let sock = dir.join("api.sock");
    let vsock = format!("cid=3,socket={}", dir.join("v.sock").display());
    // Fds this test process lets children inherit (cargo's jobserver…)
    // are not Tsubame's.
    let inherited = inheritable_fds("self");
    let vmm = Vmm::start(&[
        "run",
        "--kernel",
        &kernel("halt"),
        "--disk",
        &disk,
        "--rng",
        "--vsock",
        &vsock,
        "--api-sock",
        sock.to_str().unwrap(),
    ]);
    wait_for_socket(&sock);
    vmm.wait_for("halting", Duration::from_secs(30));
    let pid = vmm.child.id().to_string();
    let open: Vec<String> = inheritable_fds(&pid)
        .into_iter()
        .filter(|(fd, _)| *fd > 2 && !inherited.iter().any(|(i, _)| i == fd))
        .map(|(fd, target)| format!("{fd} -> {target}"))
        .collect();
    vmm.signal(libc::SIGTERM);
    let (code, _, _) = vmm.wait(Duration::from_secs(10));
    assert_eq!(code, 128 + libc::SIGTERM);
    assert!(open.is_empty(), "inheritable fds: {open:?}");
}

/// (fd, what it is) of every fd of process `pid` without close-on-exec.
fn inheritable_fds(pid: &str) -> Vec<(i32, String)> {
    let mut open = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).unwrap() {
        let entry = entry.unwrap();
        let fd: i32 = entry.file_name().to_string_lossy().parse().unwrap();
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .map(|f| u32::from_str_radix(f.trim(), 8).unwrap())
            .unwrap();
        let target = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap_or_default();
        if flags & libc::O_CLOEXEC as u32 == 0 {
            open.push((fd, target.display().to_string()));
        }
    }
    open
}

/// Starts `args` and waits until its stdout says `marker`; the VMM keeps
/// running.
fn start_until(args: &[&str], marker: &str) -> std::process::Child {
    use std::io::Read;
    let mut child = spawn(args, None);
    let mut out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 512];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
            let _ = tx.send(String::from_utf8_lossy(&all).into_owned());
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(s) if s.contains(marker) => return child,
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill();
                panic!("no '{marker}' from {args:?}");
            }
        }
    }
}

#[test]
fn two_vmms_cannot_write_one_image_but_readers_share_it() {
    let img = disk_image("virtio-blk-lock");
    let rw = format!("path={}", img.display());
    let ro = format!("path={},readonly=on", img.display());
    let (hang, once) = (kernel("virtioblk_hang"), kernel("virtioblk"));
    let mut writer = start_until(
        &["run", "--kernel", &hang, "--disk", &rw],
        "flush 0000000000000000",
    );
    for disk in [&rw, &ro] {
        let r = run(&["run", "--kernel", &once, "--disk", disk]);
        assert_eq!(r.status, 1, "{disk}: {}", r.output());
        assert!(
            r.stderr.contains("in use by another process"),
            "{disk}: {}",
            r.output()
        );
    }
    let _ = writer.kill();
    let _ = writer.wait();
    // The lock went with the process: readers now, side by side.
    let mut reader = start_until(&["run", "--kernel", &hang, "--disk", &ro], "flush ");
    let r = run(&["run", "--kernel", &once, "--disk", &ro]);
    assert_eq!(r.status, 0, "a second reader: {}", r.output());
    let w = run(&["run", "--kernel", &once, "--disk", &rw]);
    assert_eq!(w.status, 1, "a writer beside a reader: {}", w.output());
    let _ = reader.kill();
    let _ = reader.wait();
}

#[test]
fn a_block_device_is_a_disk_of_its_own_size() {
    let img = disk_image("virtio-blk-loop");
    let out = std::process::Command::new("losetup")
        .args(["--find", "--show"])
        .arg(&img)
        .output()
        .expect("losetup (util-linux) runs");
    assert!(
        out.status.success(),
        "losetup: {} (the loop-device test needs root, as in CI)",
        String::from_utf8_lossy(&out.stderr)
    );
    let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let disk = format!("path={dev}");
    let r = run(&["run", "--kernel", &kernel("virtioblk"), "--disk", &disk]);
    let _ = std::process::Command::new("losetup")
        .args(["--detach", &dev])
        .status();
    assert_eq!(r.status, 0, "{}", r.output());
    let marker = hex(u64::from_le_bytes(*b"HOSTDISK"));
    assert!(
        r.stdout.contains(&format!("read0 {} {marker}", hex(0))),
        "sector 0 of {dev} not read: {}",
        r.output()
    );
    let data = std::fs::read(&img).unwrap();
    assert!(data[512..1024].chunks(8).all(|c| c == b"TSUBAME!"));
}
