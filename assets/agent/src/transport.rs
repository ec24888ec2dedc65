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

/// `SO_VM_SOCKETS_BUFFER_SIZE` and `_MAX_SIZE` (`linux/vm_sockets.h`), at level `AF_VSOCK`.
const SO_VM_SOCKETS_BUFFER_SIZE: libc::c_int = 0;
const SO_VM_SOCKETS_BUFFER_MAX_SIZE: libc::c_int = 2;

/// The receive buffer every agent connection advertises (`buf_alloc`), inherited from the
/// listener. Linux 6.12.117 caps a connection's send credit at its own `buf_alloc` (`min(peer,
/// own)`, `virtio_transport_tx_buf_size`), 256 KiB by default; supermachine's vsock muxer
/// advertises 8 MiB and sends a credit update only once 4 MiB have reached the host. With the
/// default, a guest→host stream stalls for good after 256 KiB under supermachine's own
/// device. 8 MiB, the muxer's own figure, keeps the window above its update threshold.
pub const VSOCK_BUFFER_SIZE: u64 = 8 << 20;

fn set_vsock_u64(fd: &OwnedFd, option: libc::c_int, name: &str, value: u64) -> io::Result<()> {
    // SAFETY: the option value is a u64 of the size passed, read by the kernel only.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::AF_VSOCK,
            option,
            (&value as *const u64).cast(),
            mem::size_of::<u64>() as libc::socklen_t,
        )
    };
    check(r, &format!("setsockopt({name}, {value})"))
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
                // The maximum first: the size is clamped to it.
                set_vsock_u64(
                    &fd,
                    SO_VM_SOCKETS_BUFFER_MAX_SIZE,
                    "SO_VM_SOCKETS_BUFFER_MAX_SIZE",
                    VSOCK_BUFFER_SIZE,
                )?;
                set_vsock_u64(
                    &fd,
                    SO_VM_SOCKETS_BUFFER_SIZE,
                    "SO_VM_SOCKETS_BUFFER_SIZE",
                    VSOCK_BUFFER_SIZE,
                )?;
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

/// `SO_VM_SOCKETS_CONNECT_TIMEOUT` (the `struct timeval` form, `_OLD` in the kernel's headers;
/// the libc crate lacks it). Level `AF_VSOCK`.
const SO_VM_SOCKETS_CONNECT_TIMEOUT: libc::c_int = 6;

/// `t` as a `timeval`: `None` (and zero) is "no timeout" to `SO_RCVTIMEO`/`SO_SNDTIMEO`, so a
/// positive duration below a microsecond becomes one microsecond.
fn timeval(t: Option<Duration>) -> libc::timeval {
    let t = match t {
        None => Duration::ZERO,
        Some(t) => t.max(Duration::from_micros(1)),
    };
    libc::timeval {
        tv_sec: t.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
        tv_usec: t.subsec_micros() as libc::suseconds_t,
    }
}

fn set_timeval(
    fd: RawFd,
    level: libc::c_int,
    opt: libc::c_int,
    t: Option<Duration>,
) -> io::Result<()> {
    let tv = timeval(t);
    // SAFETY: tv is a valid timeval and the length passed is its size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&tv as *const libc::timeval).cast(),
            mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    check(r, "setsockopt")
}

/// Connects to the Unix socket at `path`, waiting at most `timeout` while the listener's
/// backlog is full (a blocking AF_UNIX connect waits for room as long as `SO_SNDTIMEO` allows,
/// which is set for the connect and cleared after it). A relative path is taken as is.
pub fn connect_unix(path: &Path, timeout: Duration) -> io::Result<UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is a plain C struct for which all-zero bytes are a valid value.
    let mut addr: libc::sockaddr_un = unsafe { mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{}: not a usable Unix socket path (at most {} bytes, no NUL)",
                path.display(),
                addr.sun_path.len() - 1
            ),
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, &b) in addr.sun_path.iter_mut().zip(bytes) {
        *d = b as libc::c_char;
    }
    let len = mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;
    // SAFETY: socket(2) takes no pointers; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    set_timeval(
        fd.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_SNDTIMEO,
        Some(timeout),
    )?;
    loop {
        // SAFETY: addr is a valid sockaddr_un and `len` covers its family, path and NUL.
        let r = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast(),
                len as libc::socklen_t,
            )
        };
        if r == 0 {
            break;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) | Some(libc::EINPROGRESS) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "connect {}: the listener's backlog stayed full for {timeout:?}",
                        path.display()
                    ),
                ))
            }
            _ => return Err(e),
        }
    }
    set_timeval(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDTIMEO, None)?;
    Ok(UnixStream::from(fd))
}

/// Connects to a guest's port over AF_VSOCK (the kernel's default connect timeout, 2 s).
pub fn connect_vsock(cid: u32, port: u32) -> io::Result<UnixStream> {
    connect_vsock_with(cid, port, None)
}

/// Connects to a guest's port over AF_VSOCK, giving up after `timeout`.
pub fn connect_vsock_timeout(cid: u32, port: u32, timeout: Duration) -> io::Result<UnixStream> {
    connect_vsock_with(cid, port, Some(timeout))
}

fn connect_vsock_with(cid: u32, port: u32, timeout: Option<Duration>) -> io::Result<UnixStream> {
    let fd = vsock_socket()?;
    if let Some(t) = timeout {
        set_timeval(
            fd.as_raw_fd(),
            libc::AF_VSOCK,
            SO_VM_SOCKETS_CONNECT_TIMEOUT,
            Some(t),
        )?;
    }
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

/// Checks a hybrid-vsock reply line (without its `\n`): `OK <n>`, anything else means nothing
/// listens on the port (yet).
pub fn check_hybrid_reply(line: &[u8], path: &Path, port: u32) -> io::Result<()> {
    if line.starts_with(b"OK ") {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::ConnectionRefused,
        format!(
            "hybrid vsock {}: port {port}: expected `OK <n>`, got {:?}",
            path.display(),
            String::from_utf8_lossy(line)
        ),
    ))
}

/// Connects through a VMM's hybrid-vsock Unix socket (`CONNECT <port>\n` → `OK <n>\n`), the
/// convention of Firecracker and vhost-device-vsock. `timeout` bounds the connect, the
/// `CONNECT` write and each read of the reply; the stream comes back without timeouts.
///
/// The reply is read byte by byte, so that nothing after its newline is taken from the
/// stream; [`crate::client::Client`] buffers instead.
pub fn connect_hybrid_vsock(path: &Path, port: u32, timeout: Duration) -> io::Result<UnixStream> {
    let mut s = connect_unix(path, timeout)
        .map_err(|e| io::Error::new(e.kind(), format!("connect {}: {e}", path.display())))?;
    s.set_read_timeout(Some(timeout.max(Duration::from_micros(1))))?;
    s.set_write_timeout(Some(timeout.max(Duration::from_micros(1))))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())?;
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
    check_hybrid_reply(&line, path, port)?;
    s.set_read_timeout(None)?;
    s.set_write_timeout(None)?;
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
