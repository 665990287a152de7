//! `tsubame bench`: benchmarks (filled in below).

use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {}

pub fn main(_args: BenchArgs) -> ExitCode {
    ExitCode::from(1)
}
