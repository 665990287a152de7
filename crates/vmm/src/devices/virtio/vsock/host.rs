//! The host side of hybrid vsock (Firecracker's scheme): guest streams map
//! to Unix stream sockets.
//!
//! - Host to guest: a client connects to the listening socket and writes
//!   `CONNECT <port>\n`; once the guest accepts, it reads `OK <host port>\n`
//!   and the socket carries the stream.
//! - Guest to host: a guest connection to port P is a connection to the
//!   Unix socket `<path>_P`.
//!
//! Flow control is vsock's credit scheme: the guest never sends more than
//! the buffer we advertise, and we never send more than it advertises.

use super::packet::*;
use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

/// Receive buffer we advertise per connection: what the guest may send
/// before we have passed it on.
pub const CONN_BUF: u32 = 256 * 1024;
/// Most payload in one packet to the guest.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Connections at once; more are refused (RST, or the Unix client closed).
pub const MAX_CONNS: usize = 1024;
/// Control packets (RST, RESPONSE, credit updates) held for a guest that
/// posts no receive buffers, at most; more are dropped and counted.
pub const MAX_CONTROL: usize = 1024;
/// Host ports for host-initiated connections start here.
const FIRST_HOST_PORT: u32 = 1 << 30;
const LISTENER: u64 = u64::MAX;
/// Longest `CONNECT <port>\n` line.
const MAX_LINE: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("vsock socket {path}: {source}")]
    Listen {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("vsock: epoll: {0}")]
    Epoll(std::io::Error),
}

/// A host client that has connected but not yet said which port.
struct Pending {
    stream: UnixStream,
    line: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Host-initiated, REQUEST sent, waiting for the guest's RESPONSE.
    Connecting,
    Open,
    /// We sent SHUTDOWN (the host end closed), waiting for the guest's RST.
    Closing,
}

struct Conn {
    stream: UnixStream,
    state: State,
    /// The host end may have data (edge-triggered: set on the event, cleared
    /// on EAGAIN).
    readable: bool,
    /// Bytes sent to the guest, and the guest's buffer and progress.
    tx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Bytes passed on to the host end, and the value last told the guest.
    fwd_cnt: u32,
    fwd_told: u32,
    /// Guest data the host end has not taken yet (at most CONN_BUF).
    out: Vec<u8>,
}

impl Conn {
    fn new(stream: UnixStream, state: State) -> Conn {
        Conn {
            stream,
            state,
            readable: true,
            tx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            fwd_cnt: 0,
            fwd_told: 0,
            out: Vec::new(),
        }
    }

    /// How much more the guest can take.
    fn credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Writes what the host end takes of `out`; Err when it is gone.
    fn flush(&mut self) -> std::io::Result<()> {
        while !self.out.is_empty() {
            match self.stream.write(&self.out) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.out.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// (host port, guest port).
type Key = (u32, u32);

/// Connects to the Unix socket at `path` without waiting: a listener whose
/// backlog is full refuses at once (EAGAIN) instead of holding the device
/// thread, and every vCPU behind it, until somebody accepts. (A Unix
/// stream connect never completes later: it is queued or refused.)
fn connect_nonblocking(path: &std::ffi::OsStr) -> std::io::Result<UnixStream> {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_bytes();
    let mut addr = libc::sockaddr_un {
        sun_family: libc::AF_UNIX as libc::sa_family_t,
        sun_path: [0; 108],
    };
    if bytes.len() >= addr.sun_path.len() {
        return Err(std::io::Error::new(
            ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    for (d, &b) in addr.sun_path.iter_mut().zip(bytes) {
        *d = b as libc::c_char;
    }
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is the socket just made, owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un of at least `len` bytes, alive
    // for the call.
    let r = unsafe {
        libc::connect(
            fd,
            std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
            len as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(UnixStream::from(owned))
}

pub struct Host {
    guest_cid: u64,
    path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    pending: HashMap<RawFd, Pending>,
    conns: HashMap<Key, Conn>,
    by_fd: HashMap<RawFd, Key>,
    /// Header-only packets for the guest, in order.
    control: VecDeque<Header>,
    control_dropped: u64,
    next_port: u32,
    /// Connections made, either way, and resets sent to the guest.
    opened: u64,
    resets: u64,
}

impl Host {
    /// Listens on `path` (a stale socket file there is replaced).
    pub fn new(guest_cid: u64, path: &Path) -> Result<Host, Error> {
        let listen_err = |source| Error::Listen {
            path: path.to_path_buf(),
            source,
        };
        if std::fs::symlink_metadata(path)
            .map(|m| {
                use std::os::unix::fs::FileTypeExt;
                m.file_type().is_socket()
            })
            .unwrap_or(false)
        {
            let _ = std::fs::remove_file(path);
        }
        let listener = UnixListener::bind(path).map_err(listen_err)?;
        crate::confine::landlock::grant_socket_removal(path);
        listener.set_nonblocking(true).map_err(listen_err)?;
        let epoll = Epoll::new().map_err(Error::Epoll)?;
        epoll
            .ctl(
                ControlOperation::Add,
                listener.as_raw_fd(),
                EpollEvent::new(EventSet::IN | EventSet::EDGE_TRIGGERED, LISTENER),
            )
            .map_err(Error::Epoll)?;
        Ok(Host {
            guest_cid,
            path: path.to_path_buf(),
            listener,
            epoll,
            pending: HashMap::new(),
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            control: VecDeque::new(),
            control_dropped: 0,
            next_port: FIRST_HOST_PORT,
            opened: 0,
            resets: 0,
        })
    }

    /// The fd the device thread watches: ready when any socket is.
    pub fn fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Drops every connection (device reset).
    pub fn reset(&mut self) {
        self.pending.clear();
        self.conns.clear();
        self.by_fd.clear();
        self.control.clear();
    }

    fn header(&self, key: Key, op: u16) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: key.0,
            dst_port: key.1,
            type_: TYPE_STREAM,
            op,
            buf_alloc: CONN_BUF,
            fwd_cnt: self.conns.get(&key).map_or(0, |c| c.fwd_cnt),
            ..Header::default()
        }
    }

    fn push(&mut self, key: Key, op: u16, flags: u32) {
        if self.control.len() >= MAX_CONTROL {
            // A guest that never reads cannot grow this queue.
            self.control_dropped += 1;
            return;
        }
        if op == OP_RST {
            self.resets += 1;
        }
        let mut h = self.header(key, op);
        h.flags = flags;
        if let Some(c) = self.conns.get_mut(&key) {
            c.fwd_told = c.fwd_cnt;
        }
        self.control.push_back(h);
    }

    /// Control packets waiting for receive buffers, and those dropped.
    pub fn control_backlog(&self) -> (usize, u64) {
        (self.control.len(), self.control_dropped)
    }

    fn watch(&self, fd: RawFd) -> std::io::Result<()> {
        let set = EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED;
        self.epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(set, fd as u64))
    }

    fn add_conn(&mut self, key: Key, conn: Conn) -> bool {
        if self.conns.len() >= MAX_CONNS || self.watch(conn.stream.as_raw_fd()).is_err() {
            return false;
        }
        self.by_fd.insert(conn.stream.as_raw_fd(), key);
        self.conns.insert(key, conn);
        self.opened += 1;
        true
    }

    pub fn connections_opened(&self) -> u64 {
        self.opened
    }

    pub fn resets_sent(&self) -> u64 {
        self.resets
    }

    fn remove(&mut self, key: Key) {
        if let Some(c) = self.conns.remove(&key) {
            // Closing the stream takes it out of the epoll set.
            self.by_fd.remove(&c.stream.as_raw_fd());
        }
    }

    /// Handles whatever the sockets reported.
    pub fn process_events(&mut self) {
        let mut events = [EpollEvent::default(); 32];
        loop {
            let n = match self.epoll.wait(0, &mut events) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("vsock: epoll: {e}");
                    return;
                }
            };
            for ev in &events[..n] {
                match ev.data() {
                    LISTENER => self.accept(),
                    token => self.socket_event(token as RawFd, ev.event_set()),
                }
            }
        }
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    let fd = stream.as_raw_fd();
                    if self.pending.len() + self.conns.len() >= MAX_CONNS
                        || stream.set_nonblocking(true).is_err()
                        || self.watch(fd).is_err()
                    {
                        continue; // dropped: the client sees the close
                    }
                    self.pending.insert(
                        fd,
                        Pending {
                            stream,
                            line: Vec::new(),
                        },
                    );
                    self.read_connect_line(fd);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    fn socket_event(&mut self, fd: RawFd, set: EventSet) {
        if self.pending.contains_key(&fd) {
            self.read_connect_line(fd);
            return;
        }
        let Some(&key) = self.by_fd.get(&fd) else {
            return;
        };
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if set.intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP) {
            c.readable = true;
        }
        if set.contains(EventSet::OUT) {
            self.flush(key);
        }
    }

    /// Passes buffered guest data on; an RST when the host end is gone.
    fn flush(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if c.flush().is_err() {
            self.remove(key);
            self.push(key, OP_RST, 0);
            return;
        }
        // Tell the guest about freed buffer before it has to ask.
        if c.fwd_cnt.wrapping_sub(c.fwd_told) >= CONN_BUF / 4 {
            self.push(key, OP_CREDIT_UPDATE, 0);
        }
    }

    /// Reads `CONNECT <port>\n` from a new client; then asks the guest.
    fn read_connect_line(&mut self, fd: RawFd) {
        let Some(p) = self.pending.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        // Byte by byte: nothing after the newline is ours to take.
        loop {
            match p.stream.read(&mut byte) {
                Ok(1) if byte[0] == b'\n' => break,
                Ok(1) if p.line.len() < MAX_LINE => p.line.push(byte[0]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // EOF, error, or an over-long line.
                _ => {
                    self.pending.remove(&fd);
                    return;
                }
            }
        }
        let Some(p) = self.pending.remove(&fd) else {
            return;
        };
        let port = std::str::from_utf8(&p.line)
            .ok()
            .and_then(|l| l.trim_end_matches('\r').strip_prefix("CONNECT "))
            .and_then(|n| n.trim().parse::<u32>().ok());
        let Some(port) = port else {
            crate::limited!(
                Debug,
                "vsock: a client sent {:?}, not CONNECT <port>",
                p.line
            );
            return;
        };
        let key = (self.next_port, port);
        self.next_port = self.next_port.checked_add(1).unwrap_or(FIRST_HOST_PORT);
        // The stream stays in the epoll set under the same fd token.
        self.by_fd.insert(fd, key);
        self.conns
            .insert(key, Conn::new(p.stream, State::Connecting));
        self.opened += 1;
        self.push(key, OP_REQUEST, 0);
    }

    /// A packet from the guest, with its payload (RW only).
    pub fn from_guest(&mut self, h: &Header, payload: &[u8]) {
        if h.src_cid != self.guest_cid || h.dst_cid != HOST_CID {
            crate::limited!(
                Debug,
                "vsock: dropped a packet from {} to {}",
                h.src_cid,
                h.dst_cid
            );
            return;
        }
        let key = (h.dst_port, h.src_port);
        if h.type_ != TYPE_STREAM {
            if h.op != OP_RST {
                self.push(key, OP_RST, 0);
            }
            return;
        }
        if let Some(c) = self.conns.get_mut(&key) {
            c.peer_buf_alloc = h.buf_alloc;
            c.peer_fwd_cnt = h.fwd_cnt;
        }
        let state = self.conns.get(&key).map(|c| c.state);
        match (h.op, state) {
            (OP_REQUEST, None) => self.connect_for_guest(key, h),
            (OP_RESPONSE, Some(State::Connecting)) => {
                let Some(c) = self.conns.get_mut(&key) else {
                    return;
                };
                c.state = State::Open;
                // A fresh socket's buffer takes the short line whole.
                let line = format!("OK {}\n", key.0);
                if c.stream.write_all(line.as_bytes()).is_err() {
                    self.remove(key);
                    self.push(key, OP_RST, 0);
                }
            }
            (OP_RW, Some(State::Open)) => {
                let Some(c) = self.conns.get_mut(&key) else {
                    return;
                };
                if c.out.len() + payload.len() > CONN_BUF as usize {
                    // More than the credit we gave: the guest broke the rules.
                    self.remove(key);
                    self.push(key, OP_RST, 0);
                    return;
                }
                c.out.extend_from_slice(payload);
                self.flush(key);
            }
            (OP_CREDIT_UPDATE, Some(_)) => {}
            (OP_CREDIT_REQUEST, Some(_)) => self.push(key, OP_CREDIT_UPDATE, 0),
            (OP_SHUTDOWN, Some(_)) if h.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND) == 3 => {
                self.remove(key);
                self.push(key, OP_RST, 0);
            }
            (OP_SHUTDOWN, Some(_)) => {
                if h.flags & SHUTDOWN_SEND != 0 {
                    if let Some(c) = self.conns.get_mut(&key) {
                        let _ = c.flush();
                        let _ = c.stream.shutdown(std::net::Shutdown::Write);
                    }
                }
            }
            (OP_RST, _) => self.remove(key),
            // Anything else for a connection we do not have, or out of
            // turn: reset it.
            _ => {
                self.remove(key);
                self.push(key, OP_RST, 0);
            }
        }
    }

    /// The guest connects to host port `key.0`: the Unix socket
    /// `<path>_<port>`.
    fn connect_for_guest(&mut self, key: Key, h: &Header) {
        let mut target = self.path.clone().into_os_string();
        target.push(format!("_{}", key.0));
        let ok = match connect_nonblocking(&target) {
            Ok(s) => {
                let mut c = Conn::new(s, State::Open);
                c.peer_buf_alloc = h.buf_alloc;
                c.peer_fwd_cnt = h.fwd_cnt;
                self.add_conn(key, c)
            }
            Err(e) => {
                crate::limited!(Debug, "vsock: guest connect to {target:?}: {e}");
                false
            }
        };
        self.push(key, if ok { OP_RESPONSE } else { OP_RST }, 0);
    }

    /// The next packet for the guest, its payload at most `room` bytes:
    /// control packets first, then data from readable connections the
    /// guest has credit for.
    pub fn to_guest(&mut self, room: usize) -> Option<(Header, Vec<u8>)> {
        if let Some(h) = self.control.pop_front() {
            return Some((h, Vec::new()));
        }
        let keys: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| c.state == State::Open && c.readable && c.credit() > 0)
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            let Some(c) = self.conns.get_mut(&key) else {
                continue;
            };
            let want = room.min(MAX_PAYLOAD).min(c.credit() as usize);
            if want == 0 {
                return None;
            }
            let mut data = vec![0u8; want];
            match c.stream.read(&mut data) {
                Ok(0) => {
                    // The host end closed: no more data either way.
                    c.readable = false;
                    c.state = State::Closing;
                    let mut h = self.header(key, OP_SHUTDOWN);
                    h.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
                    return Some((h, Vec::new()));
                }
                Ok(n) => {
                    data.truncate(n);
                    c.tx_cnt = c.tx_cnt.wrapping_add(n as u32);
                    c.fwd_told = c.fwd_cnt;
                    let mut h = self.header(key, OP_RW);
                    h.len = n as u32;
                    return Some((h, data));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => c.readable = false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.remove(key);
                    return Some((self.header(key, OP_RST), Vec::new()));
                }
            }
        }
        None
    }

    /// Puts a packet back that found no room in the guest.
    pub fn unsend(&mut self, h: Header, data: Vec<u8>) {
        if data.is_empty() {
            self.control.push_front(h);
        } else {
            crate::limited!(
                Warn,
                "vsock: a {} byte packet lost for want of room",
                data.len()
            );
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
