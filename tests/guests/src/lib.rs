//! Paths of the test guests that `build.rs` assembled.
use std::path::PathBuf;

/// The built guest image `name` (e.g. `"hello64"`).
pub fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("TSUBAME_GUESTS_DIR")).join(name)
}
