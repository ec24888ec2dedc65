//! The running agent every test drives, and helpers for raw frames and CONTROL acks.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use supermachine_agent::client::{Client, Endpoint};
use supermachine_agent::codec::{self, encode};
use supermachine_agent::protocol::*;

pub(crate) fn agent_bin() -> PathBuf {
    // SUPERMACHINE_AGENT_BIN runs the suite against another build, e.g. the shipped static
    // binary (`cargo xtask test` does both).
    std::env::var_os("SUPERMACHINE_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_supermachine-agent").into())
}

pub(crate) fn scratch(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "smk-agent-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A running agent that is killed (and its socket dir removed) on drop.
pub(crate) struct Agent {
    pub(crate) child: Child,
    pub(crate) dir: PathBuf,
    pub(crate) client: Client,
}

impl Agent {
    pub(crate) fn start() -> Agent {
        let dir = scratch("unix");
        let sock = dir.join("agent.sock");
        let child = Command::new(agent_bin())
            .arg("--listen")
            .arg(format!("unix:{}", sock.display()))
            // Execs start from the agent's own environment (the launch script's exports).
            .env("SM_AGENT_BASE", "inherited")
            .spawn()
            .unwrap();
        let client = Client::new(Endpoint::Unix(sock));
        client
            .wait_ready(Duration::from_secs(20))
            .expect("agent ready");
        Agent { child, dir, client }
    }

    /// A raw connection, for speaking bad protocol on purpose.
    pub(crate) fn raw(&self) -> UnixStream {
        let s = UnixStream::connect(self.dir.join("agent.sock")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    }

    pub(crate) fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(crate) fn sh(script: &str) -> ExecRequest {
    ExecRequest::new(["sh", "-c", script])
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Reads one frame from a raw connection.
pub(crate) fn frame(s: &mut impl Read) -> codec::Frame {
    codec::read_frame(s).unwrap().expect("a frame, not EOF")
}

/// The text of the ERROR frame the agent must send next.
pub(crate) fn error_text(s: &mut impl Read) -> String {
    let f = frame(s);
    assert_eq!(
        f.kind,
        FrameKind::Error,
        "{:?}",
        String::from_utf8_lossy(&f.payload)
    );
    String::from_utf8(f.payload).unwrap()
}

/// The JSON of the CONTROL ack the agent must send next.
pub(crate) fn ack(s: &mut impl Read) -> serde_json::Value {
    let f = frame(s);
    assert_eq!(f.kind, FrameKind::Control);
    serde_json::from_slice(&f.payload).unwrap()
}

pub(crate) fn control(a: &Agent, body: serde_json::Value) -> serde_json::Value {
    let mut s = a.raw();
    s.write_all(&encode(FrameKind::Control, body.to_string().as_bytes()))
        .unwrap();
    ack(&mut s)
}
