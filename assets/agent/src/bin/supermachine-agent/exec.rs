//! REQUEST: one exec session — stage files, run `argv` and then each `chain` entry while they
//! exit 0, stream their output, answer with EXIT.
//!
//! Threads: the connection thread reads STDIN, SIGNAL and RESIZE frames; a runner starts each
//! step and waits for it; one pump per output stream sends STDOUT/STDERR frames (a pump reads
//! the pipe only after its previous frame was written, which is the backpressure). EXIT goes
//! out after every byte of output.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use supermachine_agent::codec::{self, CodecError};
use supermachine_agent::protocol::*;

use crate::server::{send_error, Fault, Next, Writer};
use crate::spawn::{self, SpawnError, Spec, Stdio};
use crate::user::{self, Ident};
use crate::{files, reaper};

/// PATH of every exec unless the request sets its own.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How a step ends whose program was not found or whose cwd could not be entered.
const NOT_RUN: ExitStatus = ExitStatus {
    code: 127,
    peak_rss_kib: 0,
};

/// How a step ends that SIGKILL stopped before (or without) its exit status reaching us.
const KILLED: ExitStatus = ExitStatus {
    code: 128 + libc::SIGKILL as u32,
    peak_rss_kib: 0,
};

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

/// What the request asks for, checked once for every step.
struct Plan {
    steps: Vec<Vec<String>>,
    ident: Option<Ident>,
    env: Vec<CString>,
    path_var: String,
    cwd: CString,
    tty: Option<WinSize>,
    deadline: Option<Instant>,
}

/// Sets `k` in `env`; an existing value stays unless `replace`.
fn set(env: &mut Vec<(String, String)>, k: &str, v: &str, replace: bool) {
    match env.iter_mut().find(|(ek, _)| ek == k) {
        Some(slot) if replace => slot.1 = v.to_string(),
        Some(_) => {}
        None => env.push((k.to_string(), v.to_string())),
    }
}

/// Checks the request and resolves user, environment and cwd.
fn plan(req: &ExecRequest) -> Result<Plan, Fault> {
    let bad = |m: String| Fault::new(ErrorCode::InvalidArgument, m);
    if req.argv.first().map_or(true, |p| p.is_empty()) {
        return Err(bad("REQUEST.argv is empty".into()));
    }
    if let Some(i) = req
        .chain
        .iter()
        .position(|s| s.first().map_or(true, |p| p.is_empty()))
    {
        return Err(bad(format!("REQUEST.chain[{i}] is empty")));
    }
    let ident = match &req.user {
        Some(u) => Some(user::resolve_in_root(u).map_err(bad)?),
        None => None,
    };
    let home = ident
        .as_ref()
        .unwrap_or(&Ident::root())
        .home
        .clone()
        .unwrap_or_else(|| "/".into());
    // The agent's own environment is the base, as supermachine's agent does: on x86 the launch
    // script exported the image's variables (from `run-workload`) before it became the agent;
    // on aarch64 init-oci passes the host's env. Then this agent's defaults, then the request.
    let mut env: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    set(&mut env, "PATH", DEFAULT_PATH, false);
    set(&mut env, "HOME", &home, ident.is_some());
    if req.tty {
        set(&mut env, "TERM", "xterm", true);
    }
    for (k, v) in &req.env {
        if k.is_empty() || k.contains('=') {
            return Err(bad(format!("REQUEST.env key {k:?} is not a variable name")));
        }
        set(&mut env, k, v, true);
    }
    let path_var = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or(DEFAULT_PATH.to_string(), |(_, v)| v.clone());
    // No cwd: the agent's own (`/` in a guest, as supermachine's agent does); with a `user`,
    // that user's home when it exists.
    let cwd = req.cwd.clone().unwrap_or_else(|| match &ident {
        Some(_) if Path::new(&home).is_dir() => home.clone(),
        _ => std::env::current_dir()
            .map(|d| d.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "/".into()),
    });
    Ok(Plan {
        steps: std::iter::once(req.argv.clone())
            .chain(req.chain.iter().cloned())
            .collect(),
        ident,
        env: env
            .iter()
            .map(|(k, v)| cstring(&format!("{k}={v}"), "REQUEST.env"))
            .collect::<Result<_, _>>()?,
        path_var,
        cwd: cstring(&cwd, "REQUEST.cwd")?,
        tty: req.tty.then(|| req.winsize()),
        deadline: req
            .timeout_ms
            .map(|ms| Instant::now() + Duration::from_millis(ms)),
    })
}

/// Either a [`Spec`] to run, or the reason the step exits 127 without running.
fn spec(plan: &Plan, argv: &[String]) -> Result<Result<Spec, String>, Fault> {
    let prog = &argv[0];
    let Some(path) = lookup(prog, &plan.path_var) else {
        return Ok(Err(format!("{prog}: command not found\n")));
    };
    Ok(Ok(Spec {
        path: cstring(&path, "REQUEST.argv")?,
        argv: argv
            .iter()
            .map(|a| cstring(a, "REQUEST.argv"))
            .collect::<Result<_, _>>()?,
        envp: plan.env.clone(),
        cwd: plan.cwd.clone(),
        ident: plan.ident.clone(),
        tty: plan.tty,
    }))
}

/// What the connection thread and the runner share.
#[derive(Default)]
struct Session {
    state: Mutex<Current>,
    /// Signalled when a step starts and when the exec finishes.
    changed: Condvar,
}

#[derive(Default)]
struct Current {
    /// The running step's pid; `None` between steps and once it has been reaped (the pid may
    /// then be reused and must never be signalled).
    pid: Option<i32>,
    /// The running step's stdin (pipe or pty master).
    stdin: Option<File>,
    /// The running step's pty master, for resizes.
    pty: Option<File>,
    /// The host sent EOF: later steps start with stdin closed.
    stdin_closed: bool,
    /// The host went away or the timeout fired: start no further step.
    stopped: bool,
    /// EXIT has been sent.
    finished: bool,
}

impl Session {
    fn lock(&self) -> std::sync::MutexGuard<'_, Current> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until a step runs (or none will): STDIN that arrives before the process exists
    /// must reach it, not vanish.
    fn running(&self) -> std::sync::MutexGuard<'_, Current> {
        let mut c = self.lock();
        while c.pid.is_none() && !c.finished && !c.stopped {
            c = self.changed.wait(c).unwrap_or_else(|e| e.into_inner());
        }
        c
    }

    fn signal(&self, sig: i32) {
        if let Some(pid) = self.lock().pid {
            let _ = spawn::kill_group(pid, sig);
        }
    }

    /// Kills the running step and prevents the next.
    fn stop(&self) {
        let mut c = self.lock();
        c.stopped = true;
        if let Some(pid) = c.pid {
            let _ = spawn::kill_group(pid, libc::SIGKILL);
        }
        drop(c);
        self.changed.notify_all();
    }
}

/// Sends every chunk read from `src` as a `kind` frame until EOF (or EIO, the pty's EOF).
fn pump(mut src: File, kind: FrameKind, out: Writer) {
    let mut buf = vec![0u8; MAX_DATA_CHUNK];
    loop {
        match src.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                let mut w = out.lock().unwrap_or_else(|e| e.into_inner());
                if codec::write_frame(&mut *w, kind, &buf[..n]).is_err() {
                    // The host is gone; keep draining so the child never blocks on a full
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

fn send(out: &Writer, kind: FrameKind, payload: &[u8]) {
    let mut w = out.lock().unwrap_or_else(|e| e.into_inner());
    let _ = codec::write_frame(&mut *w, kind, payload);
}

/// How one step ended.
enum Step {
    Exited(ExitStatus),
    /// The agent could not start it; the ERROR frame was sent.
    Failed,
}

/// Starts one step, streams its output, waits for it.
fn run_step(plan: &Plan, argv: &[String], session: &Session, out: &Writer) -> Step {
    let stderr_kind = if plan.tty.is_some() {
        FrameKind::Stdout
    } else {
        FrameKind::Stderr
    };
    let spec = match spec(plan, argv) {
        Ok(Ok(s)) => s,
        Ok(Err(why)) => {
            send(out, stderr_kind, why.as_bytes());
            return Step::Exited(NOT_RUN);
        }
        Err(f) => {
            send_error(out, &f.message);
            return Step::Failed;
        }
    };
    // Hold the session lock across the spawn: a SIGNAL or a disconnect then finds the pid.
    let mut cur = session.lock();
    if cur.stopped {
        return Step::Exited(KILLED);
    }
    let (pid, stdio, exited) = match reaper::spawn_registered(|| spawn::spawn(&spec)) {
        Ok(r) => r,
        Err(SpawnError::Child { stage, cause }) => {
            drop(cur);
            let what = match stage {
                "chdir" => format!("chdir {:?}", spec.cwd),
                _ => format!("{stage} {:?}", argv[0]),
            };
            send(
                out,
                stderr_kind,
                format!("agent: {what}: {cause}\n").as_bytes(),
            );
            return Step::Exited(NOT_RUN);
        }
        Err(SpawnError::Setup(e)) => {
            drop(cur);
            send_error(out, &format!("exec {:?}: {e}", argv[0]));
            return Step::Failed;
        }
    };
    let Stdio {
        stdin,
        stdout,
        stderr,
        pty,
    } = stdio;
    cur.pid = Some(pid);
    cur.stdin = if cur.stdin_closed {
        // EOF already came: a pty gets ^D, a pipe is simply closed.
        if let (Some(_), Some(mut m)) = (&pty, stdin) {
            let _ = m.write_all(&[4]);
        }
        None
    } else {
        stdin
    };
    cur.pty = pty;
    drop(cur);
    session.changed.notify_all();
    let pumps: Vec<_> = [(stdout, FrameKind::Stdout), (stderr, FrameKind::Stderr)]
        .into_iter()
        .filter_map(|(f, kind)| Some((f?, kind)))
        .filter_map(|(f, kind)| {
            let out = out.clone();
            std::thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || pump(f, kind, out))
                .ok()
        })
        .collect();
    let status = loop {
        let wait = plan
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()));
        let r = match wait {
            Some(w) => exited.recv_timeout(w),
            None => exited.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match r {
            Ok(s) => break s,
            Err(RecvTimeoutError::Timeout) => session.stop(),
            Err(RecvTimeoutError::Disconnected) => break KILLED,
        }
    };
    {
        let mut c = session.lock();
        c.pid = None;
        c.stdin = None;
        c.pty = None;
    }
    // Output written just before exit is still in the pipes: send all of it before EXIT.
    for p in pumps {
        let _ = p.join();
    }
    Step::Exited(status)
}

/// Runs the steps (`&&`) and sends EXIT with the last status.
fn run_steps(plan: Plan, session: Arc<Session>, out: Writer) {
    let mut last = ExitStatus::default();
    let mut peak = 0;
    for argv in &plan.steps {
        match run_step(&plan, argv, &session, &out) {
            Step::Exited(s) => {
                peak = peak.max(s.peak_rss_kib);
                last = s;
            }
            Step::Failed => {
                session.lock().finished = true;
                session.changed.notify_all();
                return;
            }
        }
        if last.code != 0 || session.lock().stopped {
            break;
        }
    }
    last.peak_rss_kib = peak;
    // A REQUEST or CONTROL read from now on is the host's next request (it can only come
    // after EXIT, which the Writer lock orders before any answer to it).
    session.lock().finished = true;
    session.changed.notify_all();
    send(&out, FrameKind::Exit, &last.encode());
}

/// Runs the exec in `payload` on this connection and says how the connection goes on.
pub fn run(payload: &[u8], reader: &mut File, out: &Writer) -> Next {
    let req: ExecRequest = match serde_json::from_slice(payload) {
        Ok(r) => r,
        Err(e) => return send_error(out, &format!("REQUEST JSON parse: {e}")),
    };
    let plan = match plan(&req).and_then(|p| files::stage(&req.stage_files).map(|()| p)) {
        Ok(p) => p,
        Err(f) => return send_error(out, &f.message),
    };
    let session = Arc::new(Session::default());
    let runner = {
        let session = session.clone();
        let out = out.clone();
        std::thread::Builder::new()
            .name("exec".into())
            .stack_size(128 * 1024)
            .spawn(move || run_steps(plan, session, out))
    };
    if let Err(e) = runner {
        return send_error(out, &format!("exec: cannot start a thread: {e}"));
    }
    input_loop(reader, &session)
}

/// Reads the host's frames during an exec.
fn input_loop(reader: &mut File, session: &Session) -> Next {
    loop {
        let frame = match codec::read_frame(reader) {
            Ok(Some(f)) => f,
            // Unknown frame kinds are skipped; the stream is still in sync.
            Err(CodecError::UnknownKind(_)) => continue,
            Ok(None) | Err(_) => {
                // The host went away: nobody will read the output, so end the process group.
                session.stop();
                return Next::Close;
            }
        };
        match frame.kind {
            FrameKind::Stdin => {
                let mut c = session.running();
                if frame.payload.is_empty() {
                    c.stdin_closed = true;
                    // In tty mode stdin is the pty itself: send EOF (^D) instead of closing it.
                    let stdin = c.stdin.take();
                    if let (Some(_), Some(mut m)) = (&c.pty, stdin) {
                        let _ = m.write_all(&[4]);
                    }
                    continue;
                }
                let Some(mut s) = c.stdin.take() else {
                    continue;
                };
                // Write without the lock: a child that reads slowly must not block signals.
                drop(c);
                if s.write_all(&frame.payload).is_ok() {
                    let mut c = session.lock();
                    if c.stdin.is_none() && !c.stdin_closed && c.pid.is_some() {
                        c.stdin = Some(s);
                    }
                }
                // On error the process closed its stdin; the rest is dropped.
            }
            FrameKind::Signal => {
                if let Some(&sig) = frame.payload.first() {
                    session.signal(i32::from(sig));
                }
            }
            FrameKind::Resize => {
                let c = session.lock();
                if let (Some(p), Some(size)) = (&c.pty, WinSize::decode(&frame.payload)) {
                    // The kernel sends SIGWINCH to the tty's foreground group itself.
                    let _ = spawn::resize(p, size);
                }
            }
            FrameKind::Request | FrameKind::Control if session.lock().finished => {
                return Next::Frame(frame)
            }
            _ => {}
        }
    }
}
