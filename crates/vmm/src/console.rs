//! The serial console's terminal side: raw mode while the guest owns the
//! terminal, and QEMU's escape keys (`Ctrl-A x` quits, `Ctrl-A Ctrl-A`
//! sends a literal Ctrl-A).

use std::io;

const CTRL_A: u8 = 0x01;

/// What a chunk of input means once escapes are taken out.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Filtered {
    pub to_guest: Vec<u8>,
    pub quit: bool,
}

/// Finds `Ctrl-A <key>` sequences, also across reads.
#[derive(Debug, Default)]
pub struct EscapeFilter {
    after_ctrl_a: bool,
}

impl EscapeFilter {
    pub fn feed(&mut self, input: &[u8]) -> Filtered {
        let mut out = Filtered::default();
        for &b in input {
            if self.after_ctrl_a {
                self.after_ctrl_a = false;
                match b {
                    b'x' | b'X' => {
                        out.quit = true;
                        return out;
                    }
                    CTRL_A => out.to_guest.push(CTRL_A),
                    other => out.to_guest.extend([CTRL_A, other]),
                }
            } else if b == CTRL_A {
                self.after_ctrl_a = true;
            } else {
                out.to_guest.push(b);
            }
        }
        out
    }
}

/// Puts a terminal in raw mode and restores it exactly on drop (also when
/// unwinding from a panic).
pub struct RawMode {
    fd: i32,
    saved: libc::termios,
}

impl RawMode {
    /// Raw mode on `fd` if it is a terminal; `None` otherwise.
    pub fn enable(fd: i32) -> io::Result<Option<RawMode>> {
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(fd) } != 1 {
            return Ok(None);
        }
        // SAFETY: termios is plain old data; tcgetattr fills it in.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `saved` is a valid termios to write into.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut raw = saved;
        raw.c_iflag &= !(libc::IGNBRK
            | libc::BRKINT
            | libc::PARMRK
            | libc::ISTRIP
            | libc::INLCR
            | libc::IGNCR
            | libc::ICRNL
            | libc::IXON);
        raw.c_lflag &= !(libc::ECHO | libc::ECHONL | libc::ICANON | libc::ISIG | libc::IEXTEN);
        raw.c_cc[libc::VMIN] = 1;
        raw.c_cc[libc::VTIME] = 0;
        // SAFETY: `raw` is a valid termios derived from the current one.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Some(RawMode { fd, saved }))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the termios read from this same descriptor.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_input_passes_through() {
        let mut f = EscapeFilter::default();
        assert_eq!(
            f.feed(b"ls -l\r"),
            Filtered {
                to_guest: b"ls -l\r".to_vec(),
                quit: false
            }
        );
    }

    #[test]
    fn ctrl_a_x_quits_even_split_across_reads() {
        let mut f = EscapeFilter::default();
        let first = f.feed(b"ab\x01");
        assert_eq!(first.to_guest, b"ab");
        assert!(!first.quit);
        assert!(f.feed(b"x").quit);
    }

    #[test]
    fn ctrl_a_twice_sends_one_and_unknown_keys_pass() {
        let mut f = EscapeFilter::default();
        assert_eq!(f.feed(b"\x01\x01q").to_guest, b"\x01q");
        assert_eq!(f.feed(b"\x01c").to_guest, b"\x01c");
        assert_eq!(
            f.feed(b"\x03").to_guest,
            b"\x03",
            "Ctrl-C goes to the guest"
        );
    }

    #[test]
    fn non_terminals_are_left_alone() {
        let (r, _w) = std::os::unix::net::UnixStream::pair().unwrap();
        use std::os::fd::AsRawFd;
        assert!(RawMode::enable(r.as_raw_fd()).unwrap().is_none());
    }
}
