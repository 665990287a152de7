//! `tsubame bench confine`: what the three confinement layers cost a tiny
//! guest's whole run (spawn to exit) and the VMM's peak RSS: none, seccomp
//! and Landlock (the default), and the same inside `tsubame jail` (as
//! root only). Runs are interleaved; figures are medians.

use std::path::Path;

use super::{child_run, hello_code, median, number_after, write_guest, BenchArgs};

/// One way of starting the guest, and its (wall ms, peak RSS KiB) runs.
struct Variant<'a> {
    name: &'static str,
    args: &'a [&'a str],
    samples: Vec<(f64, f64)>,
}

impl<'a> Variant<'a> {
    fn new(name: &'static str, args: &'a [&'a str]) -> Self {
        Variant {
            name,
            args,
            samples: Vec::new(),
        }
    }
}

/// (wall ms, peak RSS KiB) of one run.
fn one(args: &[&str]) -> Result<(f64, f64), String> {
    let (err, wall) = child_run(args)?;
    let rss = number_after(&err, "peak RSS").ok_or("no peak RSS line")?;
    Ok((wall.as_secs_f64() * 1e3, rss))
}

pub fn bench_confine(args: &BenchArgs, dir: &Path) -> Result<(), String> {
    let code = hello_code().map_err(|e| e.to_string())?;
    let path = write_guest(dir, "hello", &code).map_err(|e| e.to_string())?;
    let kernel = path.to_string_lossy().into_owned();
    let inside = format!(
        "/{}",
        path.file_name().unwrap_or_default().to_string_lossy()
    );
    let base = dir.join("jails");
    let base = base.to_string_lossy().into_owned();
    // SAFETY: geteuid has no arguments.
    let root = unsafe { libc::geteuid() } == 0;
    let plain = [
        "--seccomp",
        "off",
        "--landlock",
        "off",
        "run",
        "--kernel",
        &kernel,
        "--stats",
        "--log-level",
        "warn",
    ];
    let confined = ["run", "--kernel", &kernel, "--stats", "--log-level", "warn"];
    let jailed = [
        "jail",
        "--id",
        "bench",
        "--uid",
        "54321",
        "--gid",
        "54321",
        "--chroot-base-dir",
        &base,
        "--file",
        &kernel,
        "--new-pid-ns",
        "--",
        "run",
        "--kernel",
        &inside,
        "--stats",
        "--log-level",
        "warn",
    ];
    let mut variants = vec![
        Variant::new("none", &plain),
        Variant::new("seccomp + Landlock", &confined),
    ];
    if root {
        variants.push(Variant::new("seccomp + Landlock + jail", &jailed));
    }
    for _ in 0..args.runs.max(3) {
        for v in variants.iter_mut() {
            v.samples.push(one(v.args)?);
        }
    }
    println!(
        "confinement, tiny guest, spawn to exit (median of {} runs):",
        args.runs.max(3)
    );
    let figures: Vec<(&str, f64, f64)> = variants
        .into_iter()
        .map(|v| {
            let (w, r): (Vec<f64>, Vec<f64>) = v.samples.into_iter().unzip();
            (v.name, median(w), median(r))
        })
        .collect();
    let (w0, r0) = (figures[0].1, figures[0].2);
    for (name, w, r) in &figures {
        println!(
            "  {name:<27} {w:7.2} ms ({:.2}x)   peak RSS {r:7.0} KiB (+{:.0} KiB)",
            w / w0,
            r - r0
        );
    }
    if !root {
        println!("  (the jailed run needs root)");
    }
    Ok(())
}
