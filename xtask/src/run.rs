//! `cargo xtask run [--arch x86_64|aarch64] [--rootfs DIR|TAR|OCI-LAYOUT] [--mem MiB] [--cpus N] [--tty] [--sm-vsock] [-- CMD ARGS…]`
//!
//! Boots the bundled assets, runs CMD through the agent over virtio-vsock, streams its output
//! live, powers the VM off and exits with CMD's exit code (128+N for a signal, 127 when CMD is
//! not found).
//!
//! With no CMD it runs the image's own command, as `docker run IMAGE` does ([`Plan::new`]):
//! an OCI layout's `Entrypoint ++ Cmd` with its `Env`, `WorkingDir` and `User`; the default
//! rootfs's `sh`.

use std::io::{IsTerminal, Read, Write};

use anyhow::{bail, Context, Result};
use supermachine_agent::client::{shell_code, Event};
use supermachine_agent::protocol::ExecRequest;

use crate::vm::{self, bake, rootfs};
use crate::{flags, setup};

/// The VM options `flags` ask for: the defaults of [`vm::Options`] where a flag is absent.
fn options(f: &flags::Run) -> Result<vm::Options> {
    let mut opts = vm::Options::default();
    if let Some(arch) = f.arch {
        opts.arch = arch;
    }
    if let Some(r) = &f.rootfs {
        opts.rootfs = rootfs::Source::parse(r)?;
    }
    if let Some(m) = f.mem_mib {
        opts.mem_mib = m;
    }
    if let Some(c) = f.cpus {
        opts.cpus = c;
    }
    if f.sm_vsock {
        opts.vsock_device = vm::qemu::VsockDevice::Supermachine;
    }
    Ok(opts)
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

/// What `run` boots and execs.
#[derive(Debug)]
pub struct Plan {
    /// How to boot.
    pub opts: vm::Options,
    argv: Vec<String>,
    /// The image config of a command taken from the image.
    image: Option<rootfs::ImageConfig>,
    /// The OCI image unpacked for that command; removed on drop.
    stage: Option<std::path::PathBuf>,
}

impl Plan {
    /// The plan for `argv` on `opts`. An empty `argv` means the image's own command, once:
    /// - an OCI layout: `Entrypoint ++ Cmd`, with its `Env`, `WorkingDir` and `User`, run
    ///   through the agent (so that its output streams, its exit code is `run`'s and `User`
    ///   applies). The layout is unpacked without supermachine's boot-time
    ///   `/.supermachine/run-workload`, which would start the same command a second time.
    ///   On aarch64 init-oci still starts its workload, the rootfs default `sh` with stdin on
    ///   `/dev/null`, which ends at once;
    /// - the default rootfs: `sh`, the command of the busybox image it stands for;
    /// - a directory or tarball has no image config: an error.
    pub fn new(opts: vm::Options, argv: Vec<String>) -> Result<Plan> {
        if !argv.is_empty() {
            return Ok(Plan {
                opts,
                argv,
                image: None,
                stage: None,
            });
        }
        let layout = match &opts.rootfs {
            rootfs::Source::Oci(layout) => layout.clone(),
            rootfs::Source::Default => {
                return Ok(Plan {
                    opts,
                    argv: bake::Workload::busybox().cmd,
                    image: None,
                    stage: None,
                })
            }
            rootfs::Source::Dir(p) | rootfs::Source::Tar(p) => bail!(
                "run: no command, and --rootfs {} has no image config to take one from; \
                 give it after `--`",
                p.display()
            ),
        };
        let stage = vm::scratch_dir();
        let mut plan = Plan {
            opts,
            argv: Vec::new(),
            image: None,
            stage: Some(stage.clone()),
        };
        std::fs::create_dir_all(&stage).with_context(|| format!("create {}", stage.display()))?;
        let config = rootfs::unpack_oci(&layout, &stage)?;
        plan.argv = config.argv();
        if plan.argv.is_empty() {
            bail!(
                "run: the image {} sets neither Entrypoint nor Cmd; give a command after `--`",
                layout.display()
            );
        }
        // aarch64's agent takes its environment from the host's env service: the image's.
        plan.opts.bake.host_env = Some(bake::HostEnv::from_image(Some(&config)));
        plan.opts.rootfs = rootfs::Source::Dir(stage);
        plan.image = Some(config);
        Ok(plan)
    }

    /// The exec: the plan's argv with the image's `Env`, `WorkingDir` and `User` (those of
    /// `booted`, the booted guest's OCI image, when the command was given).
    pub fn request(&self, booted: Option<&rootfs::ImageConfig>) -> ExecRequest {
        let mut req = ExecRequest::new(self.argv.clone());
        if let Some(img) = self.image.as_ref().or(booted) {
            req.env = img
                .env_pairs()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            req.cwd = img.working_dir.clone().filter(|s| !s.is_empty());
            req.user = img.user.clone().filter(|s| !s.is_empty());
        }
        req
    }
}

impl Drop for Plan {
    fn drop(&mut self) {
        if let Some(dir) = &self.stage {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Runs the command; returns the exit code for the process.
pub fn run(a: flags::Run) -> Result<i32> {
    let opts = options(&a)?;
    setup::for_run(opts.arch)?;
    vm::install_signal_cleanup();
    let plan = Plan::new(opts, a.argv)?;
    let guest = vm::boot(&plan.opts)?;
    let mut req = plan.request(guest.image.as_ref());
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
    // The user watches and can interrupt: no idle deadline (a quiet `sleep 600` is fine).
    let client = guest.client.clone().with_exec_idle_timeout(None);
    let code = match client.exec(&req) {
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
                    // Saturated: a guest's code of 256 must not pass for 0.
                    Event::Exit(s) => break shell_code(&s),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_command_takes_the_images_and_stages_it_without_run_workload() {
        let dir = crate::util::build_dir().join(format!("run-plan-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("tree/srv")).unwrap();
        rootfs::tar_dir(&dir.join("tree"), &dir.join("layer.tar")).unwrap();
        let config = serde_json::json!({"config": {
            "Entrypoint": ["/bin/sh", "-c"], "Cmd": ["echo hi"],
            "Env": ["A=1", "B=x=y"], "WorkingDir": "/srv", "User": "app",
        }});
        let layout = dir.join("layout");
        let layer = std::fs::read(dir.join("layer.tar")).unwrap();
        rootfs::write_oci_layout(&layout, &[layer], &config).unwrap();
        let opts = vm::Options {
            rootfs: rootfs::Source::Oci(layout.clone()),
            ..vm::Options::default()
        };
        let plan = Plan::new(opts, Vec::new()).unwrap();
        let req = plan.request(None);
        assert_eq!(req.argv, ["/bin/sh", "-c", "echo hi"]);
        assert_eq!(req.env.get("B").map(String::as_str), Some("x=y"));
        assert_eq!(req.cwd.as_deref(), Some("/srv"));
        assert_eq!(req.user.as_deref(), Some("app"));
        let rootfs::Source::Dir(stage) = &plan.opts.rootfs else {
            panic!("{:?}", plan.opts.rootfs)
        };
        let stage = stage.clone();
        assert!(stage.join("srv").is_dir());
        assert!(!stage.join(rootfs::RUN_WORKLOAD).exists());
        drop(plan);
        assert!(!stage.exists(), "the staged image outlived the plan");

        // A given command keeps the booted image's settings; the default rootfs runs `sh`;
        // a directory has no command to offer.
        let booted = rootfs::ImageConfig {
            user: Some("nobody".into()),
            ..Default::default()
        };
        let plan = Plan::new(vm::Options::default(), vec!["id".into()]).unwrap();
        assert_eq!(plan.request(Some(&booted)).user.as_deref(), Some("nobody"));
        let plan = Plan::new(vm::Options::default(), Vec::new()).unwrap();
        assert_eq!(plan.request(None).argv, ["sh"]);
        let opts = vm::Options {
            rootfs: rootfs::Source::Dir(dir.clone()),
            ..vm::Options::default()
        };
        let e = Plan::new(opts, Vec::new()).unwrap_err().to_string();
        assert!(e.contains("no image config"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
