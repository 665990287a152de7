//! Builds the test guests in `asm/` with gcc and ld: one ELF per guest, and
//! `bzstub.bin`, the flat binary a test bzImage's 64-bit entry runs.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where guests are loaded: the boot protocol's 1 MiB.
const LOAD_ADDR: &str = "0x100000";
/// A bzImage's 64-bit entry: load address + 0x200.
const BZSTUB_ADDR: &str = "0x100200";

fn run(cmd: &mut Command) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (gcc and binutils are required)"));
    assert!(status.success(), "{cmd:?} failed");
}

fn build(src: &Path, out: &Path, text_addr: &str) -> PathBuf {
    let name = src.file_stem().unwrap().to_str().unwrap();
    let obj = out.join(format!("{name}.o"));
    let elf = out.join(name);
    run(Command::new("gcc")
        .args(["-c", "-nostdlib", "-ffreestanding", "-fno-pic", "-I"])
        .arg(src.parent().unwrap())
        .arg("-o")
        .arg(&obj)
        .arg(src));
    run(Command::new("ld")
        .args([
            "-nostdlib",
            "-static",
            "-no-pie",
            "--build-id=none",
            "-z",
            "noexecstack",
        ])
        .arg(format!("-Ttext={text_addr}"))
        .args(["-e", "_start", "-o"])
        .arg(&elf)
        .arg(&obj));
    elf
}

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("asm");
    println!("cargo:rerun-if-changed={}", dir.display());
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        println!("cargo:rerun-if-changed={}", path.display());
        let name = path.file_name().unwrap().to_str().unwrap();
        if !name.ends_with(".S") || name.starts_with("lib") {
            continue;
        }
        let addr = if name == "bzstub.S" {
            BZSTUB_ADDR
        } else {
            LOAD_ADDR
        };
        let elf = build(&path, &out, addr);
        if name == "bzstub.S" {
            run(Command::new("objcopy")
                .args(["-O", "binary"])
                .arg(&elf)
                .arg(out.join("bzstub.bin")));
        }
    }
    println!("cargo:rustc-env=TSUBAME_GUESTS_DIR={}", out.display());
}
