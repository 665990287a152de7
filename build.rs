//! Link-time layout of the `tsubame` binaries (see link/startup.ld).
//!
//! Both options need LLD, which rustc uses by default for
//! x86_64-unknown-linux-gnu since 1.90; elsewhere they are left out and
//! the binary is only larger in memory, not different in behaviour.
use std::path::Path;
use std::process::Command;

fn main() {
    let layout = Path::new(env!("CARGO_MANIFEST_DIR")).join("link/startup.ld");
    println!("cargo:rerun-if-changed={}", layout.display());
    println!("cargo:rerun-if-changed=build.rs");
    let target = std::env::var("TARGET").unwrap_or_default();
    if target != "x86_64-unknown-linux-gnu" || !rustc_links_with_lld() {
        println!("cargo:warning=not linking with LLD: start-up code is not grouped (more resident memory)");
        return;
    }
    // Start-up code side by side: the kernel maps text 64 KiB around each
    // fault, so scattered start-up code makes almost all text resident.
    // The script only adds a section before .text (INSERT): the rest of
    // the layout stays LLD's own.
    println!("cargo:rustc-link-arg-bins=-Wl,-T,{}", layout.display());
    // Relative relocations packed (DT_RELR, glibc >= 2.36): the static PIE
    // carries ~8 KiB instead of ~150 KiB of them, all read at start-up.
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
}

/// rustc 1.90 or later, whose default linker here is its own LLD.
fn rustc_links_with_lld() -> bool {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = Command::new(rustc).arg("-vV").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(release) = text.lines().find_map(|l| l.strip_prefix("release: ")) else {
        return false;
    };
    let mut parts = release
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (1, 90)
}
