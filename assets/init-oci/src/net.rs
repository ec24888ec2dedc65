//! The loopback interface, over rtnetlink: `lo` up (in-guest `127.0.0.1` needs it) and
//! `198.18.0.1/30` on it, a global-scope IPv4 address so glibc's `getaddrinfo(AI_ADDRCONFIG)`
//! returns IPv4 answers. supermachine's init gets that address onto a veth pair, which this
//! kernel does not build; the x86_64 init of this project puts it on `lo` as well.
//!
//! Best effort: each step that fails prints one line and the boot goes on.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::say;

const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFF_UP: u32 = 0x1;
/// `lo` is always interface 1.
const LO_INDEX: u32 = 1;
/// The address (RFC 2544's benchmarking range: never routed anywhere real).
pub const ADDRESS: [u8; 4] = [198, 18, 0, 1];
/// Its prefix length.
pub const PREFIX: u8 = 30;

/// A netlink message under construction: the 16-byte header, then the body.
struct Msg(Vec<u8>);

impl Msg {
    fn new(kind: u16, flags: u16) -> Msg {
        let mut b = Vec::with_capacity(64);
        b.extend_from_slice(&0u32.to_ne_bytes()); // length, set by finish
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        b.extend_from_slice(&1u32.to_ne_bytes()); // sequence
        b.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
        Msg(b)
    }

    fn bytes(&mut self, b: &[u8]) -> &mut Msg {
        self.0.extend_from_slice(b);
        self
    }

    /// An attribute: length, type, payload, padded to 4 bytes.
    fn attr(&mut self, kind: u16, payload: &[u8]) -> &mut Msg {
        let len = 4 + payload.len() as u16;
        self.0.extend_from_slice(&len.to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(payload);
        while self.0.len() % 4 != 0 {
            self.0.push(0);
        }
        self
    }

    fn finish(&mut self) -> &[u8] {
        let len = self.0.len() as u32;
        self.0[..4].copy_from_slice(&len.to_ne_bytes());
        &self.0
    }
}

/// A NETLINK_ROUTE socket.
fn socket() -> io::Result<OwnedFd> {
    // SAFETY: socket takes no pointers.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends one request to the kernel and reads its acknowledgement.
fn request(sock: &OwnedFd, msg: &[u8]) -> io::Result<()> {
    // SAFETY: msg is valid for its length; send copies it.
    let n = unsafe { libc::send(sock.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 512];
    // SAFETY: buf is valid for its length of writes.
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    // nlmsghdr (16 bytes), then for NLMSG_ERROR an i32 error (0 is the acknowledgement).
    if n >= 20 && u16::from_ne_bytes([buf[4], buf[5]]) == NLMSG_ERROR {
        let err = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
        if err != 0 {
            return Err(io::Error::from_raw_os_error(-err));
        }
    }
    Ok(())
}

/// Brings `lo` up and gives it [`ADDRESS`]/[`PREFIX`].
pub fn configure_loopback() {
    let sock = match socket() {
        Ok(s) => s,
        Err(e) => {
            say!("loopback: netlink socket: {e}");
            return;
        }
    };
    // ifinfomsg: family, pad, type (u16), index (i32), flags, change.
    let mut up = Msg::new(RTM_NEWLINK, 0);
    up.bytes(&[libc::AF_UNSPEC as u8, 0])
        .bytes(&0u16.to_ne_bytes())
        .bytes(&(LO_INDEX as i32).to_ne_bytes())
        .bytes(&IFF_UP.to_ne_bytes())
        .bytes(&IFF_UP.to_ne_bytes());
    if let Err(e) = request(&sock, up.finish()) {
        say!("loopback: set lo up: {e}");
        return;
    }
    // ifaddrmsg: family, prefix length, flags, scope (universe), index.
    let mut addr = Msg::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE);
    addr.bytes(&[libc::AF_INET as u8, PREFIX, 0, 0])
        .bytes(&LO_INDEX.to_ne_bytes())
        .attr(IFA_LOCAL, &ADDRESS)
        .attr(IFA_ADDRESS, &ADDRESS);
    if let Err(e) = request(&sock, addr.finish()) {
        say!("loopback: add 198.18.0.1/30 to lo: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_layout() {
        let mut m = Msg::new(RTM_NEWADDR, NLM_F_CREATE);
        m.bytes(&[2, 30, 0, 0])
            .bytes(&1u32.to_ne_bytes())
            .attr(IFA_LOCAL, &ADDRESS);
        let b = m.finish().to_vec();
        assert_eq!(b.len(), 16 + 8 + 8);
        assert_eq!(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]), 32);
        assert_eq!(u16::from_ne_bytes([b[4], b[5]]), RTM_NEWADDR);
        assert_eq!(
            u16::from_ne_bytes([b[6], b[7]]),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE
        );
        assert_eq!(&b[24..28], &[8, 0, 2, 0][..]);
        assert_eq!(&b[28..32], &ADDRESS[..]);
    }
}
