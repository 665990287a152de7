//! `tsubame jail`: the VMM boots a guest as an unprivileged user, in a
//! chroot that holds only what it was handed, in new mount and PID
//! namespaces, inside a cgroup with the given limits. What the jailed
//! VMM can open is shown with the test-only trigger
//! `TSUBAME_TEST_FAULT=open-vmm:PATH` (test-hooks builds keep that one
//! variable through the jailer's cleared environment).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::api::{curl, Vmm};
use common::{guest, scratch, spawn_env};

const UID: u32 = 54321;

/// The cgroup version whose memory and cpu controllers this host offers,
/// and the limit files to set for it.
fn cgroup_plan() -> (&'static str, [(&'static str, &'static str); 2]) {
    let v2 = std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some("cgroup2"))
        .and_then(|l| l.split_whitespace().nth(1).map(PathBuf::from))
        .map(|m| std::fs::read_to_string(m.join("cgroup.controllers")).unwrap_or_default())
        .unwrap_or_default();
    let words: Vec<&str> = v2.split_whitespace().collect();
    if words.contains(&"memory") && words.contains(&"cpu") {
        (
            "2",
            [("memory.max", "268435456"), ("cpu.max", "50000 100000")],
        )
    } else {
        (
            "1",
            [
                ("memory.limit_in_bytes", "268435456"),
                ("cpu.cfs_quota_us", "50000"),
            ],
        )
    }
}

/// Where the host mounts the hierarchy holding `file`'s controller.
fn cgroup_dir(version: &str, file: &str) -> PathBuf {
    let controller = file.split('.').next().unwrap();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let line = mounts
        .lines()
        .find(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if version == "2" {
                f[2] == "cgroup2"
            } else {
                f[2] == "cgroup" && f[3].split(',').any(|o| o == controller)
            }
        })
        .unwrap();
    PathBuf::from(line.split_whitespace().nth(1).unwrap())
}

fn status_field(pid: u32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

/// The jailer's one child: the VMM, PID 1 of its namespace.
fn vmm_pid(jailer: u32) -> u32 {
    let children = std::fs::read_to_string(format!("/proc/{jailer}/task/{jailer}/children"))
        .unwrap_or_default();
    children
        .split_whitespace()
        .next()
        .unwrap_or("0")
        .parse()
        .unwrap()
}

#[test]
fn a_jailed_vmm_boots_unprivileged_sees_only_its_jail_and_is_limited() {
    let dir = scratch("jail");
    let base = dir.join("jails");
    let halt = guest("halt");
    let (version, limits) = cgroup_plan();
    let id = format!("test-{}", std::process::id());
    let mut args: Vec<String> = [
        "jail",
        "--id",
        &id,
        "--uid",
        &UID.to_string(),
        "--gid",
        &UID.to_string(),
        "--chroot-base-dir",
        base.to_str().unwrap(),
        "--file",
        halt.to_str().unwrap(),
        "--cgroup-version",
        version,
        "--resource-limit",
        "no-file=512",
        "--new-pid-ns",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (f, v) in limits {
        args.extend(["--cgroup".to_string(), format!("{f}={v}")]);
    }
    // The VMM's own arguments, with paths as the jail sees them.
    // Landlock off: what it cannot reach is the chroot's doing alone.
    args.extend(
        [
            "--",
            "--landlock",
            "off",
            "run",
            "--kernel",
            "/halt",
            "--api-sock",
            "/api.sock",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = spawn_env(
        &argv,
        None,
        &[("TSUBAME_TEST_FAULT", "open-vmm:/etc/shadow")],
    );
    let vmm = Vmm::adopt(child);
    let root = base.join("tsubame").join(&id).join("root");
    let sock = root.join("api.sock");
    vmm.wait_for("halting for ever", Duration::from_secs(30));
    let (code, body) = curl(&sock, "GET", "/", None);
    assert_eq!(code, 200, "the jailed VMM answers its API: {body}");

    let pid = vmm_pid(vmm.child.id());
    assert_ne!(pid, 0, "no VMM under the jailer");
    let uid = status_field(pid, "Uid:");
    assert_eq!(
        uid,
        format!("{UID}\t{UID}\t{UID}\t{UID}"),
        "runs as the jail's user"
    );
    assert!(
        status_field(pid, "CapEff:").chars().all(|c| c == '0'),
        "no capabilities left"
    );
    let nspid = status_field(pid, "NSpid:");
    assert!(
        nspid.ends_with("\t1"),
        "PID 1 of its own namespace: {nspid:?}"
    );
    // Its root is the jail's directory (the same inode; the link itself
    // reads "/" from outside its mount namespace).
    use std::os::unix::fs::MetadataExt;
    let (seen, jail) = (
        std::fs::metadata(format!("/proc/{pid}/root/")).unwrap(),
        std::fs::metadata(&root).unwrap(),
    );
    assert_eq!((seen.dev(), seen.ino()), (jail.dev(), jail.ino()));
    let limits_text = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    assert!(
        limits_text
            .lines()
            .any(|l| l.starts_with("Max open files") && l.contains(" 512 ")),
        "{limits_text}"
    );
    // Only what it was handed is in its root.
    let mut inside: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    // (lib, lib64: the C library of a dynamically linked binary.)
    inside.retain(|n| !n.starts_with("lib"));
    inside.sort();
    assert_eq!(
        inside,
        ["api.sock", "dev", "halt", "proc", "sys", "tsubame"]
    );

    for (file, value) in limits {
        let d = cgroup_dir(version, file).join("tsubame").join(&id);
        let got = std::fs::read_to_string(d.join(file)).unwrap();
        assert_eq!(got.trim(), value, "{}", d.display());
        let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap();
        assert!(
            procs.lines().any(|p| p == pid.to_string()),
            "VMM not in {}: {procs}",
            d.display()
        );
    }

    vmm.signal(libc::SIGTERM);
    let (code, _, err) = vmm.wait(Duration::from_secs(10));
    assert_eq!(code, 143, "the VMM's status, passed on: {err}");
    assert!(
        err.contains("test open /etc/shadow: No such file or directory"),
        "the host's /etc/shadow is not in the jail: {err}"
    );
    for (file, _) in limits {
        let d = cgroup_dir(version, file).join("tsubame").join(&id);
        assert!(!d.exists(), "{} left behind", d.display());
    }
    // The jail's files are left for the caller to inspect or reuse.
    assert!(root.join("halt").exists());
    let _ = std::fs::remove_dir_all(Path::new(&base));
}

#[test]
fn bad_jail_arguments_are_refused_with_the_reason() {
    let dir = scratch("jail-bad");
    let base = dir.to_str().unwrap();
    for (args, want) in [
        (vec!["--id", "../up", "--uid", "5", "--gid", "5"], "--id"),
        (vec!["--id", "a", "--uid", "0", "--gid", "5"], "root"),
        (
            vec![
                "--id", "a", "--uid", "5", "--gid", "5", "--file", "/no/such",
            ],
            "/no/such",
        ),
        (
            vec![
                "--id", "a", "--uid", "5", "--gid", "5", "--cgroup", "memory",
            ],
            "FILE=VALUE",
        ),
        (
            vec![
                "--id",
                "a",
                "--uid",
                "5",
                "--gid",
                "5",
                "--resource-limit",
                "cores=1",
            ],
            "cores",
        ),
    ] {
        let mut argv = vec!["jail", "--chroot-base-dir", base];
        argv.extend(args);
        let r = common::finish(spawn_env(&argv, None, &[]), Duration::from_secs(10), "jail");
        assert_ne!(r.status, 0, "{argv:?}");
        assert!(r.stderr.contains(want), "{argv:?}: {}", r.stderr);
    }
}
