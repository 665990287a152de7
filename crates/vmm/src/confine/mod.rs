//! Confinement: what a thread of Tsubame may still do once a guest or a
//! client can reach it. Each thread kind, before it handles guest- or
//! client-controlled input, restricts what it may open (`landlock`) and
//! then which system calls it may make (`seccomp`).

pub mod landlock;
pub mod seccomp;
mod syscalls;

pub use landlock::LandlockMode;
pub use seccomp::{set_mode, SeccompMode, ThreadKind};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Landlock(#[from] landlock::Error),
    #[error("{0}")]
    Seccomp(#[from] seccomp::Error),
}

/// Confines the calling thread as `kind`: Landlock first (its system
/// calls are on no filter's list), then the seccomp filter.
pub fn install(kind: ThreadKind) -> Result<(), Error> {
    landlock::restrict(kind)?;
    seccomp::install(kind)?;
    Ok(())
}
