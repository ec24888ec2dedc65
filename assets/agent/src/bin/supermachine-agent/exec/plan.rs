//! A REQUEST checked once for all its steps: argv, user, environment, cwd, tty, deadline.
//!
//! A request that cannot run is an [`Error`] naming the field at fault.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fmt;
use std::os::fd::RawFd;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use supermachine_agent::protocol::*;

use crate::spawn::{Program, Spec};
use supermachine_guest::user::{self, Ident};

/// PATH of every exec unless the request sets its own.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why a REQUEST cannot run.
#[derive(Debug)]
pub enum Error {
    /// `argv` is empty or its program is an empty string.
    EmptyArgv,
    /// `chain[i]` is empty or its program is an empty string.
    EmptyChain(usize),
    /// `user` does not resolve in the guest's `/etc/passwd` and `/etc/group`.
    User(user::Error),
    /// An `env` key is empty or holds `=`.
    EnvKey(String),
    /// A string handed to execve holds a NUL byte; the field is named, e.g. `REQUEST.cwd`.
    Nul(&'static str),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::EmptyArgv => f.write_str("REQUEST.argv is empty"),
            Error::EmptyChain(i) => write!(f, "REQUEST.chain[{i}] is empty"),
            Error::User(e) => e.fmt(f),
            Error::EnvKey(k) => write!(f, "REQUEST.env key {k:?} is not a variable name"),
            Error::Nul(what) => write!(f, "{what} contains a NUL byte"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::User(e) => Some(e),
            _ => None,
        }
    }
}

fn cstring(s: &str, what: &'static str) -> Result<CString, Error> {
    CString::new(s).map_err(|_| Error::Nul(what))
}

/// Where the child looks for `prog`: the path itself when it has a `/`, else each
/// non-empty `PATH` directory joined with it, in order. The child tries them with `execve`, as
/// `execvp` does, instead of the agent `stat`ing each first: under TCG three cold `stat`s from
/// an idle agent took 263 µs (median of 480 execs of `true`), longer than the failed `execve`s
/// that replace them in the child, which runs the same kernel path warm. Relative directories
/// resolve from the exec's `cwd`, as they do for `execvp` after `chdir`.
fn program(prog: &str, path: &str) -> Result<Program, Error> {
    if prog.contains('/') {
        return Ok(Program::Path(cstring(prog, "REQUEST.argv")?));
    }
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|dir| {
            cstring(
                &format!("{}/{prog}", dir.trim_end_matches('/')),
                "REQUEST.argv",
            )
        })
        .collect::<Result<_, _>>()
        .map(Program::Search)
}

/// The agent's own environment, read once: nothing in the agent changes it after start.
fn agent_env() -> &'static [(String, String)] {
    static ENV: OnceLock<Vec<(String, String)>> = OnceLock::new();
    ENV.get_or_init(|| {
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect()
    })
}

/// The agent's working directory (`/` in a guest), read once: the agent never changes it.
fn agent_cwd() -> &'static str {
    static CWD: OnceLock<String> = OnceLock::new();
    CWD.get_or_init(|| {
        std::env::current_dir()
            .map(|d| d.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "/".into())
    })
}

/// What the request asks for, checked once for every step.
pub struct Plan {
    /// `argv`, then each `chain` entry.
    pub steps: Vec<Vec<String>>,
    ident: Option<Ident>,
    env: Environment,
    cwd: CString,
    /// The terminal size, when the exec runs on a tty.
    pub tty: Option<WinSize>,
    /// When `timeout_ms` runs out.
    pub deadline: Option<Instant>,
}

/// The environment of a step, and the `PATH` in it that finds its program.
#[derive(Clone)]
struct Environment {
    vars: Arc<[CString]>,
    path: Arc<str>,
}

/// The environment the request's fields make of the agent's own: `PATH` (kept if the agent
/// has one), `HOME` (replaced when `user` is set), `TERM` on a tty, then the request's `env`.
fn environment(
    home: &str,
    user_set: bool,
    tty: bool,
    extra: &BTreeMap<String, String>,
) -> Result<Environment, Error> {
    // The agent's own environment is the base, as supermachine's agent does: on x86 the launch
    // script exported the image's variables (from `run-workload`) before it became the agent;
    // on aarch64 init-oci passes the host's env. Then this agent's defaults, then the request.
    let mut env = agent_env().to_vec();
    set(&mut env, "PATH", DEFAULT_PATH, false);
    set(&mut env, "HOME", home, user_set);
    if tty {
        set(&mut env, "TERM", "xterm", true);
    }
    for (k, v) in extra {
        if k.is_empty() || k.contains('=') {
            return Err(Error::EnvKey(k.clone()));
        }
        set(&mut env, k, v, true);
    }
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or(DEFAULT_PATH, |(_, v)| v.as_str())
        .into();
    let vars = env
        .iter()
        .map(|(k, v)| cstring(&format!("{k}={v}"), "REQUEST.env"))
        .collect::<Result<_, _>>()?;
    Ok(Environment { vars, path })
}

/// The environment of a request that sets none of `user`, `tty` and `env` (most execs), made
/// once: building it was a tenth of the agent's own time in an exec of `true` under TCG.
fn default_environment() -> Result<Environment, Error> {
    static DEFAULT: OnceLock<Result<Environment, String>> = OnceLock::new();
    DEFAULT
        .get_or_init(|| {
            environment(&home_of(None), false, false, &BTreeMap::new()).map_err(|e| e.to_string())
        })
        .clone()
        // Only a NUL byte in the agent's own environment gets here.
        .map_err(|_| Error::Nul("the agent's environment"))
}

/// `HOME` for `ident`, root's without one; `/` for a user without a home.
fn home_of(ident: Option<&Ident>) -> String {
    match ident {
        Some(i) => i.home.clone(),
        None => Ident::root().home,
    }
    .unwrap_or_else(|| "/".into())
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
pub fn plan(req: &ExecRequest) -> Result<Plan, Error> {
    if req.argv.first().map_or(true, |p| p.is_empty()) {
        return Err(Error::EmptyArgv);
    }
    if let Some(i) = req
        .chain
        .iter()
        .position(|s| s.first().map_or(true, |p| p.is_empty()))
    {
        return Err(Error::EmptyChain(i));
    }
    let ident = match &req.user {
        Some(u) => Some(user::resolve_in_root(u).map_err(Error::User)?),
        None => None,
    };
    let env = if ident.is_none() && !req.tty && req.env.is_empty() {
        default_environment()?
    } else {
        environment(&home_of(ident.as_ref()), ident.is_some(), req.tty, &req.env)?
    };
    // No cwd: the agent's own (`/` in a guest, as supermachine's agent does); with a `user`,
    // that user's home when it exists.
    let cwd = req.cwd.clone().unwrap_or_else(|| {
        let user_home = ident.is_some().then(|| home_of(ident.as_ref()));
        user_home
            .filter(|home| Path::new(home).is_dir())
            .unwrap_or_else(|| agent_cwd().to_string())
    });
    Ok(Plan {
        steps: std::iter::once(req.argv.clone())
            .chain(req.chain.iter().cloned())
            .collect(),
        ident,
        env,
        cwd: cstring(&cwd, "REQUEST.cwd")?,
        tty: req.tty.then(|| req.winsize()),
        deadline: req
            .timeout_ms
            .map(|ms| Instant::now() + Duration::from_millis(ms)),
    })
}

/// The [`Spec`] of one step (argv[0] is found along `PATH` by the child).
pub fn spec(plan: &Plan, argv: &[String], cgroup_procs: Option<RawFd>) -> Result<Spec, Error> {
    Ok(Spec {
        program: program(&argv[0], &plan.env.path)?,
        argv: argv
            .iter()
            .map(|a| cstring(a, "REQUEST.argv"))
            .collect::<Result<_, _>>()?,
        envp: plan.env.vars.clone(),
        cwd: plan.cwd.clone(),
        ident: plan.ident.clone(),
        tty: plan.tty,
        cgroup_procs,
    })
}
