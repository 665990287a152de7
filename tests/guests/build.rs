//! Builds the test guests in `asm/` with gcc and ld: one ELF per guest, and
//! `bzstub.bin`, the flat binary a test bzImage's 64-bit entry runs. The
//! programs in `user/` are static Linux user-space programs (no libc) that
//! the Linux tests put in their initramfs.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where guests are loaded: the boot protocol's 1 MiB.
const LOAD_ADDR: &str = "0x100000";
/// A bzImage's 64-bit entry: load address + 0x200.
const BZSTUB_ADDR: &str = "0x100200";
/// Where Linux user programs are linked.
const USER_ADDR: &str = "0x400000";

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

/// The `.S` files of `dir` that are programs (not included helpers).
fn sources(dir: &Path) -> Vec<PathBuf> {
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .inspect(|p| println!("cargo:rerun-if-changed={}", p.display()))
        .filter(|p| {
            let name = p.file_name().unwrap().to_str().unwrap();
            name.ends_with(".S") && !name.starts_with("lib")
        })
        .collect();
    v.sort();
    v
}

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for path in sources(&root.join("asm")) {
        let bzstub = path.file_name().unwrap() == "bzstub.S";
        let elf = build(&path, &out, if bzstub { BZSTUB_ADDR } else { LOAD_ADDR });
        if bzstub {
            run(Command::new("objcopy")
                .args(["-O", "binary"])
                .arg(&elf)
                .arg(out.join("bzstub.bin")));
        }
    }
    for path in sources(&root.join("user")) {
        build(&path, &out, USER_ADDR);
    }
    println!("cargo:rustc-env=TSUBAME_GUESTS_DIR={}", out.display());
}
