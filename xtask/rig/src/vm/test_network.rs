//! A network namespace for the guest-networking (TSI) checks: the thread
//! that [`enter`]s it, and every process it starts (QEMU, `sm-vsock`), see only `lo` with
//! loopback and documentation addresses ([`SERVER`], [`SERVER6`], [`DNS`]), and the servers
//! started there: echo (TCP and UDP), HTTP, a DNS stub, and a sink and a source that time a
//! transfer on the host side. No public address, not even inside the namespace.

use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::util;

/// The echo server's address (TCP and UDP, port [`ECHO_PORT`]), the HTTP server's, the sink's
/// and the source's.
pub const SERVER: &str = "198.51.100.10";
/// The same host over IPv6.
pub const SERVER6: &str = "2001:db8::10";
/// The DNS stub's address, for the guest's `resolv.conf`.
pub const DNS: &str = "192.0.2.53";
/// What the DNS stub answers for every A and AAAA question.
pub const DNS_A: &str = "203.0.113.7";
pub const DNS_AAAA: &str = "2001:db8::7";
pub const ECHO_PORT: u16 = 7;
pub const HTTP_PORT: u16 = 80;
/// Reads a little-endian u64 count, then that many bytes, and answers the nanoseconds from
/// the count to the last byte (u64 LE).
pub const SINK_PORT: u16 = 5001;
/// Reads a little-endian u64 count, sends that many bytes, waits for a 1-byte ack, and
/// answers the nanoseconds from the count to the ack (u64 LE).
pub const SOURCE_PORT: u16 = 5002;

/// Runs `f` on a thread of its own inside a fresh network namespace with the servers up.
pub fn run<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    std::thread::spawn(move || {
        enter()?;
        servers::start(http_blob())?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the network-namespace thread panicked"))?
}

/// Moves this thread into a new network namespace and sets up its addresses.
fn enter() -> Result<()> {
    // SAFETY: unshare(2) with a flag only changes this thread's namespaces.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        bail!(
            "unshare(CLONE_NEWNET): {} (the TSI suite needs root)",
            std::io::Error::last_os_error()
        );
    }
    for args in [
        &["link", "set", "lo", "up"][..],
        &["addr", "add", &format!("{SERVER}/32"), "dev", "lo"],
        &["addr", "add", &format!("{DNS}/32"), "dev", "lo"],
        &[
            "-6",
            "addr",
            "add",
            &format!("{SERVER6}/128"),
            "dev",
            "lo",
            "nodad",
        ],
    ] {
        util::run(Command::new("ip").args(args)).context("set up the test network")?;
    }
    Ok(())
}

/// The body the HTTP server serves at every path: 1 MiB of a pattern.
pub fn http_blob() -> Vec<u8> {
    (0..1u32 << 20).map(|i| (i * 7 + (i >> 11)) as u8).collect()
}

/// The host side's servers, on threads that live as long as the process (the namespace
/// ends with its last user).
mod servers {
    use super::*;

    pub fn start(blob: Vec<u8>) -> Result<()> {
        let tcp = TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, ECHO_PORT)))?;
        let udp = UdpSocket::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, ECHO_PORT)))?;
        let http = TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, HTTP_PORT)))?;
        let dns = UdpSocket::bind(format!("{DNS}:53"))?;
        let sink = TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, SINK_PORT)))?;
        let source = TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, SOURCE_PORT)))?;
        std::thread::spawn(move || accept_each(sink, |s| drop(timed(s, false))));
        std::thread::spawn(move || accept_each(source, |s| drop(timed(s, true))));
        std::thread::spawn(move || accept_each(tcp, echo));
        std::thread::spawn(move || {
            let blob = std::sync::Arc::new(blob);
            accept_each(http, move |s| serve_http(s, &blob))
        });
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while let Ok((n, from)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(&buf[..n], from);
            }
        });
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = dns.recv_from(&mut buf) {
                if let Some(answer) = dns_answer(&buf[..n]) {
                    let _ = dns.send_to(&answer, from);
                }
            }
        });
        Ok(())
    }

    fn accept_each(l: TcpListener, f: impl Fn(TcpStream) + Clone + Send + 'static) {
        for s in l.incoming().flatten() {
            let f = f.clone();
            std::thread::spawn(move || f(s));
        }
    }

    fn echo(mut s: TcpStream) {
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 || s.write_all(&buf[..n]).is_err() {
                return;
            }
        }
    }

    /// The sink (`send` false) or the source (`send` true): see [`SINK_PORT`], [`SOURCE_PORT`].
    fn timed(mut s: TcpStream, send: bool) -> std::io::Result<()> {
        let mut count = [0u8; 8];
        s.read_exact(&mut count)?;
        let mut left = u64::from_le_bytes(count);
        let t = Instant::now();
        let mut buf = vec![0u8; 1 << 16];
        while left > 0 {
            let n = (buf.len() as u64).min(left) as usize;
            if send {
                s.write_all(&buf[..n])?;
            } else {
                s.read_exact(&mut buf[..n])?;
            }
            left -= n as u64;
        }
        if send {
            s.read_exact(&mut buf[..1])?;
        }
        let ns = t.elapsed().as_nanos() as u64;
        s.write_all(&ns.to_le_bytes())
    }

    fn serve_http(mut s: TcpStream, blob: &[u8]) {
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => req.extend_from_slice(&buf[..n]),
            }
        }
        let head = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", blob.len());
        let _ = s
            .write_all(head.as_bytes())
            .and_then(|()| s.write_all(blob));
    }

    /// The answer to one DNS question: [`DNS_A`] for A, [`DNS_AAAA`] for AAAA, an empty
    /// answer for anything else.
    pub(super) fn dns_answer(q: &[u8]) -> Option<Vec<u8>> {
        let mut i = 12;
        while *q.get(i)? != 0 {
            i += 1 + usize::from(q[i]);
        }
        let end = i + 5;
        let qtype = u16::from_be_bytes([*q.get(i + 1)?, *q.get(i + 2)?]);
        q.get(end - 1)?;
        let rdata: Vec<u8> = match qtype {
            1 => DNS_A.parse::<std::net::Ipv4Addr>().ok()?.octets().to_vec(),
            28 => DNS_AAAA.parse::<Ipv6Addr>().ok()?.octets().to_vec(),
            _ => Vec::new(),
        };
        let mut a = q[..end].to_vec();
        a[2] = 0x81;
        a[3] = 0x80;
        let count = u16::from(!rdata.is_empty());
        a[6..8].copy_from_slice(&count.to_be_bytes());
        a[8..12].fill(0);
        if count == 1 {
            a.extend_from_slice(&[0xc0, 0x0c]);
            a.extend_from_slice(&qtype.to_be_bytes());
            a.extend_from_slice(&[0, 1, 0, 0, 0, 60]);
            a.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            a.extend_from_slice(&rdata);
        }
        Some(a)
    }
}

#[cfg(test)]
mod tests {
    use super::servers::dns_answer;

    /// A query for `a.test`, type `qtype`.
    fn query(qtype: u8) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(b"\x01a\x04test\x00\x00");
        q.extend_from_slice(&[qtype, 0, 1]);
        q
    }

    #[test]
    fn the_dns_stub_answers_a_and_aaaa_and_nothing_else() {
        let a = dns_answer(&query(1)).unwrap();
        assert_eq!(&a[..2], &[0x12, 0x34]);
        assert_eq!(&a[6..8], &[0, 1]);
        assert_eq!(&a[a.len() - 4..], &[203, 0, 113, 7]);
        let aaaa = dns_answer(&query(28)).unwrap();
        assert_eq!(aaaa[aaaa.len() - 17], 16);
        let mx = dns_answer(&query(15)).unwrap();
        assert_eq!(&mx[6..8], &[0, 0]);
        assert!(dns_answer(&[0; 5]).is_none());
    }
}
