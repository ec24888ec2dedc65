//! Sockets both sides use: Unix, hybrid vsock and AF_VSOCK.
//!
//! Every transport yields a [`UnixStream`]: an AF_VSOCK stream socket is a plain stream fd, and
//! `read`/`write`/`shutdown`/timeouts are the same syscalls, so the agent and the client run one
//! code path whatever carries the bytes.

use std::io::{self, Read, Write};
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The host's CID (`VMADDR_CID_HOST`): the only peer the agent serves over vsock.
pub const VMADDR_CID_HOST: u32 = 2;
/// Wildcard CID for `bind`.
pub const VMADDR_CID_ANY: u32 = u32::MAX;

/// Where a listener listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    /// AF_VSOCK on this port, any CID.
    Vsock(u32),
    /// A Unix socket at this path (host-side testing).
    Unix(PathBuf),
}

impl std::str::FromStr for ListenAddr {
    type Err = String;

    /// Parses `vsock:PORT` or `unix:PATH`.
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err("--listen unix: needs a path".into());
            }
            Ok(ListenAddr::Unix(p.into()))
        } else if let Some(p) = s.strip_prefix("vsock:") {
            p.parse()
                .map(ListenAddr::Vsock)
                .map_err(|e| format!("--listen vsock:{p}: bad port: {e}"))
        } else {
            Err(format!("--listen {s}: expected vsock:PORT or unix:PATH"))
        }
    }
}

/// A bound, listening socket.
#[derive(Debug)]
pub enum Listener {
    /// AF_VSOCK listener.
    Vsock(OwnedFd),
    /// Unix listener.
    Unix(UnixListener),
}

/// Who connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// A vsock peer with this CID.
    Vsock(u32),
    /// A Unix-socket peer (host tests).
    Unix,
}

fn sockaddr_vm(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is a plain C struct for which all-zero bytes are a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_port = port;
    addr.svm_cid = cid;
    addr
}

fn vsock_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes no pointers; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn check(ret: libc::c_int, what: &str) -> io::Result<()> {
    if ret < 0 {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{what}: {e}")))
    } else {
        Ok(())
    }
}

impl Listener {
    /// Binds and listens. A stale Unix socket file at the path is replaced.
    pub fn bind(addr: &ListenAddr) -> io::Result<Listener> {
        match addr {
            ListenAddr::Unix(path) => {
                let _ = std::fs::remove_file(path);
                UnixListener::bind(path).map(Listener::Unix).map_err(|e| {
                    io::Error::new(e.kind(), format!("bind unix:{}: {e}", path.display()))
                })
            }
            ListenAddr::Vsock(port) => {
                let fd = vsock_socket()
                    .map_err(|e| io::Error::new(e.kind(), format!("socket(AF_VSOCK): {e}")))?;
                let addr = sockaddr_vm(VMADDR_CID_ANY, *port);
                // SAFETY: addr is a valid sockaddr_vm and the length passed is its size.
                let r = unsafe {
                    libc::bind(
                        fd.as_raw_fd(),
                        (&addr as *const libc::sockaddr_vm).cast(),
                        mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
                    )
                };
                check(r, &format!("bind vsock port {port}"))?;
                // SAFETY: listen(2) on a descriptor we own.
                let r = unsafe { libc::listen(fd.as_raw_fd(), 128) };
                check(r, "listen(vsock)")?;
                Ok(Listener::Vsock(fd))
            }
        }
    }

    /// Accepts one connection.
    pub fn accept(&self) -> io::Result<(UnixStream, Peer)> {
        match self {
            Listener::Unix(l) => l.accept().map(|(s, _)| (s, Peer::Unix)),
            Listener::Vsock(fd) => {
                // SAFETY: all-zero is a valid sockaddr_vm.
                let mut addr: libc::sockaddr_vm = unsafe { mem::zeroed() };
                let mut len = mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
                // SAFETY: addr/len describe a writable buffer of the right size.
                let c = unsafe {
                    libc::accept4(
                        fd.as_raw_fd(),
                        (&mut addr as *mut libc::sockaddr_vm).cast(),
                        &mut len,
                        libc::SOCK_CLOEXEC,
                    )
                };
                if c < 0 {
                    return Err(io::Error::last_os_error());
                }
                // SAFETY: c is a fresh descriptor returned by accept4 and owned by nobody else.
                let s = unsafe { UnixStream::from_raw_fd(c) };
                Ok((s, Peer::Vsock(addr.svm_cid)))
            }
        }
    }

    /// The listening descriptor.
    pub fn raw_fd(&self) -> RawFd {
        match self {
            Listener::Unix(l) => l.as_raw_fd(),
            Listener::Vsock(fd) => fd.as_raw_fd(),
        }
    }
}

/// Connects to a guest's port over AF_VSOCK.
pub fn connect_vsock(cid: u32, port: u32) -> io::Result<UnixStream> {
    let fd = vsock_socket()?;
    let addr = sockaddr_vm(cid, port);
    // SAFETY: addr is a valid sockaddr_vm and the length passed is its size.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    check(r, &format!("connect vsock {cid}:{port}"))?;
    Ok(UnixStream::from(fd))
}

/// Connects through a VMM's hybrid-vsock Unix socket (`CONNECT <port>\n` → `OK <n>\n`), the
/// convention of Firecracker and vhost-device-vsock.
pub fn connect_hybrid_vsock(path: &Path, port: u32, timeout: Duration) -> io::Result<UnixStream> {
    let mut s = UnixStream::connect(path)
        .map_err(|e| io::Error::new(e.kind(), format!("connect {}: {e}", path.display())))?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())?;
    // Read the reply byte by byte: anything after '\n' already belongs to the guest stream.
    let mut line = Vec::with_capacity(16);
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!(
                        "hybrid vsock {}: port {port}: closed before OK (nothing listening in the guest?)",
                        path.display()
                    ),
                ))
            }
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) if line.len() < 64 => line.push(b[0]),
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("hybrid vsock {}: reply line too long", path.display()),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("hybrid vsock {}: waiting for OK: {e}", path.display()),
                ))
            }
        }
    }
    if !line.starts_with(b"OK ") {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!(
                "hybrid vsock {}: port {port}: expected `OK <n>`, got {:?}",
                path.display(),
                String::from_utf8_lossy(&line)
            ),
        ));
    }
    s.set_read_timeout(None)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listen_addresses() {
        assert_eq!("vsock:1024".parse(), Ok(ListenAddr::Vsock(1024)));
        assert_eq!("unix:/tmp/a".parse(), Ok(ListenAddr::Unix("/tmp/a".into())));
        assert!("unix:".parse::<ListenAddr>().is_err());
        assert!("tcp:1".parse::<ListenAddr>().is_err());
        assert!("vsock:x".parse::<ListenAddr>().is_err());
    }

    #[test]
    fn hybrid_vsock_handshake() {
        let dir = std::env::temp_dir().join(format!("smk-hv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v.sock");
        let l = UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 13];
            s.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"CONNECT 1024\n");
            s.write_all(b"OK 1073741824\nrest").unwrap();
        });
        let mut s = connect_hybrid_vsock(&path, 1024, Duration::from_secs(5)).unwrap();
        let mut rest = [0u8; 4];
        s.read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"rest");
        t.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
