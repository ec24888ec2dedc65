//! The fake agent and the helpers every case uses.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use supermachine_agent::client::{Client, Endpoint};
use supermachine_agent::codec::{self, encode, Frame};
use supermachine_agent::protocol::*;

/// The client's deadlines where a case must end by a deadline.
pub(crate) const T: Duration = Duration::from_millis(300);

/// The client's deadlines where a case must end by another error: far above [`BOUND`], so
/// that a case ending within the bound did not end by a deadline.
pub(crate) const PATIENT: Duration = Duration::from_secs(30);

/// What every case must finish within: the deadline plus slack for a loaded machine.
pub(crate) const BOUND: Duration = Duration::from_secs(5);

pub(crate) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub(crate) fn scratch() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "smk-hostile-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A fake agent: every accepted connection runs `script(stream, connection index)` on its own
/// thread.
pub(crate) struct Fake {
    pub(crate) dir: PathBuf,
    pub(crate) sock: PathBuf,
    pub(crate) conns: Arc<AtomicUsize>,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) accept: Option<JoinHandle<()>>,
}

impl Fake {
    pub(crate) fn start(script: impl Fn(UnixStream, usize) + Send + Sync + 'static) -> Fake {
        let dir = scratch();
        let sock = dir.join("fake.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let script = Arc::new(script);
        let conns = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let (conns, stop) = (conns.clone(), stop.clone());
            std::thread::spawn(move || {
                for s in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(s) = s else { continue };
                    let n = conns.fetch_add(1, Ordering::SeqCst);
                    let script = script.clone();
                    std::thread::spawn(move || script(s, n));
                }
            })
        };
        Fake {
            dir,
            sock,
            conns,
            stop,
            accept: Some(accept),
        }
    }

    /// A client whose deadlines are [`T`].
    pub(crate) fn quick(&self) -> Client {
        Client::new(Endpoint::Unix(self.sock.clone()))
            .with_connect_timeout(T)
            .with_control_timeout(T)
            .with_exec_idle_timeout(Some(T))
    }

    /// A client whose deadlines are [`PATIENT`].
    pub(crate) fn client(&self) -> Client {
        Client::new(Endpoint::Unix(self.sock.clone()))
            .with_connect_timeout(PATIENT)
            .with_control_timeout(PATIENT)
            .with_exec_idle_timeout(Some(PATIENT))
    }

    pub(crate) fn connections(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = UnixStream::connect(&self.sock);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `f`, asserting it took less than `bound`.
pub(crate) fn within<R>(bound: Duration, f: impl FnOnce() -> R) -> R {
    let t = Instant::now();
    let r = f();
    let took = t.elapsed();
    assert!(took < bound, "took {took:?}, bound {bound:?}");
    r
}

pub(crate) fn send(s: &mut UnixStream, kind: FrameKind, payload: &[u8]) {
    let _ = s.write_all(&encode(kind, payload));
}

pub(crate) fn exit_payload(code: u32) -> [u8; ExitStatus::LEN] {
    ExitStatus {
        code,
        peak_rss_kib: 1,
    }
    .encode()
}

/// The next REQUEST or CONTROL, skipping stdin and control frames; `None` at EOF.
pub(crate) fn next_request(s: &mut UnixStream) -> Option<Frame> {
    loop {
        let f = codec::read_frame(s).ok()??;
        if matches!(f.kind, FrameKind::Request | FrameKind::Control) {
            return Some(f);
        }
    }
}

/// Answers `f` as a well-behaved agent: a probe ack, or an exec that exits 0 at once.
pub(crate) fn answer(s: &mut UnixStream, f: &Frame) {
    match f.kind {
        FrameKind::Control => send(s, FrameKind::Control, br#"{"ok":true,"protocol":5}"#),
        _ => send(s, FrameKind::Exit, &exit_payload(0)),
    }
}

/// Reads and drops everything until the client closes: a silent agent.
pub(crate) fn linger(s: &mut UnixStream) {
    let mut buf = [0u8; 16 * 1024];
    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
}

/// Neither reads nor writes for longer than any case runs.
pub(crate) fn stall() {
    std::thread::sleep(Duration::from_secs(20));
}

/// A fake that reads one request and answers with `bytes`, then stays silent.
pub(crate) fn answering(bytes: Vec<u8>) -> Fake {
    Fake::start(move |mut s, _| {
        if next_request(&mut s).is_some() {
            let _ = s.write_all(&bytes);
            linger(&mut s);
        }
    })
}

pub(crate) fn sh(script: &str) -> ExecRequest {
    ExecRequest::new(["sh", "-c", script])
}
