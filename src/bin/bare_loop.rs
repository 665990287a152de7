//! The baseline `tsubame bench startup` measures Tsubame against: the
//! least a process can do to run a tiny guest on KVM. Open `/dev/kvm`,
//! create a VM with 128 MiB of untouched anonymous memory, optionally the
//! in-kernel irqchip and PIT (`--devices`), one vCPU in 64-bit mode with
//! identity page tables (and with `--vcpus N`, N-1 more, each created and
//! given CPUID on a thread of its own, never run: what KVM and a thread
//! cost per vCPU), then `KVM_RUN` until the guest writes the ACPI
//! power-off port. COM1 bytes go to stdout. Closing the vCPU and the VM
//! (KVM's teardown, what exit would do anyway) is timed and reported on
//! stderr as `teardown MS ms`.
//!
//! Usage: `tsubame-bare-loop CODE [--devices] [--mem-mib N] [--vcpus N]`, where CODE is
//! flat 64-bit code to load and enter at 1 MiB. No Tsubame code is used on
//! purpose.

use std::io::Write;
use std::process::ExitCode;

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VcpuExit};

const LOAD_ADDR: u64 = 0x10_0000;
const PML4: u64 = 0x9000;
const PDPT: u64 = 0xa000;
const PD: u64 = 0xb000;
const POWER_PORT: u16 = 0x600;
const COM1: u16 = 0x3f8;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tsubame-bare-loop: {e}");
            ExitCode::from(1)
        }
    }
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let code_path = args
        .next()
        .ok_or("usage: tsubame-bare-loop CODE [--devices] [--mem-mib N] [--vcpus N]")?;
    let (mut devices, mut mem_mib, mut vcpus) = (false, 128usize, 1u64);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--devices" => devices = true,
            "--mem-mib" => {
                mem_mib = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|&n| (2..=1 << 20).contains(&n))
                    .ok_or("--mem-mib: expected a size from 2 to 1048576")?
            }
            "--vcpus" => {
                vcpus = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|&n| (1..=255).contains(&n))
                    .ok_or("--vcpus: expected a count from 1 to 255")?
            }
            other => return Err(format!("unknown argument '{other}'")),
        }
    }
    // One slot below the 32-bit hole is all the tiny guest needs; larger
    // sizes still go in one slot, which is what KVM's cost depends on.
    let mem_size = mem_mib << 20;
    let code = std::fs::read(&code_path).map_err(|e| format!("{code_path}: {e}"))?;
    if code.len() > (2 << 20) - LOAD_ADDR as usize {
        return Err(format!("{code_path}: too big"));
    }
    fn e(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> String {
        move |x| format!("{what}: {x}")
    }
    let kvm = Kvm::new().map_err(e("/dev/kvm"))?;
    let vm = kvm.create_vm().map_err(e("KVM_CREATE_VM"))?;

    // SAFETY: a fresh private anonymous mapping; the result is checked.
    let host = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            mem_size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if host == libc::MAP_FAILED {
        return Err("mmap of guest memory failed".into());
    }
    // SAFETY: `host` is mem_size bytes mapped above and never unmapped.
    let mem = unsafe { std::slice::from_raw_parts_mut(host as *mut u8, mem_size) };
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: mem_size as u64,
        userspace_addr: host as u64,
    };
    // SAFETY: the region is the mapping above, which outlives the VM.
    unsafe { vm.set_user_memory_region(region) }.map_err(e("KVM_SET_USER_MEMORY_REGION"))?;
    if devices {
        vm.create_irq_chip().map_err(e("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit).map_err(e("KVM_CREATE_PIT2"))?;
    }

    // Identity map of the first GiB in 2 MiB pages; the code at 1 MiB.
    let put = |mem: &mut [u8], at: u64, v: u64| {
        mem[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes())
    };
    put(mem, PML4, PDPT | 3);
    put(mem, PDPT, PD | 3);
    for i in 0..512u64 {
        put(mem, PD + i * 8, (i << 21) | 0x83);
    }
    mem[LOAD_ADDR as usize..LOAD_ADDR as usize + code.len()].copy_from_slice(&code);

    let mut vcpu = vm.create_vcpu(0).map_err(e("KVM_CREATE_VCPU"))?;
    let cpuid = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(e("KVM_GET_SUPPORTED_CPUID"))?;
    vcpu.set_cpuid2(&cpuid).map_err(e("KVM_SET_CPUID2"))?;
    let others = std::thread::scope(|s| {
        let threads: Vec<_> = (1..vcpus)
            .map(|id| {
                let (vm, cpuid) = (&vm, &cpuid);
                s.spawn(move || {
                    let vcpu = vm.create_vcpu(id).map_err(e("KVM_CREATE_VCPU"))?;
                    vcpu.set_cpuid2(cpuid).map_err(e("KVM_SET_CPUID2"))?;
                    Ok::<_, String>(vcpu)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err("a vCPU thread panicked".into()))
            })
            .collect::<Result<Vec<_>, String>>()
    })?;
    let mut sregs = vcpu.get_sregs().map_err(e("KVM_GET_SREGS"))?;
    sregs.cr3 = PML4;
    sregs.cr4 = 1 << 5; // PAE
    sregs.cr0 = 1 | (1 << 31); // PE, PG
    sregs.efer = (1 << 8) | (1 << 10); // LME, LMA
    sregs.cs.base = 0;
    sregs.cs.limit = 0xffff_ffff;
    sregs.cs.selector = 0x8;
    sregs.cs.type_ = 0xb;
    sregs.cs.present = 1;
    sregs.cs.s = 1;
    sregs.cs.l = 1;
    sregs.cs.g = 1;
    let mut data = sregs.cs;
    data.selector = 0x10;
    data.type_ = 0x3;
    data.l = 0;
    data.db = 1;
    for seg in [
        &mut sregs.ds,
        &mut sregs.es,
        &mut sregs.fs,
        &mut sregs.gs,
        &mut sregs.ss,
    ] {
        *seg = data;
    }
    vcpu.set_sregs(&sregs).map_err(e("KVM_SET_SREGS"))?;
    let mut regs = vcpu.get_regs().map_err(e("KVM_GET_REGS"))?;
    regs.rip = LOAD_ADDR;
    regs.rsp = LOAD_ADDR;
    regs.rflags = 2;
    vcpu.set_regs(&regs).map_err(e("KVM_SET_REGS"))?;

    let mut out = std::io::stdout().lock();
    loop {
        match vcpu.run().map_err(e("KVM_RUN"))? {
            VcpuExit::IoOut(POWER_PORT, _) => break,
            VcpuExit::IoOut(COM1, data) => {
                let _ = out.write_all(data);
                let _ = out.flush();
            }
            VcpuExit::IoOut(..) | VcpuExit::IoIn(..) | VcpuExit::MmioWrite(..) => {}
            VcpuExit::MmioRead(_, data) => data.fill(0xff),
            other => return Err(format!("unexpected exit {other:?}")),
        }
    }
    let closing = std::time::Instant::now();
    drop(vcpu);
    drop(others);
    drop(vm);
    eprintln!("teardown {:.3} ms", closing.elapsed().as_secs_f64() * 1e3);
    Ok(())
}
