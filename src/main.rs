//! The `tsubame` binary: command line, logging, exit status. The VM's life
//! itself is in the `vmm` crate.

mod bench;
mod cli;
mod logger;

use std::process::ExitCode;

fn main() -> ExitCode {
    vmm::mark_start();
    let cli = match cli::parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    logger::init(cli.log_level);
    match cli.command {
        cli::Command::Run(args) => run(args),
        cli::Command::Bench(args) => bench::main(args),
    }
}

fn run(args: cli::RunArgs) -> ExitCode {
    let stats = args.stats;
    let cfg = match args.into_config() {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("tsubame: {e}");
            return ExitCode::from(1);
        }
    };
    let machine = match vmm::vm::builder::build(&cfg) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("tsubame: {e}");
            return ExitCode::from(1);
        }
    };
    let outcome = machine.run(None);
    match &outcome.reason {
        vmm::StopReason::GuestCrash { report, .. } => eprint!("tsubame: the guest died\n{report}"),
        vmm::StopReason::VmmError(e) => eprintln!("tsubame: {e}"),
        _ => {}
    }
    if stats {
        eprint!("{}", outcome.stats_text);
        let m = outcome.memory;
        eprintln!(
            "memory: peak RSS {} KiB, guest RAM resident {} KiB, VMM overhead {} KiB",
            m.peak_rss_kib,
            m.guest_resident_kib,
            m.overhead_kib()
        );
    }
    if !outcome.samples.is_empty() {
        let total: u64 = outcome.samples.iter().map(|(_, n)| n).sum();
        eprintln!("guest RIP samples ({total} in all):");
        for ((rip, cpl, caller), n) in outcome.samples.iter().take(2000) {
            eprintln!(
                "  {rip:#018x} cpl{cpl} {n:>8} {:5.1}% caller {caller:#x}",
                *n as f64 * 100.0 / total as f64
            );
        }
    }
    let code = outcome.reason.exit_code();
    log::info!("{} (exit status {code})", outcome.reason);
    ExitCode::from(code as u8)
}
