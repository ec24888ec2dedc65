//! `cargo xtask run [--arch x86_64|aarch64] [--rootfs DIR|TAR|OCI-LAYOUT] [--mem MiB] [--cpus N] [--tty] -- CMD ARGS…`
//!
//! Boots the bundled assets, runs CMD through the agent over virtio-vsock, streams its output
//! live, powers the VM off and exits with CMD's exit code (128+N for a signal, 127 when CMD is
//! not found).

use std::io::{IsTerminal, Read, Write};

use anyhow::{bail, Context, Result};
use supermachine_agent::client::Event;
use supermachine_agent::protocol::ExecRequest;

use crate::setup;
use crate::vm::{self, rootfs};

/// Parsed arguments.
#[derive(Debug)]
pub struct Args {
    opts: vm::Options,
    tty: bool,
    argv: Vec<String>,
}

/// Parses the arguments after `run`.
pub fn parse(args: Vec<String>) -> Result<Args> {
    let mut a = Args {
        opts: vm::Options::default(),
        tty: false,
        argv: Vec::new(),
    };
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let mut value = |f: &str| it.next().with_context(|| format!("run: {f} needs a value"));
        match arg.as_str() {
            "--" => {
                a.argv = it.collect();
                break;
            }
            "--arch" => {
                let v = value("--arch")?;
                match crate::spec::Arch::parse(&v)?[..] {
                    [arch] => a.opts.arch = arch,
                    _ => bail!("run: --arch {v}: name one arch, x86_64 or aarch64"),
                }
            }
            "--rootfs" => a.opts.rootfs = rootfs::Source::parse(&value("--rootfs")?)?,
            "--mem" => a.opts.mem_mib = value("--mem")?.parse().context("run: --mem MiB")?,
            "--cpus" => a.opts.cpus = value("--cpus")?.parse().context("run: --cpus N")?,
            "--tty" => a.tty = true,
            other => bail!("run: unknown option {other} (the command goes after `--`)"),
        }
    }
    if a.argv.is_empty() {
        bail!("run: no command; usage: cargo xtask run [options] -- CMD ARGS...");
    }
    if !(16..=65536).contains(&a.opts.mem_mib) || !(1..=64).contains(&a.opts.cpus) {
        bail!("run: --mem must be 16..=65536 MiB and --cpus 1..=64");
    }
    Ok(a)
}

/// Puts the host terminal in raw mode; restores it on drop.
struct RawTerminal(Option<libc::termios>);

impl RawTerminal {
    fn enable() -> RawTerminal {
        // SAFETY: termios is plain data; tcgetattr fills it for fd 0.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return RawTerminal(None);
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(0, libc::TCSANOW, &t);
            RawTerminal(Some(saved))
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(t) = self.0 {
            // SAFETY: restoring the attributes read in `enable`.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        }
    }
}

/// The host terminal's (rows, cols), else 24×80.
fn host_tty_size() -> (u16, u16) {
    // SAFETY: winsize is plain data; TIOCGWINSZ fills it.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer for TIOCGWINSZ on stdout.
    if unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) } == 0 && ws.ws_row > 0 {
        (ws.ws_row, ws.ws_col)
    } else {
        (24, 80)
    }
}

/// Runs the command; returns the exit code for the process.
pub fn run(args: Vec<String>) -> Result<i32> {
    let a = parse(args)?;
    setup::run()?;
    vm::install_signal_cleanup();
    let guest = vm::boot(&a.opts)?;
    let mut req = ExecRequest::new(a.argv.clone());
    if let Some(img) = &guest.image {
        req.env = img
            .env_pairs()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        req.cwd = img.working_dir.clone().filter(|s| !s.is_empty());
        req.user = img.user.clone().filter(|s| !s.is_empty());
    }
    let stdin_is_tty = std::io::stdin().is_terminal();
    // Piped input goes to the command; an interactive terminal without --tty does not (the
    // command gets EOF at once).
    let forward_stdin = a.tty || !stdin_is_tty;
    if a.tty {
        let (rows, cols) = host_tty_size();
        req.tty = true;
        req.rows = Some(rows);
        req.cols = Some(cols);
    }
    let code = match guest.client.exec(&req) {
        Ok(mut exec) => {
            let _raw = (a.tty && stdin_is_tty).then(RawTerminal::enable);
            let mut input = exec.input()?;
            if !forward_stdin {
                input.close()?;
            } else {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    let mut stdin = std::io::stdin().lock();
                    loop {
                        match stdin.read(&mut buf) {
                            Ok(0) | Err(_) => {
                                let _ = input.close();
                                return;
                            }
                            Ok(n) => {
                                if input.write(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
            let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
            loop {
                match exec.next_event()? {
                    Event::Stdout(b) => {
                        out.write_all(&b)?;
                        out.flush()?;
                    }
                    Event::Stderr(b) => {
                        err.write_all(&b)?;
                        err.flush()?;
                    }
                    Event::Exit(s) => break s.code as i32,
                }
            }
        }
        Err(e) => {
            let logs = guest.vm.logs();
            drop(guest);
            bail!("run: exec failed: {e}\n{logs}");
        }
    };
    guest.shutdown()?;
    Ok(code)
}
