//! Driving a tsubame child through its API socket: curl as the client
//! (nobody here wrote it), and the child's console collected as it comes.
#![allow(dead_code)]

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::tsubame_bin;

/// One request through curl: (status, body).
pub fn curl(sock: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-m", "10", "-w", "\n%{http_code}", "--unix-socket"])
        .arg(sock)
        .args(["-X", method])
        .arg(format!("http://localhost{path}"));
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    let out = cmd.output().expect("curl (the API tests need it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

pub fn ok(sock: &Path, method: &str, path: &str, body: Option<&str>) -> String {
    let (code, text) = curl(sock, method, path, body);
    assert!(
        code == 200 || code == 204,
        "{method} {path} {body:?}: {code} {text}"
    );
    text
}

pub fn refused(sock: &Path, method: &str, path: &str, body: Option<&str>, needle: &str) {
    let (code, text) = curl(sock, method, path, body);
    assert_eq!(code, 400, "{method} {path} {body:?}: {text}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("a JSON fault");
    let msg = v["fault_message"].as_str().unwrap_or("");
    assert!(
        msg.contains(needle),
        "{method} {path}: {msg:?} lacks {needle:?}"
    );
}

pub fn state(sock: &Path) -> String {
    let v: serde_json::Value = serde_json::from_str(&ok(sock, "GET", "/", None)).unwrap();
    v["state"].as_str().unwrap_or("").to_string()
}

/// A running tsubame whose stdout is collected as it comes.
pub struct Vmm {
    pub child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    /// The readers; they end at EOF, once the child has exited.
    readers: Vec<thread::JoinHandle<()>>,
}

fn collect(mut r: impl Read + Send + 'static) -> (Arc<Mutex<String>>, thread::JoinHandle<()>) {
    let out = Arc::new(Mutex::new(String::new()));
    let o = out.clone();
    let reader = thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            o.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    (out, reader)
}

impl Vmm {
    pub fn start(args: &[&str]) -> Vmm {
        Self::spawn(args, Stdio::null())
    }

    /// As `start`, with a pipe to the guest's console input.
    pub fn start_with_input(args: &[&str]) -> (Vmm, std::process::ChildStdin) {
        let mut vmm = Self::spawn(args, Stdio::piped());
        let input = vmm.child.stdin.take().unwrap();
        (vmm, input)
    }

    fn spawn(args: &[&str], stdin: Stdio) -> Vmm {
        let child = Command::new(tsubame_bin())
            .args(args)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tsubame");
        Self::adopt(child)
    }

    /// Takes over a child spawned with piped stdout and stderr.
    pub fn adopt(mut child: Child) -> Vmm {
        let (stdout, out_reader) = collect(child.stdout.take().unwrap());
        let (stderr, err_reader) = collect(child.stderr.take().unwrap());
        Vmm {
            child,
            stdout,
            stderr,
            readers: vec![out_reader, err_reader],
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child, which we have not reaped.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    pub fn out(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// What Tsubame has logged so far.
    pub fn err(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// As `wait_for_socket`, saying what the child logged (and whether it
    /// has exited) when the socket never comes.
    pub fn wait_for_api(&mut self, sock: &Path) {
        let start = Instant::now();
        while UnixStream::connect(sock).is_err() {
            if start.elapsed() > Duration::from_secs(10) {
                let exited = self.child.try_wait().ok().flatten();
                panic!("no API socket (exit: {exited:?}): {}", self.err());
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for `needle` on the console; a guest kernel panic fails at
    /// once instead of after `limit`. The failure prints Tsubame's log
    /// first and the console last, so that a shortened report still shows
    /// where the guest stopped.
    pub fn wait_for(&self, needle: &str, limit: Duration) {
        let start = Instant::now();
        loop {
            let out = self.out();
            if out.contains(needle) {
                return;
            }
            let panicked = out.contains("Kernel panic - not syncing");
            if panicked || start.elapsed() >= limit {
                panic!(
                    "no {needle:?} within {limit:?}{}:\n{}\n--- console ---\n{out}",
                    if panicked {
                        " (the guest kernel panicked)"
                    } else {
                        ""
                    },
                    self.err()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Exit status within `limit` (128+N for signal N).
    pub fn wait(mut self, limit: Duration) -> (i32, String, String) {
        use std::os::unix::process::ExitStatusExt;
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
                let code = st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0));
                return (code, self.out(), self.stderr.lock().unwrap().clone());
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                panic!("still running after {limit:?}: {}", self.out());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A test that fails part-way must not leave its VMM running: it would
/// hold its disk's lock and its sockets against the next test.
impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        // Bounded: a process inside a stalled file system's call is only
        // reaped once that call returns.
        let start = Instant::now();
        while matches!(self.child.try_wait(), Ok(None)) && start.elapsed() < Duration::from_secs(5)
        {
            thread::sleep(Duration::from_millis(10));
        }
    }
}

pub fn wait_for_socket(sock: &Path) {
    let start = Instant::now();
    while UnixStream::connect(sock).is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "no API socket");
        thread::sleep(Duration::from_millis(5));
    }
}
