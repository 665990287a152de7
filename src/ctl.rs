//! `tsubame ctl`: a human's client for the API socket (like Cloud
//! Hypervisor's `ch-remote`). It speaks plain HTTP/1.1 over the socket, so
//! it works against Firecracker too.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct CtlArgs {
    /// The API socket of the running Tsubame.
    #[arg(long, value_name = "PATH")]
    pub api_sock: PathBuf,
    #[command(subcommand)]
    pub what: CtlCommand,
}

#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum CtlCommand {
    /// The instance's ID, state and version.
    Info,
    /// Pause every vCPU and device.
    Pause,
    /// Resume a paused VM.
    Resume,
    /// Ask the guest to shut down (Ctrl-Alt-Del on its keyboard).
    Shutdown,
    /// The VM's whole configuration, as JSON.
    Config,
    /// Write a metrics line now (FlushMetrics).
    Metrics,
    /// Save the paused VM: a state file and a memory file.
    Snapshot {
        state: PathBuf,
        mem: PathBuf,
        /// Only the pages written since the last snapshot (needs dirty
        /// page tracking).
        #[arg(long)]
        diff: bool,
    },
}

/// One request's status line code and body.
fn request(sock: &PathBuf, method: &str, path: &str, body: &str) -> Result<(u16, String), String> {
    let mut s = UnixStream::connect(sock).map_err(|e| format!("{}: {e}", sock.display()))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    s.take(1 << 20)
        .read_to_end(&mut out)
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {head:?}"))?;
    Ok((status, body.to_string()))
}

pub fn main(args: CtlArgs) -> ExitCode {
    use CtlCommand::*;
    let snapshot_body;
    let (method, path, body) = match &args.what {
        Info => ("GET", "/", ""),
        Pause => ("PATCH", "/vm", r#"{"state":"Paused"}"#),
        Resume => ("PATCH", "/vm", r#"{"state":"Resumed"}"#),
        Shutdown => ("PUT", "/actions", r#"{"action_type":"SendCtrlAltDel"}"#),
        Config => ("GET", "/vm/config", ""),
        Metrics => ("PUT", "/actions", r#"{"action_type":"FlushMetrics"}"#),
        Snapshot { state, mem, diff } => {
            snapshot_body = serde_json::json!({
                "snapshot_type": if *diff { "Diff" } else { "Full" },
                "snapshot_path": state,
                "mem_file_path": mem,
            })
            .to_string();
            ("PUT", "/snapshot/create", snapshot_body.as_str())
        }
    };
    let (status, body) = match request(&args.api_sock, method, path, body) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tsubame ctl: {e}");
            return ExitCode::from(1);
        }
    };
    let json: Option<serde_json::Value> = serde_json::from_str(&body).ok();
    if status >= 300 {
        let why = json
            .as_ref()
            .and_then(|j| j["fault_message"].as_str().map(str::to_string))
            .unwrap_or(body);
        eprintln!("tsubame ctl: {method} {path}: {status}: {why}");
        return ExitCode::from(1);
    }
    match (args.what, json) {
        (Info, Some(j)) => {
            for key in ["id", "state", "app_name", "vmm_version"] {
                println!("{key:<12} {}", j[key].as_str().unwrap_or("?"));
            }
        }
        (Config, Some(j)) => {
            println!("{}", serde_json::to_string_pretty(&j).unwrap_or_default())
        }
        (Pause, _) => println!("paused"),
        (Resume, _) => println!("resumed"),
        (Shutdown, _) => println!("Ctrl-Alt-Del sent"),
        (Metrics, _) => println!("metrics flushed"),
        (Snapshot { state, mem, .. }, _) => {
            println!(
                "snapshot written: {} and {}",
                state.display(),
                mem.display()
            )
        }
        (_, _) => println!("{body}"),
    }
    ExitCode::SUCCESS
}
