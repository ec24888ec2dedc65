//! Accept loop and dispatcher: the first frame of each request picks REQUEST (an
//! [`exec`](crate::exec)) or CONTROL (one [`control`](crate::control) action and its ack). The
//! wire vocabulary and the mapping of errors to ERROR frames and acks are the
//! [`edge`](crate::edge)'s.
//!
//! Each connection runs on its own thread inside `catch_unwind`, so a fault in one never
//! reaches another or the accept loop.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use supermachine_agent::codec::{self, CodecError, Frame};
use supermachine_agent::protocol::*;
use supermachine_agent::transport::{Listener, Peer, VMADDR_CID_HOST};

use crate::edge::{send_error, Next, Writer};
use crate::inbox::Inbox;
use crate::state::State;
use crate::{control, exec, log, park, Config};

/// Connections served at once; further ones get an ERROR frame and are closed.
const MAX_CONNECTIONS: usize = 256;

/// A client has this long to send its first frame, so silent clients cannot pin threads.
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// Refused connections logged per second at most: any guest process can make the agent
/// refuse a connection, and the console is shared.
const REFUSALS_LOGGED_PER_SEC: u32 = 5;

/// Why a connection's next request is refused; it gets this as an ERROR frame.
#[derive(Debug)]
enum Refusal {
    /// The frame is neither REQUEST nor CONTROL.
    WrongFirst(u8),
    /// No frame arrived within [`FIRST_FRAME_TIMEOUT`].
    Silent,
    /// The frame's length field is above the maximum.
    TooLong(CodecError),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::WrongFirst(kind) => write!(
                f,
                "first frame must be REQUEST(0xff) or CONTROL(0xfe), got 0x{kind:x}"
            ),
            Refusal::Silent => write!(
                f,
                "timed out: no REQUEST or CONTROL within {} s",
                FIRST_FRAME_TIMEOUT.as_secs()
            ),
            Refusal::TooLong(e) => e.fmt(f),
        }
    }
}

/// Only the host may talk to the agent: a vsock peer must be `VMADDR_CID_HOST`. Processes in
/// the guest reach the agent only as the local CID (or `VMADDR_CID_LOCAL`) and are refused.
fn allowed(peer: Peer) -> bool {
    match peer {
        Peer::Vsock(cid) => cid == VMADDR_CID_HOST,
        Peer::Unix => true,
    }
}

/// The server's state between connections (part of [`crate::state::State`]).
#[derive(Debug)]
pub struct Connections {
    /// Idle connection threads, each waiting for its next connection.
    idle: Mutex<Vec<IdleWorker>>,
    /// The refusal log's budget: (this second, refusals seen in it).
    refusals: Mutex<(u64, u32)>,
}

impl Connections {
    /// No idle thread, no refusal yet.
    pub const fn new() -> Connections {
        Connections {
            idle: Mutex::new(Vec::new()),
            refusals: Mutex::new((0, 0)),
        }
    }

    fn idle(&self) -> MutexGuard<'_, Vec<IdleWorker>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Logs a refusal unless this second's budget is spent.
fn log_refusal(connections: &Connections, peer: Peer) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut w = connections
        .refusals
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if w.0 != now {
        if w.1 > REFUSALS_LOGGED_PER_SEC {
            log!(
                "{} more refused connections not logged",
                w.1 - REFUSALS_LOGGED_PER_SEC
            );
        }
        *w = (now, 0);
    }
    w.1 += 1;
    if w.1 <= REFUSALS_LOGGED_PER_SEC {
        log!("refused connection from {peer:?}: only the host (CID {VMADDR_CID_HOST}) may connect");
    }
}

/// Serves forever. Accept errors (EMFILE, ENOMEM) are logged and retried, never fatal.
pub fn serve(listener: Listener, config: Arc<Config>, state: &'static State) -> ! {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(c) => c,
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    log!("accept: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
                continue;
            }
        };
        if !allowed(peer) {
            log_refusal(&state.connections, peer);
            continue;
        }
        if active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
            let mut s = stream;
            let msg = format!("busy: the agent is serving {MAX_CONNECTIONS} connections");
            let _ = codec::write_frame(&mut s, FrameKind::Error, msg.as_bytes());
            continue;
        }
        active.fetch_add(1, Ordering::SeqCst);
        dispatch(stream, &config, state, &active);
    }
}

/// An idle connection thread, waiting for its next connection.
type IdleWorker = SyncSender<UnixStream>;

/// Idle connection threads kept: starting a thread (stack, TLS, clone) is a visible part of an
/// exec's round trip under TCG, and supermachine opens a connection per exec, one at a time.
const IDLE_WORKERS: usize = 1;

/// Hands `stream` to an idle connection thread, or starts one.
fn dispatch(
    stream: UnixStream,
    config: &Arc<Config>,
    state: &'static State,
    active: &Arc<AtomicUsize>,
) {
    let idle = state.connections.idle().pop();
    let stream = match idle {
        Some(w) => match w.send(stream) {
            Ok(()) => return,
            // That thread is gone (it never is while listed, but the stream must not be lost).
            Err(e) => e.0,
        },
        None => stream,
    };
    let (config, counter) = (config.clone(), active.clone());
    let spawned = std::thread::Builder::new()
        .name("conn".into())
        .stack_size(256 * 1024)
        .spawn(move || worker(stream, &config, state, &counter));
    if let Err(e) = spawned {
        // The stream went with the failed closure and is closed.
        active.fetch_sub(1, Ordering::SeqCst);
        log!("cannot start connection thread: {e}");
    }
}

/// Serves connections: the first, then whichever the accept loop hands over while idle.
fn worker(first: UnixStream, config: &Config, state: &'static State, active: &AtomicUsize) {
    let (tx, rx) = mpsc::sync_channel(1);
    let mut stream = first;
    loop {
        serve_connection(stream, config, state);
        active.fetch_sub(1, Ordering::SeqCst);
        {
            let mut idle = state.connections.idle();
            if idle.len() >= IDLE_WORKERS {
                return;
            }
            idle.push(tx.clone());
        }
        match rx.recv() {
            Ok(s) => stream = s,
            Err(_) => return,
        }
    }
}

/// Serves one socket connection to its end.
fn serve_connection(stream: UnixStream, config: &Config, state: &'static State) {
    let Ok(writer) = stream.try_clone() else {
        return;
    };
    serve_stream(
        File::from(OwnedFd::from(stream)),
        File::from(OwnedFd::from(writer)),
        config,
        state,
    );
}

/// Serves one connection, reading `reader` and answering on `writer`, to its end; a panic in
/// a handler drops only this connection.
pub fn serve_stream(reader: File, writer: File, config: &Config, state: &'static State) {
    // Non-blocking for the connection's life: an exec's poll loop reads and writes it without
    // blocking, and other writes wait in poll (edge::Blocking). Set once, not per exec.
    for f in [&reader, &writer] {
        if let Err(e) = crate::sys::set_nonblocking(f.as_raw_fd()) {
            log!("connection: {e}");
            return;
        }
    }
    let out: Writer = Arc::new(Mutex::new(writer));
    if panic::catch_unwind(AssertUnwindSafe(|| handle(reader, &out, config, state))).is_err() {
        log!("connection handler panicked; connection dropped, agent still serving");
    }
}

/// Reads the next request frame, with the first-frame deadline. `None`: close.
fn next_request(reader: &mut Inbox, out: &Writer) -> Option<Frame> {
    let r = reader.read_frame_within(FIRST_FRAME_TIMEOUT);
    let refusal = match r {
        Ok(Some(f)) => return Some(f),
        Ok(None) => return None,
        Err(CodecError::UnknownKind(k)) => Refusal::WrongFirst(k),
        Err(CodecError::Io(e))
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Refusal::Silent
        }
        Err(e @ CodecError::TooLong(_)) => Refusal::TooLong(e),
        Err(_) => return None,
    };
    send_error(out, refusal);
    None
}

fn handle(reader: File, out: &Writer, config: &Config, state: &'static State) {
    let mut reader = Inbox::new(reader);
    // After an exec, STDIN, SIGNAL and RESIZE frames the host sent before it saw EXIT (the EOF
    // sent with the REQUEST, when the program was not even found) still arrive; they belong to
    // that exec, not to the next request, and are skipped.
    let mut after_exec = false;
    loop {
        let Some(frame) = next_request(&mut reader, out) else {
            return;
        };
        park::unpin_if_released(&state.parking);
        let next = match frame.kind {
            FrameKind::Request => {
                after_exec = true;
                exec::run(&frame.payload, &mut reader, out, config, state)
                    .unwrap_or_else(|e| send_error(out, e))
            }
            FrameKind::Control => {
                after_exec = false;
                control::answer(&frame.payload, out, config, state)
            }
            FrameKind::Stdin | FrameKind::Signal | FrameKind::Resize if after_exec => Next::Read,
            k => {
                send_error(out, Refusal::WrongFirst(k as u8));
                Next::Close
            }
        };
        if let Next::Close = next {
            return;
        }
    }
}
