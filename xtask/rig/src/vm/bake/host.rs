//! The host side supermachine gives a baked aarch64 guest, run on threads beside the VM: the
//! env service on vsock port 1026 ([`EnvService`]) and the console handshakes
//! ([`Responder`]).

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

use init_oci::contract::{Pause, ENV_PORT};

/// The Unix socket where vhost-device-vsock delivers guest connections to host `port`.
pub fn host_port_socket(vsock_uds: &Path, port: u32) -> PathBuf {
    PathBuf::from(format!("{}_{port}", vsock_uds.display()))
}

/// A host-side loop on a thread of its own that counts what it has done; stopped and joined
/// when dropped. The loop must look at its stop flag between (bounded) waits.
#[derive(Debug)]
struct Worker {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    fn spawn(body: impl FnOnce(&AtomicBool, &AtomicUsize) + Send + 'static) -> Worker {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicUsize::new(0));
        let (s, n) = (stop.clone(), count.clone());
        let thread = std::thread::spawn(move || body(&s, &n));
        Worker {
            stop,
            count,
            thread: Some(thread),
        }
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The env service: answers every connection with the document and closes it.
#[derive(Debug)]
pub struct EnvService {
    path: PathBuf,
    worker: Worker,
}

impl EnvService {
    /// Listens on [`host_port_socket`]`(vsock_uds, 1026)`.
    pub fn start(vsock_uds: &Path, document: String) -> Result<EnvService> {
        let path = host_port_socket(vsock_uds, ENV_PORT);
        let _ = std::fs::remove_file(&path);
        let listener =
            UnixListener::bind(&path).with_context(|| format!("bind {}", path.display()))?;
        listener.set_nonblocking(true)?;
        let worker = Worker::spawn(move |stop, served| {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
                        if conn.write_all(document.as_bytes()).is_ok() {
                            served.fetch_add(1, Ordering::SeqCst);
                        }
                        let _ = conn.shutdown(std::net::Shutdown::Both);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(EnvService { path, worker })
    }

    /// Connections answered so far.
    pub fn served(&self) -> usize {
        self.worker.count()
    }
}

impl Drop for EnvService {
    fn drop(&mut self) {
        self.worker.stop();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The console handshakes: reads the serial console (which also keeps QEMU from blocking
/// on a full socket) and answers each pause's `ready` line with its token line, split into
/// single bytes and pushed twice ([`push`]), as supermachine's host does.
#[derive(Debug)]
pub struct Responder {
    worker: Worker,
}

/// Pushes `token` as supermachine's host does under HVF: one byte per write (its PL011 raises
/// the line for each byte), and twice, as its re-push loop sends the token again until it
/// has read the guest's `resumed` line. Whether the first push got through.
fn push(stream: &mut UnixStream, token: &[u8]) -> bool {
    let mut ok = true;
    for round in 0..2 {
        for &b in token {
            let sent = stream.write_all(&[b]).is_ok();
            ok &= sent || round > 0;
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    ok
}

impl Responder {
    /// Connects to the serial console socket and starts answering.
    pub fn start(serial: &Path) -> Result<Responder> {
        let mut stream = UnixStream::connect(serial)
            .with_context(|| format!("connect to the serial console {}", serial.display()))?;
        stream.set_read_timeout(Some(Duration::from_millis(100)))?;
        let worker = Worker::spawn(move |stop, answered| {
            let mut line: Vec<u8> = Vec::new();
            let mut chunk = [0u8; 4096];
            while !stop.load(Ordering::SeqCst) {
                let got = match stream.read(&mut chunk) {
                    Ok(0) => return,
                    Ok(k) => k,
                    Err(_) => continue,
                };
                for &b in &chunk[..got] {
                    if b != b'\n' {
                        line.push(b);
                        continue;
                    }
                    let text = String::from_utf8_lossy(&line);
                    for pause in Pause::ALL {
                        if text.contains(&pause.ready_line()) && push(&mut stream, pause.token()) {
                            answered.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    line.clear();
                }
            }
        });
        Ok(Responder { worker })
    }

    /// Pauses answered so far.
    pub fn answered(&self) -> usize {
        self.worker.count()
    }
}

/// The host side of a baked aarch64 guest, alive as long as the guest.
#[derive(Debug, Default)]
pub struct HostSide {
    /// The env service, unless switched off.
    pub env: Option<EnvService>,
    /// The console handshakes.
    pub responder: Option<Responder>,
}
