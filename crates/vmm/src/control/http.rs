//! The API server: HTTP/1.1 on a Unix socket, on a thread of its own. It
//! reads requests (httparse for the head), turns each into an
//! [`ApiRequest`] ([`super::request::parse`]) and hands it to the VMM
//! thread over a channel plus an eventfd, one at a time, as Firecracker
//! does. A client can only hurt itself: heads and bodies are bounded, a
//! half-sent request times out, connections are capped (the longest idle
//! goes first), and replies are written without blocking.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::request::{self, ApiRequest, ApiResponse};

/// Firecracker's default `--http-api-max-payload-size`.
pub const DEFAULT_MAX_BODY: usize = 51200;
const MAX_HEAD: usize = 8192;
const MAX_HEADERS: usize = 32;
pub const MAX_CONNECTIONS: usize = 128;
/// A request must arrive whole within this long of its first byte.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Replies a client does not read are dropped with its connection.
const MAX_OUT: usize = 256 * 1024;

/// What a watched fd is (its event data).
const LISTENER: u32 = 0;
const STOP: u32 = 1;
const SWEEP: u32 = 2;
const CONN: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("API socket {0}: the path exists (remove it, or choose another)")]
    Exists(PathBuf),
    #[error("API socket {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("API server: {0}")]
    Io(#[from] io::Error),
}

/// The VMM thread's end: requests arrive here, answers go back.
pub struct ApiLink {
    /// Readable when a request is waiting (or the server thread died).
    pub event: EventFd,
    requests: Receiver<ApiRequest>,
    responses: Sender<ApiResponse>,
    died: Arc<Mutex<Option<String>>>,
}

impl ApiLink {
    /// The waiting request, if any.
    pub fn next(&self) -> Option<ApiRequest> {
        let _ = self.event.read();
        self.requests.try_recv().ok()
    }

    pub fn respond(&self, r: ApiResponse) {
        let _ = self.responses.send(r);
    }

    pub fn fd(&self) -> RawFd {
        self.event.as_raw_fd()
    }

    /// Why the server thread ended, if it did: no request can arrive any
    /// more, so whoever drives the VMM through it must stop.
    pub fn died(&self) -> Option<String> {
        crate::devices::bus::lock(&self.died).clone()
    }
}

/// The running server; dropping it stops the thread and removes the
/// socket file.
pub struct ApiServer {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
    path: PathBuf,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds `path` (which must not exist) and starts the server thread.
pub fn start(path: &Path, max_body: usize) -> Result<(ApiServer, ApiLink), Error> {
    if path.symlink_metadata().is_ok() {
        return Err(Error::Exists(path.to_path_buf()));
    }
    let listener = UnixListener::bind(path).map_err(|source| Error::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    crate::confine::landlock::grant_socket_removal(path);
    listener.set_nonblocking(true)?;
    let event = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
    let stop = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
    let (req_tx, requests) = mpsc::channel();
    let (responses, resp_rx) = mpsc::channel();
    let server = Server {
        listener,
        stop: stop.try_clone()?,
        vmm_event: event.try_clone()?,
        requests: req_tx,
        responses: resp_rx,
        conns: HashMap::new(),
        max_body,
        sweep: TimerFd::new().map_err(io::Error::from)?,
        stopped: false,
        failed: None,
    };
    let died = Arc::new(Mutex::new(None));
    let (died_thread, wake) = (died.clone(), event.try_clone()?);
    let thread = std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            // Filtered before its first request.
            let run = || {
                crate::confine::install(crate::confine::ThreadKind::Api)
                    .map_err(|e| e.to_string())?;
                server.run()
            };
            let cause = match std::panic::catch_unwind(AssertUnwindSafe(run)) {
                Ok(Ok(())) => return,
                Ok(Err(e)) => e,
                Err(payload) => crate::lifecycle::panic_message(payload.as_ref()),
            };
            log::error!("thread 'api' died: {cause}");
            *crate::devices::bus::lock(&died_thread) = Some(cause);
            let _ = wake.write(1);
        })?;
    Ok((
        ApiServer {
            stop,
            thread: Some(thread),
            path: path.to_path_buf(),
        },
        ApiLink {
            event,
            requests,
            responses,
            died,
        },
    ))
}

struct Conn {
    stream: UnixStream,
    input: Vec<u8>,
    output: Vec<u8>,
    /// When the request now arriving began (None: between requests).
    started: Option<Instant>,
    last_active: Instant,
    close_after_write: bool,
    sent_continue: bool,
}

/// One complete request taken off a connection's input.
struct Parsed {
    method: String,
    path: String,
    body: Vec<u8>,
    close: bool,
    /// Bytes of input it took, head and body.
    consumed: usize,
}

enum Head {
    Incomplete,
    /// Head parsed; the body has not all arrived.
    WaitBody {
        expect_continue: bool,
    },
    Done(Parsed),
    Reject(ApiResponse),
}

struct Server {
    listener: UnixListener,
    stop: EventFd,
    vmm_event: EventFd,
    requests: Sender<ApiRequest>,
    responses: Receiver<ApiResponse>,
    /// Keyed by the connection's fd.
    conns: HashMap<RawFd, Conn>,
    max_body: usize,
    /// Fires every second to close requests that take too long.
    sweep: TimerFd,
    stopped: bool,
    /// Why the server cannot go on (its fds cannot be watched).
    failed: Option<String>,
}

impl MutEventSubscriber for Server {
    fn init(&mut self, ops: &mut EventOps) {
        let second = Duration::from_secs(1);
        let added = self
            .sweep
            .reset(second, Some(second))
            .map_err(|e| e.to_string())
            .and_then(|()| {
                for (fd, data) in [
                    (self.listener.as_raw_fd(), LISTENER),
                    (self.stop.as_raw_fd(), STOP),
                    (self.sweep.as_raw_fd(), SWEEP),
                ] {
                    ops.add(Events::with_data_raw(fd, data, EventSet::IN))
                        .map_err(|e| e.to_string())?;
                }
                Ok(())
            });
        if let Err(e) = added {
            self.failed = Some(e);
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            STOP => self.stopped = true,
            LISTENER => self.accept(ops),
            SWEEP => {
                let _ = self.sweep.wait();
                self.expire(ops);
            }
            _ => self.serve(events.fd(), events.event_set(), ops),
        }
    }
}

impl Server {
    /// Serves until stopped; an error means it could not go on.
    fn run(self) -> Result<(), String> {
        let em = |e: event_manager::Error| format!("event loop: {e}");
        let mut manager = EventManager::new().map_err(em)?;
        let id = manager.add_subscriber(self);
        loop {
            let server = manager.subscriber_mut(id).map_err(em)?;
            if let Some(why) = server.failed.take() {
                return Err(why);
            }
            if server.stopped {
                return Ok(());
            }
            manager.run().map_err(em)?;
        }
    }

    fn accept(&mut self, ops: &mut EventOps) {
        while let Ok((stream, _)) = self.listener.accept() {
            if self.conns.len() >= MAX_CONNECTIONS {
                self.evict_one(ops);
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let fd = stream.as_raw_fd();
            let set =
                EventSet::IN | EventSet::OUT | EventSet::EDGE_TRIGGERED | EventSet::READ_HANG_UP;
            if ops.add(Events::with_data_raw(fd, CONN, set)).is_err() {
                continue;
            }
            let now = Instant::now();
            self.conns.insert(
                fd,
                Conn {
                    stream,
                    input: Vec::new(),
                    output: Vec::new(),
                    started: None,
                    last_active: now,
                    close_after_write: false,
                    sent_continue: false,
                },
            );
        }
    }

    /// Makes room: the connection idle longest goes.
    fn evict_one(&mut self, ops: &mut EventOps) {
        if let Some(&fd) = self
            .conns
            .iter()
            .min_by_key(|(_, c)| c.last_active)
            .map(|(fd, _)| fd)
        {
            self.close(fd, ops);
        }
    }

    /// Stops watching the connection, then closes it (in that order: the
    /// fd number may be reused at once).
    fn close(&mut self, fd: RawFd, ops: &mut EventOps) {
        if let Some(c) = self.conns.remove(&fd) {
            let _ = ops.remove(Events::empty_raw(fd));
            drop(c);
        }
    }

    /// Closes connections whose request has been arriving for too long.
    fn expire(&mut self, ops: &mut EventOps) {
        let now = Instant::now();
        let late: Vec<RawFd> = self
            .conns
            .iter()
            .filter(|(_, c)| c.started.is_some_and(|s| now - s > REQUEST_TIMEOUT))
            .map(|(fd, _)| *fd)
            .collect();
        for fd in late {
            self.close(fd, ops);
        }
    }

    fn serve(&mut self, fd: RawFd, events: EventSet, ops: &mut EventOps) {
        let Some(mut c) = self.conns.remove(&fd) else {
            return;
        };
        let keep = self.serve_conn(&mut c, events);
        self.conns.insert(fd, c);
        if !keep {
            self.close(fd, ops);
        }
    }

    /// Reads, answers every complete request, writes. False: close it.
    fn serve_conn(&mut self, c: &mut Conn, events: EventSet) -> bool {
        let mut eof = false;
        let mut buf = [0u8; 16384];
        loop {
            match c.stream.read(&mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    c.last_active = Instant::now();
                    c.started.get_or_insert(c.last_active);
                    c.input.extend_from_slice(&buf[..n]);
                    // Never hold more than one maximal request.
                    if c.input.len() > MAX_HEAD + self.max_body {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        while !c.close_after_write {
            match parse_head(&c.input, self.max_body) {
                Head::Incomplete => break,
                Head::WaitBody { expect_continue } => {
                    if expect_continue && !c.sent_continue {
                        c.output.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                        c.sent_continue = true;
                    }
                    break;
                }
                Head::Reject(resp) => {
                    c.output.extend(render(&resp, true));
                    c.close_after_write = true;
                }
                Head::Done(p) => {
                    c.input.drain(..p.consumed);
                    c.sent_continue = false;
                    c.started = (!c.input.is_empty()).then(Instant::now);
                    let resp = self.answer(&p);
                    c.output.extend(render(&resp, p.close));
                    c.close_after_write = p.close;
                }
            }
        }
        if c.output.len() > MAX_OUT {
            return false;
        }
        if !flush(c) {
            return false;
        }
        if c.close_after_write && c.output.is_empty() {
            return false;
        }
        // A client that hung up gets no more answers.
        !(eof || events.contains(EventSet::HANG_UP)) || !c.output.is_empty()
    }

    fn answer(&mut self, p: &Parsed) -> ApiResponse {
        match request::parse(&p.method, &p.path, &p.body) {
            Err(resp) => resp,
            Ok(req) => {
                log::debug!("API: {} {}", p.method, p.path);
                crate::faults::forbidden_call("api");
                if crate::faults::armed(crate::faults::API_PANIC) {
                    panic!("injected fault {}", crate::faults::API_PANIC);
                }
                if self.requests.send(req).is_err() || self.vmm_event.write(1).is_err() {
                    return ApiResponse::fault(503, "The VMM is not running.");
                }
                self.responses
                    .recv()
                    .unwrap_or_else(|_| ApiResponse::fault(503, "The VMM is not running."))
            }
        }
    }
}

/// Writes what the socket takes now. False: the connection broke.
fn flush(c: &mut Conn) -> bool {
    while !c.output.is_empty() {
        match c.stream.write(&c.output) {
            Ok(0) => return false,
            Ok(n) => {
                c.output.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
    true
}

fn parse_head(input: &[u8], max_body: usize) -> Head {
    if input.is_empty() {
        return Head::Incomplete;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head = match req.parse(input) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if input.len() > MAX_HEAD => {
            return Head::Reject(ApiResponse::bad_request(format!(
                "Request headers are larger than {MAX_HEAD} bytes."
            )))
        }
        Ok(httparse::Status::Partial) => return Head::Incomplete,
        Err(e) => {
            return Head::Reject(ApiResponse::bad_request(format!(
                "Malformed HTTP request: {e}."
            )))
        }
    };
    let mut length = 0usize;
    let mut close = req.version == Some(0);
    let mut expect_continue = false;
    for h in req.headers.iter() {
        let value = String::from_utf8_lossy(h.value);
        let value = value.trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            length = match value.parse() {
                Ok(n) => n,
                Err(_) => {
                    return Head::Reject(ApiResponse::bad_request(format!(
                        "Invalid Content-Length: {value}."
                    )))
                }
            };
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Head::Reject(ApiResponse::bad_request(
                "Transfer-Encoding is not supported; send a Content-Length.",
            ));
        } else if h.name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        } else if h.name.eq_ignore_ascii_case("expect") {
            expect_continue = value.eq_ignore_ascii_case("100-continue");
        }
    }
    if length > max_body {
        return Head::Reject(ApiResponse::fault(
            413,
            format!(
                "Request payload with size {length} is larger than the limit of {max_body} allowed by server."
            ),
        ));
    }
    if input.len() < head + length {
        return Head::WaitBody { expect_continue };
    }
    Head::Done(Parsed {
        method: req.method.unwrap_or("").to_string(),
        path: req.path.unwrap_or("").to_string(),
        body: input[head..head + length].to_vec(),
        close,
        consumed: head + length,
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        413 => "Payload Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

fn render(r: &ApiResponse, close: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nServer: Tsubame\r\n",
        r.status,
        reason(r.status)
    );
    if close {
        out += "Connection: close\r\n";
    }
    match &r.body {
        Some(body) => {
            out += &format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
        None if r.status == 204 => out += "\r\n",
        None => out += "Content-Length: 0\r\n\r\n",
    }
    out.into_bytes()
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
