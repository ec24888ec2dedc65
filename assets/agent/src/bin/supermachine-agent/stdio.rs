//! The modes that serve stdin/stdout instead of a listening socket.
//!
//! - `--exec-stdio`: one protocol-5 connection whose bytes arrive on stdin and leave on stdout
//!   (supermachine's runsc backend runs the agent this way inside the sandbox).
//! - `--tcp-stdio HOST PORT`: a plain byte bridge between stdin/stdout and a TCP peer, not the
//!   protocol (the runsc backend's port forward).
//!
//! A mode that cannot start or breaks off is an OS error naming the operation
//! ([`annotate`]), which `main` logs.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};

use crate::oserror::annotate;
use crate::server::serve_stream;
use crate::state::State;
use crate::{pid1, sys, Config};

/// Serves one connection on stdin/stdout, then returns.
pub fn exec_stdio(config: &Config, state: &'static State) -> io::Result<()> {
    pid1::become_subreaper();
    state
        .reaper
        .start()
        .map_err(|e| annotate(e, "start reaper thread".into()))?;
    // Duplicates, so the std handles stay usable.
    let reader = sys::dup_cloexec(0, "stdin")?;
    let writer = sys::dup_cloexec(1, "stdout")?;
    // Nothing else may write to stdout: it carries frames; fd 2 is the log.
    sys::dup2(2, 1)?;
    serve_stream(reader, writer, config, state);
    Ok(())
}

/// Copies stdin to the TCP peer and the peer to stdout until both directions end.
pub fn tcp_stdio(host: &str, port: u16) -> io::Result<()> {
    let sock = TcpStream::connect((host, port))
        .map_err(|e| annotate(e, format!("connect {host}:{port}")))?;
    let mut to_peer = sock
        .try_clone()
        .map_err(|e| annotate(e, "clone socket".into()))?;
    let upstream = std::thread::spawn(move || {
        let mut stdin = io::stdin().lock();
        let _ = io::copy(&mut stdin, &mut to_peer);
        let _ = to_peer.shutdown(Shutdown::Write);
    });
    let mut from_peer = sock;
    let mut stdout = io::stdout().lock();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from_peer.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if stdout
                    .write_all(&buf[..n])
                    .and_then(|()| stdout.flush())
                    .is_err()
                {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(annotate(e, format!("read {host}:{port}"))),
        }
    }
    let _ = upstream.join();
    Ok(())
}
