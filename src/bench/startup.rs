//! `tsubame bench startup`: a tiny guest's whole process, spawn to exit,
//! against `tsubame-bare-loop` (the least a process can do to run the same
//! guest), with and without the in-kernel irqchip and PIT; how start-up
//! grows with guest memory and vCPUs; and with `--phases`, where each
//! millisecond of Tsubame's own start and stop goes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{child_run, hello_code, median, number_after, timed_output, write_guest, BenchArgs};

/// `tsubame-bare-loop`, built beside `tsubame` by the same `cargo build`.
fn bare_loop_exe() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let bare = exe.with_file_name("tsubame-bare-loop");
    if bare.is_file() {
        Ok(bare)
    } else {
        Err(format!(
            "{} is missing: build it with `cargo build --release` (it is the baseline)",
            bare.display()
        ))
    }
}

/// Milliseconds from spawn to exit of the bare loop.
fn bare_run(exe: &Path, code: &Path, extra: &[&str]) -> Result<f64, String> {
    Ok(bare_run_teardown(exe, code, extra)?.0)
}

/// The same, with the part of it its VM's teardown took (closing the vCPU
/// and VM fds, as the bare loop reports it).
fn bare_run_teardown(exe: &Path, code: &Path, extra: &[&str]) -> Result<(f64, f64), String> {
    let (out, took) = timed_output(Command::new(exe).arg(code).args(extra))?;
    let took = took.as_secs_f64() * 1e3;
    if !out.status.success() || out.stdout != b"T\n" {
        return Err(format!(
            "bare loop failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let teardown = number_after(&err, "teardown").ok_or("the bare loop gave no teardown line")?;
    Ok((took, teardown))
}

/// Milliseconds of a traced run's stop that closing the VM took (KVM's
/// teardown: the phase marks around dropping the VM).
fn vm_teardown(log: &str) -> Option<f64> {
    let marks = phases(log);
    let at = |name: &str| marks.iter().find(|(n, _)| n == name).map(|m| m.1);
    Some(at("vm closed")? - at("device threads joined")?)
}

/// One `tsubame run` of the guest at the default log level: (spawn to
/// exit in ms, its stderr). What a user's start costs.
fn tsubame_run(elf: &str, extra: &[&str]) -> Result<(f64, String), String> {
    let mut args = vec!["run", "--kernel", elf];
    args.extend_from_slice(extra);
    let (err, wall) = child_run(&args)?;
    Ok((wall.as_secs_f64() * 1e3, err))
}

/// The same at debug level, whose log has the phase marks; its time is
/// not a user's (the debug lines are written to stderr one by one).
fn tsubame_run_traced(elf: &str, extra: &[&str]) -> Result<(f64, String), String> {
    let mut args = vec!["--log-level", "debug"];
    args.extend_from_slice(extra);
    tsubame_run(elf, &args)
}

/// `phase NAME MS` lines of a debug log (see `vmm::trace`).
fn phases(log: &str) -> Vec<(String, f64)> {
    log.lines()
        .filter_map(|l| {
            let rest = &l[l.find("phase ")? + 6..];
            let (name, ms) = rest.rsplit_once(' ')?;
            Some((name.to_string(), ms.trim_end_matches("ms").parse().ok()?))
        })
        .collect()
}

pub(crate) fn bench_startup(args: &BenchArgs, dir: &Path) -> Result<(), String> {
    let code = hello_code().map_err(|e| e.to_string())?;
    let elf_path = write_guest(dir, "hello", &code).map_err(|e| e.to_string())?;
    let elf = elf_path.to_string_lossy().into_owned();
    let raw = dir.join("hello.bin");
    std::fs::write(&raw, &code).map_err(|e| e.to_string())?;
    let bare = bare_loop_exe()?;
    let runs = args.runs.max(3);

    let (mut plain, mut devices, mut kernel, mut split) = (vec![], vec![], vec![], vec![]);
    let mut unconfined = vec![];
    let (mut to_run, mut logs, mut split_logs) = (vec![], vec![], vec![]);
    // KVM's teardown apart: (spawn to exit, closing the VM) of the bare
    // loop with devices and of the traced kernel-mode run.
    let (mut devices_apart, mut kernel_apart) = (vec![], vec![]);
    const VARIANTS: usize = 7;
    let mut previous = None;
    for i in 0..runs {
        // Rotate the order so no variant always runs after the same one.
        for k in 0..VARIANTS {
            let variant = (i + k) % VARIANTS;
            // The in-kernel irqchip's teardown (variants 1-3) leaves the
            // kernel work to finish after its process has gone; the run
            // after it paid for that (the unconfined split run, always
            // next, was slower than the confined one). A discarded run
            // absorbs it, also across rotations.
            if matches!(previous, Some(1..=3)) {
                bare_run(&bare, &raw, &[])?;
            }
            previous = Some(variant);
            match variant {
                0 => plain.push(bare_run(&bare, &raw, &[])?),
                1 => {
                    let (ms, teardown) = bare_run_teardown(&bare, &raw, &["--devices"])?;
                    devices.push(ms);
                    devices_apart.push((ms, teardown));
                }
                2 => kernel.push(tsubame_run(&elf, &[])?.0),
                3 => {
                    let (ms, err) = tsubame_run_traced(&elf, &[])?;
                    let teardown = vm_teardown(&err).ok_or("no vm-closed phase marks")?;
                    kernel_apart.push((ms, teardown));
                    to_run
                        .push(number_after(&err, "first KVM_RUN").ok_or("no first-KVM_RUN line")?);
                    logs.push(err);
                }
                4 => {
                    let args = [
                        "--irqchip",
                        "split",
                        "--seccomp",
                        "off",
                        "--landlock",
                        "off",
                    ];
                    unconfined.push(tsubame_run(&elf, &args)?.0);
                }
                5 => split.push(tsubame_run(&elf, &["--irqchip", "split"])?.0),
                _ => split_logs.push(tsubame_run_traced(&elf, &["--irqchip", "split"])?.1),
            }
        }
    }
    // Each ratio is the median of one rotation's own (its runs met the
    // same host); the times are each variant's median.
    let paired = |a: &[f64], b: &[f64]| median(a.iter().zip(b).map(|(x, y)| x / y).collect());
    let (kernel_ratio, split_ratio, unconfined_ratio) = (
        paired(&kernel, &devices),
        paired(&split, &plain),
        paired(&unconfined, &plain),
    );
    let (p, d, k, s) = (
        median(plain),
        median(devices),
        median(kernel),
        median(split),
    );
    println!("start-up, tiny guest, spawn to exit at the default log level (medians of {runs} rotated runs; ratios: the median of each rotation's):");
    println!("  bare KVM_RUN loop                      {p:8.2} ms");
    println!("  bare loop + in-kernel irqchip and PIT  {d:8.2} ms");
    println!(
        "  tsubame, --irqchip kernel              {k:8.2} ms   {kernel_ratio:.2}x the bare loop with the same devices (goal <= 1.10)"
    );
    print_teardown(&devices_apart, &kernel_apart);
    println!(
        "  tsubame, --irqchip split               {s:8.2} ms   {split_ratio:.2}x the plain bare loop (goal <= 1.30)"
    );
    let u = median(unconfined);
    println!(
        "  tsubame, split, seccomp and Landlock off {u:6.2} ms   {unconfined_ratio:.2}x the plain bare loop (confinement costs {:.2} ms)",
        s - u
    );
    println!(
        "  tsubame main() -> first KVM_RUN        {:8.2} ms   (goal <= 3)",
        median(to_run)
    );
    scaling(&elf, &bare, &raw, runs)?;
    if args.phases {
        print_phases("kernel", &logs);
        print_phases("split", &split_logs);
    }
    Ok(())
}

/// The kernel-mode comparison with each process's VM teardown taken out.
/// That teardown is KVM's alone and bimodal: the PIT's removal makes two
/// back-to-back `synchronize_srcu` calls, and the second falls back to a
/// normal grace period (16 ms at HZ=250) when it starts within SRCU's
/// expedite hold-off (25 us) of the first's end. Which happens depends on
/// the CPU the closing thread is on, not on the VMM: the bare loop pinned
/// to CPU 0 (where SRCU's callbacks run) took 19-30 ms, 15 of 15 times;
/// pinned to CPU 1, 5-12 ms, 15 of 15 times.
fn print_teardown(devices: &[(f64, f64)], kernel: &[(f64, f64)]) {
    // Between the two modes (5-12 ms and 19-30 ms here).
    const SLOW_MS: f64 = 10.0;
    let without = |runs: &[(f64, f64)]| runs.iter().map(|(ms, t)| ms - t).collect::<Vec<_>>();
    let (d, k) = (without(devices), without(kernel));
    let ratio = median(k.iter().zip(&d).map(|(k, d)| k / d).collect());
    let slow = |runs: &[(f64, f64)]| runs.iter().filter(|r| r.1 > SLOW_MS).count();
    let teardown = |runs: &[(f64, f64)]| median(runs.iter().map(|r| r.1).collect());
    println!(
        "    the same without KVM's teardown     {:8.2} ms   {ratio:.2}x the bare loop's {:.2} ms (tsubame at debug log level)",
        median(k),
        median(d)
    );
    println!(
        "    KVM's teardown (closing the VM): bare loop {:.2} ms, tsubame {:.2} ms; a slow SRCU grace period (> {SLOW_MS} ms) in {}/{} and {}/{} runs",
        teardown(devices),
        teardown(kernel),
        slow(devices),
        devices.len(),
        slow(kernel),
        kernel.len()
    );
}

/// Start-up against guest memory size and vCPU count, interleaved, with
/// the bare loop's own growth from 128 MiB to 16 GiB and from 1 to 32
/// vCPUs (what KVM costs). Per vCPU, each process's VM teardown is also
/// taken out: the one-vCPU runs' is bimodal (KVM's PIT, see above).
fn scaling(elf: &str, bare: &Path, raw: &Path, runs: usize) -> Result<(), String> {
    let variants: [(&str, &[&str]); 3] = [
        ("128 MiB, 1 vCPU", &["--memory", "128"]),
        ("16 GiB, 1 vCPU", &["--memory", "16384"]),
        ("128 MiB, 32 vCPUs", &["--memory", "128", "--cpus", "32"]),
    ];
    let mut times: Vec<Vec<f64>> = vec![vec![]; 3];
    let mut first: Vec<Vec<f64>> = vec![vec![]; 3];
    let mut untorn: Vec<Vec<f64>> = vec![vec![]; 3];
    let (mut bare_small, mut bare_big) = (vec![], vec![]);
    let (mut bare_one, mut bare_many, mut bare_big_dev) = (vec![], vec![], vec![]);
    for _ in 0..runs {
        for (i, (_, extra)) in variants.iter().enumerate() {
            let (ms, err) = tsubame_run_traced(elf, extra)?;
            times[i].push(ms);
            first[i].push(number_after(&err, "first KVM_RUN").ok_or("no first-KVM_RUN line")?);
            untorn[i].push(ms - vm_teardown(&err).ok_or("no teardown phase marks")?);
        }
        bare_small.push(bare_run(bare, raw, &[])?);
        bare_big.push(bare_run(bare, raw, &["--mem-mib", "16384"])?);
        let (ms, td) = bare_run_teardown(bare, raw, &["--devices"])?;
        bare_one.push(ms - td);
        let (ms, td) = bare_run_teardown(bare, raw, &["--devices", "--vcpus", "32"])?;
        bare_many.push(ms - td);
        let (ms, td) = bare_run_teardown(bare, raw, &["--devices", "--mem-mib", "16384"])?;
        bare_big_dev.push(ms - td);
    }
    let m: Vec<f64> = times.into_iter().map(median).collect();
    let f: Vec<f64> = first.into_iter().map(median).collect();
    let u: Vec<f64> = untorn.into_iter().map(median).collect();
    let (bs, bb) = (median(bare_small), median(bare_big));
    println!("  scaling, --irqchip kernel, debug log (spawn to exit / main() to first KVM_RUN):");
    for (i, (name, _)) in variants.iter().enumerate() {
        println!("    {name:<20} {:8.2} ms / {:6.2} ms", m[i], f[i]);
    }
    println!(
        "    16 GiB against 128 MiB: {:+.1} % spawn to exit (goal <= +10 %); the bare loop: {bs:.2} -> {bb:.2} ms, {:+.1} % (KVM's own share)",
        (m[1] / m[0] - 1.0) * 100.0,
        (bb / bs - 1.0) * 100.0
    );
    // What grows with memory on a shadow-paging host is KVM's memslot
    // metadata, made and freed in ioctls Tsubame cannot skip: Tsubame's
    // own share is its growth beyond the bare loop's with the same
    // devices, each process's VM teardown taken out.
    let (b1, b16) = (median(bare_one), median(bare_big_dev));
    let own = (u[1] - u[0]) - (b16 - b1);
    println!(
        "    16 GiB against 128 MiB, VM teardown taken out: tsubame {:+.2} ms, the bare loop with the same devices {:+.2} ms; Tsubame's own {own:+.2} ms = {:+.1} % of its 128 MiB start",
        u[1] - u[0],
        b16 - b1,
        own / u[0] * 100.0
    );
    println!(
        "    each vCPU beyond the first: {:+.3} ms spawn to exit (goal <= 0.5 ms); without the VM's teardown {:+.3} ms, the bare loop's {:+.3} ms (KVM's and a thread's own: each vCPU created and given CPUID on a thread, never run)",
        (m[2] - m[0]) / 31.0,
        (u[2] - u[0]) / 31.0,
        (median(bare_many) - b1) / 31.0
    );
    Ok(())
}

/// Median time of each phase the debug logs name, in the order of the first.
fn print_phases(mode: &str, logs: &[String]) {
    let mut order = Vec::new();
    let mut at: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for log in logs {
        for (name, ms) in phases(log) {
            if !at.contains_key(&name) {
                order.push(name.clone());
            }
            at.entry(name).or_default().push(ms);
        }
    }
    println!("  phases of --irqchip {mode} (ms since main(), medians):");
    let mut last = 0.0;
    for name in order {
        let t = median(at.remove(&name).unwrap_or_default());
        println!("    {name:<34} {t:8.3}   (+{:.3})", t - last);
        last = t;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_lines_are_parsed() {
        let log = "[ 0.001 DEBUG vmm::trace] phase kvm opened 0.250ms\nnoise\n\
                   [ 0.002 DEBUG vmm::trace] phase vm created 1.500ms\n";
        assert_eq!(
            phases(log),
            vec![
                ("kvm opened".to_string(), 0.25),
                ("vm created".to_string(), 1.5)
            ]
        );
    }

    #[test]
    fn vm_teardown_is_the_gap_between_its_marks() {
        let log = "[ 0.1 DEBUG vmm::trace] phase device threads joined 3.250ms\n\
                   [ 0.1 DEBUG vmm::trace] phase vm closed 24.750ms\n";
        assert_eq!(vm_teardown(log), Some(21.5));
        assert_eq!(vm_teardown("phase vm closed 1.0ms"), None);
    }
}
