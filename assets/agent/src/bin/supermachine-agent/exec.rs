//! The `exec` operation: preparing a [`Spec`] from a request and running one exec session.
//!
//! One exec owns its connection until it ends. Threads: the connection thread reads stdin,
//! signal and resize frames; one pump per output stream sends stdout/stderr frames (a pump
//! reads the pipe only after its previous frame was written, which is the backpressure); a
//! waiter collects the exit status from the reaper, applies the timeout, waits for the pumps
//! to drain and sends `Exit`.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use supermachine_agent::codec::{self, CodecError};
use supermachine_agent::protocol::*;

use crate::server::{reply_error, Fault, Next, Writer};
use crate::spawn::{self, Spec, Stdio};
use crate::user::{self, Ident};

/// PATH of every exec unless the request sets its own.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn cstring(s: &str, what: &str) -> Result<CString, Fault> {
    CString::new(s).map_err(|_| {
        Fault::new(
            ErrorCode::InvalidArgument,
            format!("{what} contains a NUL byte"),
        )
    })
}

/// Finds `prog` in `path` the way execvp does: the first executable regular file.
fn lookup(prog: &str, path: &str) -> Option<String> {
    if prog.contains('/') {
        return Some(prog.to_string());
    }
    path.split(':').filter(|d| !d.is_empty()).find_map(|dir| {
        let cand = Path::new(dir).join(prog);
        let meta = std::fs::metadata(&cand).ok()?;
        (meta.is_file() && meta.permissions().mode() & 0o111 != 0)
            .then(|| cand.to_string_lossy().into_owned())
    })
}

/// Turns a request into a [`Spec`]: resolves the user, builds the environment, finds the binary.
pub fn prepare(req: &ExecRequest, capture: bool) -> Result<Spec, Fault> {
    let Some(prog) = req.argv.first().filter(|p| !p.is_empty()) else {
        return Err(Fault::new(
            ErrorCode::InvalidArgument,
            "exec: argv is empty",
        ));
    };
    let ident = match &req.user {
        Some(u) => {
            Some(user::resolve_in_root(u).map_err(|m| Fault::new(ErrorCode::InvalidArgument, m))?)
        }
        None => None,
    };
    let home = ident
        .as_ref()
        .unwrap_or(&Ident::root())
        .home
        .clone()
        .unwrap_or_else(|| "/".into());
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), DEFAULT_PATH.into()),
        ("HOME".into(), home.clone()),
    ];
    if req.tty.is_some() {
        env.push(("TERM".into(), "xterm".into()));
    }
    for kv in &req.env {
        let Some((k, v)) = kv.split_once('=').filter(|(k, _)| !k.is_empty()) else {
            return Err(Fault::new(
                ErrorCode::InvalidArgument,
                format!("exec: env entry {kv:?} is not KEY=VALUE"),
            ));
        };
        match env.iter_mut().find(|(ek, _)| ek == k) {
            Some(slot) => slot.1 = v.to_string(),
            None => env.push((k.to_string(), v.to_string())),
        }
    }
    let path_var = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or(DEFAULT_PATH, |(_, v)| v);
    let Some(path) = lookup(prog, path_var) else {
        return Err(Fault::new(
            ErrorCode::NotFound,
            format!("exec {prog:?}: not found in PATH={path_var}"),
        ));
    };
    let cwd = req.cwd.clone().unwrap_or_else(|| {
        if Path::new(&home).is_dir() {
            home
        } else {
            "/".into()
        }
    });
    Ok(Spec {
        path: cstring(&path, "exec path")?,
        argv: req
            .argv
            .iter()
            .map(|a| cstring(a, "exec argv"))
            .collect::<Result<_, _>>()?,
        envp: env
            .iter()
            .map(|(k, v)| cstring(&format!("{k}={v}"), "exec env"))
            .collect::<Result<_, _>>()?,
        cwd: cstring(&cwd, "exec cwd")?,
        ident,
        tty: req.tty,
        stdin: req.stdin,
        capture,
    })
}

/// Shared between the connection thread and the waiter.
struct Running {
    pid: i32,
    /// Set by the waiter (under `kill_lock`) once the pid has been reaped: after that the pid
    /// may be reused and must never be signalled.
    finished: AtomicBool,
    kill_lock: Mutex<()>,
}

impl Running {
    fn signal(&self, sig: i32) {
        let _g = self.kill_lock.lock().unwrap_or_else(|e| e.into_inner());
        if !self.finished.load(Ordering::SeqCst) {
            let _ = spawn::kill_group(self.pid, sig);
        }
    }
}

/// Sends every chunk read from `src` as a `ty` frame until EOF (or EIO, the pty's EOF).
fn pump(mut src: File, ty: FrameType, out: Writer) {
    let mut buf = vec![0u8; MAX_DATA_CHUNK];
    loop {
        match src.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                let mut w = out.lock().unwrap_or_else(|e| e.into_inner());
                if codec::write_frame(&mut *w, ty, &buf[..n]).is_err() {
                    // The client is gone; keep draining so the child never blocks on a full
                    // pipe before the connection thread kills it.
                    drop(w);
                    while matches!(src.read(&mut buf), Ok(n) if n > 0) {}
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Runs an exec on this connection and says how the connection goes on.
pub fn run(req: &ExecRequest, reader: &mut UnixStream, out: &Writer) -> Next {
    let spawned = prepare(req, true).and_then(|spec| {
        crate::reaper::spawn_registered(|| spawn::spawn(&spec)).map_err(Fault::from_io)
    });
    let (pid, stdio, exited) = match spawned {
        Ok(r) => r,
        // A refused exec leaves the connection serving.
        Err(f) => return reply_error(out, f),
    };
    let Stdio {
        stdin,
        stdout,
        stderr,
        pty,
    } = stdio;
    {
        let mut w = out.lock().unwrap_or_else(|e| e.into_inner());
        if codec::write_json(&mut *w, FrameType::Response, &ExecStarted { pid }).is_err() {
            drop(w);
            let _ = spawn::kill_group(pid, libc::SIGKILL);
            return Next::Close;
        }
    }
    let running = Arc::new(Running {
        pid,
        finished: AtomicBool::new(false),
        kill_lock: Mutex::new(()),
    });
    let pumps: Vec<_> = [(stdout, FrameType::Stdout), (stderr, FrameType::Stderr)]
        .into_iter()
        .filter_map(|(f, ty)| f.map(|f| (f, ty)))
        .filter_map(|(f, ty)| {
            let out = out.clone();
            std::thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || pump(f, ty, out))
                .ok()
        })
        .collect();
    let waiter = {
        let running = running.clone();
        let out = out.clone();
        let timeout = req.timeout_ms.map(Duration::from_millis);
        std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || wait(exited, timeout, running, pumps, out))
    };
    if waiter.is_err() {
        running.signal(libc::SIGKILL);
        return Next::Close;
    }
    input_loop(reader, stdin, pty, &running)
}

fn wait(
    exited: Receiver<ExitStatus>,
    timeout: Option<Duration>,
    running: Arc<Running>,
    pumps: Vec<std::thread::JoinHandle<()>>,
    out: Writer,
) {
    let mut timed_out = false;
    let status = match timeout {
        Some(t) => match exited.recv_timeout(t) {
            Ok(s) => Ok(s),
            Err(RecvTimeoutError::Timeout) => {
                timed_out = true;
                running.signal(libc::SIGKILL);
                exited.recv()
            }
            Err(RecvTimeoutError::Disconnected) => exited.recv(),
        },
        None => exited.recv(),
    };
    {
        let _g = running.kill_lock.lock().unwrap_or_else(|e| e.into_inner());
        running.finished.store(true, Ordering::SeqCst);
    }
    // Output written just before exit is still in the pipes: send all of it before `Exit`.
    for p in pumps {
        let _ = p.join();
    }
    let mut status = status.unwrap_or(ExitStatus {
        code: None,
        signal: Some(libc::SIGKILL),
        timed_out: false,
    });
    status.timed_out = timed_out;
    let mut w = out.lock().unwrap_or_else(|e| e.into_inner());
    let _ = codec::write_json(&mut *w, FrameType::Exit, &status);
}

/// Reads the client's frames during an exec.
fn input_loop(
    reader: &mut UnixStream,
    mut stdin: Option<File>,
    pty: Option<File>,
    running: &Running,
) -> Next {
    loop {
        let frame = match codec::read_frame(reader) {
            Ok(Some(f)) => f,
            // Unknown frame types are skipped; the stream is still in sync.
            Err(CodecError::UnknownType(_)) | Err(CodecError::BadJson { .. }) => continue,
            Ok(None) | Err(_) => {
                // The host went away: nobody will read the output, so end the process group.
                running.signal(libc::SIGKILL);
                return Next::Close;
            }
        };
        match frame.ty {
            FrameType::Stdin if frame.payload.is_empty() => {
                // In tty mode stdin is the pty itself: send EOF (^D) instead of closing it.
                if let (Some(_), Some(mut m)) = (&pty, stdin.take()) {
                    let _ = m.write_all(&[4]);
                }
            }
            FrameType::Stdin => {
                if let Some(s) = stdin.as_mut() {
                    if s.write_all(&frame.payload).is_err() {
                        // The process closed its stdin; drop the rest.
                        stdin = None;
                    }
                }
            }
            FrameType::Signal => {
                if let Ok(b) = frame.json::<SignalBody>() {
                    running.signal(b.signal);
                }
            }
            FrameType::Resize => {
                if let (Some(p), Ok(size)) = (&pty, frame.json::<TtySize>()) {
                    // The kernel sends SIGWINCH to the tty's foreground group itself.
                    let _ = spawn::resize(p, size);
                }
            }
            FrameType::Request if running.finished.load(Ordering::SeqCst) => {
                return Next::Frame(frame)
            }
            _ => {}
        }
    }
}
