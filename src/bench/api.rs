//! `tsubame bench api`: the control plane's costs, each against a floor
//! measured in the same run: process start to an answering API socket
//! (against `tsubame --version`, the exec-and-exit floor), a `GET /`
//! round trip (against a bare Unix-socket echo of the same sizes), and
//! pause/resume with 1 and 2 vCPUs (against `GET /` on the same VM).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use iced_x86::code_asm::*;

use super::{hello_code, median, write_guest, AsmResult, BenchArgs};

/// One keep-alive request; returns the status code.
fn request(s: &mut UnixStream, method: &str, path: &str, body: &str) -> Result<u16, String> {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some((head, rest)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if rest.len() >= len {
                return head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .ok_or_else(|| format!("bad answer {head:?}"));
            }
        }
    }
}

fn spawn(args: &[&str]) -> Result<Child, String> {
    Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())
}

fn connect(sock: &Path, limit: Duration) -> Result<UnixStream, String> {
    let start = Instant::now();
    loop {
        if let Ok(s) = UnixStream::connect(sock) {
            return Ok(s);
        }
        if start.elapsed() > limit {
            return Err(format!("{}: no API socket after {limit:?}", sock.display()));
        }
        std::thread::yield_now();
    }
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// ms from spawn to the first `GET /` answered.
fn startup_ms(dir: &Path, i: usize) -> Result<f64, String> {
    let sock = dir.join(format!("start{i}.sock"));
    let start = Instant::now();
    let child = spawn(&["--api-sock", sock.to_str().unwrap_or_default()])?;
    let mut s = connect(&sock, Duration::from_secs(10))?;
    request(&mut s, "GET", "/", "")?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    stop(child);
    Ok(ms)
}

fn version_ms() -> Result<f64, String> {
    let start = Instant::now();
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    Command::new(exe)
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .map_err(|e| e.to_string())?;
    Ok(start.elapsed().as_secs_f64() * 1e3)
}

/// µs per request/answer of the given sizes through an echo thread.
fn echo_us(request: usize, answer: usize, n: usize) -> Result<f64, String> {
    let (mut a, mut b) = UnixStream::pair().map_err(|e| e.to_string())?;
    let t = std::thread::spawn(move || {
        let mut buf = vec![0u8; request];
        let out = vec![b'x'; answer];
        for _ in 0..n {
            if b.read_exact(&mut buf).is_err() || b.write_all(&out).is_err() {
                return;
            }
        }
    });
    let req = vec![b'r'; request];
    let mut ans = vec![0u8; answer];
    let start = Instant::now();
    for _ in 0..n {
        a.write_all(&req).map_err(|e| e.to_string())?;
        a.read_exact(&mut ans).map_err(|e| e.to_string())?;
    }
    let us = start.elapsed().as_secs_f64() * 1e6 / n as f64;
    let _ = t.join();
    Ok(us)
}

fn spin_code() -> AsmResult<Vec<u8>> {
    let mut a = CodeAssembler::new(64)?;
    let mut top = a.create_label();
    a.set_label(&mut top)?;
    a.pause()?;
    a.jmp(top)?;
    a.assemble(super::LOAD_ADDR)
}

/// (pause ms, resume ms, GET / µs) medians on a spinning guest.
fn pause_resume(dir: &Path, cpus: usize, runs: usize) -> Result<(f64, f64, f64), String> {
    let code = spin_code().map_err(|e| e.to_string())?;
    let kernel = write_guest(dir, "spin", &code).map_err(|e| e.to_string())?;
    let sock = dir.join(format!("pause{cpus}.sock"));
    let child = spawn(&[
        "run",
        "--kernel",
        kernel.to_str().unwrap_or_default(),
        "--cpus",
        &cpus.to_string(),
        "--serial",
        "none",
        "--api-sock",
        sock.to_str().unwrap_or_default(),
    ])?;
    let result = (|| {
        let mut s = connect(&sock, Duration::from_secs(10))?;
        let (mut pauses, mut resumes, mut gets) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            let t = Instant::now();
            request(&mut s, "GET", "/", "")?;
            gets.push(t.elapsed().as_secs_f64() * 1e6);
            std::thread::sleep(Duration::from_millis(20));
            let t = Instant::now();
            let code = request(&mut s, "PATCH", "/vm", r#"{"state":"Paused"}"#)?;
            pauses.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            let code2 = request(&mut s, "PATCH", "/vm", r#"{"state":"Resumed"}"#)?;
            resumes.push(t.elapsed().as_secs_f64() * 1e3);
            if code != 204 || code2 != 204 {
                return Err(format!("pause/resume answered {code}/{code2}"));
            }
        }
        Ok((median(pauses), median(resumes), median(gets)))
    })();
    stop(child);
    result
}

fn spawn_piped(args: &[&str]) -> Result<Child, String> {
    Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())
}

fn first_byte(child: &mut Child) -> Result<(), String> {
    let mut b = [0u8; 1];
    child
        .stdout
        .as_mut()
        .ok_or("no stdout")?
        .read_exact(&mut b)
        .map_err(|e| format!("no console output: {e}"))
}

/// (InstanceStart answered, first serial byte) in ms after sending it,
/// and the `tsubame run` spawn-to-first-byte floor of the same guest.
fn instance_start(dir: &Path, i: usize, kernel: &Path) -> Result<(f64, f64, f64), String> {
    let sock = dir.join(format!("is{i}.sock"));
    let mut child = spawn_piped(&["--api-sock", sock.to_str().unwrap_or_default()])?;
    let result = (|| {
        let mut s = connect(&sock, Duration::from_secs(10))?;
        let boot = format!(r#"{{"kernel_image_path":"{}"}}"#, kernel.display());
        request(&mut s, "PUT", "/boot-source", &boot)?;
        request(
            &mut s,
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":1,"mem_size_mib":32}"#,
        )?;
        let t = Instant::now();
        let code = request(
            &mut s,
            "PUT",
            "/actions",
            r#"{"action_type":"InstanceStart"}"#,
        )?;
        let answered = t.elapsed().as_secs_f64() * 1e3;
        if code != 204 {
            return Err(format!("InstanceStart answered {code}"));
        }
        first_byte(&mut child)?;
        Ok((answered, t.elapsed().as_secs_f64() * 1e3))
    })();
    stop(child);
    let (answered, byte) = result?;
    let t = Instant::now();
    let mut run = spawn_piped(&[
        "run",
        "--kernel",
        kernel.to_str().unwrap_or_default(),
        "--memory",
        "32",
    ])?;
    first_byte(&mut run)?;
    let floor = t.elapsed().as_secs_f64() * 1e3;
    stop(run);
    Ok((answered, byte, floor))
}

/// VmRSS (KiB) of a running tiny guest, with and without the API thread.
fn rss_kib(pid: u32) -> Result<u64, String> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| "no VmRSS".into())
}

fn rss_with_and_without_api(dir: &Path) -> Result<(u64, u64), String> {
    let code = spin_code().map_err(|e| e.to_string())?;
    let kernel = write_guest(dir, "spin-rss", &code).map_err(|e| e.to_string())?;
    let k = kernel.to_str().unwrap_or_default();
    let sock = dir.join("rss.sock");
    let with = spawn(&[
        "run",
        "--kernel",
        k,
        "--serial",
        "none",
        "--api-sock",
        sock.to_str().unwrap_or_default(),
    ])?;
    let r = (|| {
        let mut s = connect(&sock, Duration::from_secs(10))?;
        request(&mut s, "GET", "/", "")?;
        std::thread::sleep(Duration::from_millis(200));
        rss_kib(with.id())
    })();
    stop(with);
    let without = spawn(&["run", "--kernel", k, "--serial", "none"])?;
    std::thread::sleep(Duration::from_millis(300));
    let r2 = rss_kib(without.id());
    stop(without);
    Ok((r?, r2?))
}

pub fn bench_api(args: &BenchArgs, dir: &Path) -> Result<(), String> {
    let runs = args.runs.max(3);
    println!("API (medians of {runs}; ratios against floors measured alongside):");
    let (mut start, mut floor) = (Vec::new(), Vec::new());
    for i in 0..runs {
        floor.push(version_ms()?);
        start.push(startup_ms(dir, i)?);
    }
    let (start, floor) = (median(start), median(floor));
    println!(
        "  start to API answering  {start:8.2} ms   `tsubame --version` {floor:6.2} ms   ratio {:.2}",
        start / floor
    );
    // GET / over one keep-alive connection, against an echo of the same sizes.
    let sock = dir.join("rtt.sock");
    let child = spawn(&["--api-sock", sock.to_str().unwrap_or_default()])?;
    let n = 2000;
    let rtt = (|| {
        let mut s = connect(&sock, Duration::from_secs(10))?;
        request(&mut s, "GET", "/", "")?;
        let mut v = Vec::new();
        for _ in 0..runs {
            let t = Instant::now();
            for _ in 0..n {
                request(&mut s, "GET", "/", "")?;
            }
            v.push(t.elapsed().as_secs_f64() * 1e6 / n as f64);
        }
        Ok::<f64, String>(median(v))
    })();
    stop(child);
    let rtt = rtt?;
    let req = "GET / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n".len();
    let echo = median(
        (0..runs)
            .map(|_| echo_us(req, 180, n))
            .collect::<Result<_, _>>()?,
    );
    println!(
        "  GET / round trip        {rtt:8.2} µs   socket echo {echo:8.2} µs   ratio {:.2}",
        rtt / echo
    );
    let hello = write_guest(dir, "hello-api", &hello_code().map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let (mut answered, mut byte, mut floor) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        let (a, b, f) = instance_start(dir, i, &hello)?;
        answered.push(a);
        byte.push(b);
        floor.push(f);
    }
    println!(
        "  InstanceStart: answered {:.2} ms, first serial byte {:.2} ms   `run` spawn to first byte {:.2} ms",
        median(answered),
        median(byte),
        median(floor)
    );
    let (with, without) = rss_with_and_without_api(dir)?;
    println!(
        "  VmRSS, tiny guest running: with the API {with} KiB, without {without} KiB   (+{} KiB)",
        with as i64 - without as i64
    );
    for cpus in [1, 2] {
        let (p, r, g) = pause_resume(dir, cpus, runs.max(10))?;
        println!(
            "  {cpus} vCPU(s): pause {p:7.3} ms, resume {r:7.3} ms   GET / on that VM {:.3} ms   pause/GET {:.1}",
            g / 1e3,
            p * 1e3 / g
        );
    }
    Ok(())
}
