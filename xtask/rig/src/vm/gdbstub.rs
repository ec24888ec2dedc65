//! A tiny client of QEMU's gdbstub (the GDB remote serial protocol), just enough to write
//! guest-physical memory from the host: what a VMM does for smpark's host-direct unpark
//! (supermachine stores a byte straight into guest RAM; QEMU gives no other way to do that
//! to a running guest).
//!
//! Protocol: a packet is `$<data>#<two hex digits>`, the digits being the sum of the data
//! bytes modulo 256; each side answers a well-formed packet with `+` (and asks for a resend
//! with `-`). In the data, `}` escapes the next byte (XOR 0x20) and `*` run-length encodes
//! the previous one. QEMU pauses the VM when a debugger connects; `D` (detach) resumes it.
//! `Qqemu.PhyMemMode:1` makes `m`/`M` use physical addresses instead of the current CPU's
//! virtual ones.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::util;

/// How long one command may take (QEMU answers in microseconds; TCG under load is slower).
const TIMEOUT: Duration = Duration::from_secs(10);

/// The checksum of a packet's data: the sum of its bytes modulo 256.
pub fn checksum(data: &[u8]) -> u8 {
    data.iter().fold(0u8, |sum, &b| sum.wrapping_add(b))
}

/// Frames `payload` as one packet, escaping the bytes the protocol reserves.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut data = Vec::with_capacity(payload.len());
    for &b in payload {
        if matches!(b, b'$' | b'#' | b'}' | b'*') {
            data.extend([b'}', b ^ 0x20]);
        } else {
            data.push(b);
        }
    }
    let mut out = Vec::with_capacity(data.len() + 4);
    out.push(b'$');
    out.extend_from_slice(&data);
    out.extend(format!("#{:02x}", checksum(&data)).into_bytes());
    out
}

/// What [`next_packet`] found at the start of a receive buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// `+`: the peer got our packet.
    Ack,
    /// `-`: the peer wants it again.
    Nak,
    /// A whole packet, unescaped and expanded.
    Packet(Vec<u8>),
}

/// Takes the next acknowledgement or whole packet off the front of `buf`; `None` while it
/// is incomplete. A packet whose checksum is wrong is an error.
pub fn next_packet(buf: &mut Vec<u8>) -> Result<Option<Received>> {
    // Anything before an ack or a packet start is noise (QEMU sends none, but a stray
    // byte must not wedge the reader).
    let Some(start) = buf.iter().position(|&b| matches!(b, b'+' | b'-' | b'$')) else {
        buf.clear();
        return Ok(None);
    };
    buf.drain(..start);
    match buf[0] {
        b'+' => {
            buf.remove(0);
            return Ok(Some(Received::Ack));
        }
        b'-' => {
            buf.remove(0);
            return Ok(Some(Received::Nak));
        }
        _ => {}
    }
    let Some(hash) = buf.iter().position(|&b| b == b'#') else {
        return Ok(None);
    };
    if buf.len() < hash + 3 {
        return Ok(None);
    }
    let packet: Vec<u8> = buf.drain(..hash + 3).collect();
    let data = &packet[1..hash];
    let sum = std::str::from_utf8(&packet[hash + 1..])
        .ok()
        .and_then(|h| u8::from_str_radix(h, 16).ok())
        .with_context(|| format!("gdbstub: bad checksum field in {:?}", lossy(&packet)))?;
    ensure!(
        sum == checksum(data),
        "gdbstub: checksum {sum:02x} does not match {:02x} in {:?}",
        checksum(data),
        lossy(&packet)
    );
    Ok(Some(Received::Packet(decode(data)?)))
}

/// Undoes `}` escapes and expands `*` run-length encoding (`X*<n+29>` repeats X n times more).
fn decode(data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        match data[i] {
            b'}' => {
                let b = *data
                    .get(i + 1)
                    .context("gdbstub: packet ends in an escape")?;
                out.push(b ^ 0x20);
                i += 2;
            }
            b'*' => {
                let prev = *out
                    .last()
                    .context("gdbstub: run length with nothing to repeat")?;
                let n = *data
                    .get(i + 1)
                    .context("gdbstub: packet ends in a run length")?;
                ensure!(n >= 29, "gdbstub: bad run length byte {n:#x}");
                out.extend(std::iter::repeat_n(prev, usize::from(n - 29)));
                i += 2;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(out)
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Lower-case hex of `bytes`, as `M` packets carry memory.
pub use crate::util::hex;

/// The `M` packet that writes `bytes` at `addr`.
pub fn write_memory_packet(addr: u64, bytes: &[u8]) -> String {
    format!("M{addr:x},{:x}:{}", bytes.len(), hex(bytes))
}

/// A connection to a gdbstub. The VM is paused while one is open (QEMU pauses it when a
/// debugger connects); [`GdbStub::detach`] resumes it.
#[derive(Debug)]
pub struct GdbStub {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl GdbStub {
    /// Connects to the stub's Unix socket (`-gdb unix:PATH,server=on,wait=off`).
    pub fn connect(path: &Path) -> Result<GdbStub> {
        let stream = UnixStream::connect(path)
            .with_context(|| format!("connect to the gdbstub {}", path.display()))?;
        stream.set_read_timeout(Some(Duration::from_millis(200)))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        Ok(GdbStub {
            stream,
            buf: Vec::new(),
        })
    }

    /// Reads until the next ack or packet, or fails after [`TIMEOUT`].
    fn receive(&mut self, start: Instant) -> Result<Received> {
        loop {
            if let Some(r) = next_packet(&mut self.buf)? {
                return Ok(r);
            }
            ensure!(
                start.elapsed() < TIMEOUT,
                "gdbstub: no answer within {TIMEOUT:?}"
            );
            if !util::read_more(&mut self.stream, &mut self.buf).context("gdbstub: read")? {
                bail!("gdbstub: the connection closed");
            }
        }
    }

    /// Sends one command packet and returns the reply packet's data (acknowledged).
    pub fn command(&mut self, payload: &str) -> Result<String> {
        let start = Instant::now();
        let packet = frame(payload.as_bytes());
        self.stream
            .write_all(&packet)
            .with_context(|| format!("gdbstub: send {payload}"))?;
        loop {
            match self.receive(start)? {
                Received::Ack => {}
                Received::Nak => self
                    .stream
                    .write_all(&packet)
                    .with_context(|| format!("gdbstub: resend {payload}"))?,
                Received::Packet(reply) => {
                    self.stream.write_all(b"+").context("gdbstub: ack")?;
                    return Ok(lossy(&reply));
                }
            }
        }
    }

    /// Sends a command whose only good answer is `OK`.
    fn command_ok(&mut self, payload: &str) -> Result<()> {
        let reply = self.command(payload)?;
        ensure!(
            reply == "OK",
            "gdbstub: `{payload}` answered `{reply}`, expected OK"
        );
        Ok(())
    }

    /// Makes memory packets use guest-physical addresses (QEMU's extension).
    pub fn physical_memory_mode(&mut self) -> Result<()> {
        self.command_ok("Qqemu.PhyMemMode:1")
    }

    /// Writes `bytes` at `addr`.
    pub fn write_memory(&mut self, addr: u64, bytes: &[u8]) -> Result<()> {
        self.command_ok(&write_memory_packet(addr, bytes))
    }

    /// Reads `len` bytes at `addr`.
    pub fn read_memory(&mut self, addr: u64, len: usize) -> Result<Vec<u8>> {
        let reply = self.command(&format!("m{addr:x},{len:x}"))?;
        ensure!(
            reply.len() == 2 * len && reply.bytes().all(|b| b.is_ascii_hexdigit()),
            "gdbstub: reading {len} bytes at {addr:#x} answered `{reply}`"
        );
        (0..len)
            .map(|i| Ok(u8::from_str_radix(&reply[2 * i..2 * i + 2], 16)?))
            .collect()
    }

    /// Detaches, which resumes the VM.
    pub fn detach(mut self) -> Result<()> {
        self.command_ok("D")
    }
}

/// Writes `bytes` at guest-physical `gpa` of the VM behind `socket`, checks that they read
/// back, and returns what was there before. The VM is paused for the write (as QEMU pauses
/// it for any debugger) and running again when this returns.
pub fn write_physical(socket: &Path, gpa: u64, bytes: &[u8]) -> Result<Vec<u8>> {
    let mut stub = GdbStub::connect(socket)?;
    let result = (|| {
        stub.physical_memory_mode()?;
        let before = stub.read_memory(gpa, bytes.len())?;
        stub.write_memory(gpa, bytes)?;
        Ok::<_, anyhow::Error>((before, stub.read_memory(gpa, bytes.len())?))
    })();
    // Resume the VM whatever happened: a paused guest would fail every later check.
    let detached = stub.detach();
    let (before, after) =
        result.with_context(|| format!("write {} at guest-physical {gpa:#x}", hex(bytes)))?;
    detached?;
    ensure!(
        after == bytes,
        "guest-physical {gpa:#x} reads back {} after writing {}",
        hex(&after),
        hex(bytes)
    );
    Ok(before)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn frames_with_checksum_and_escapes() {
        assert_eq!(frame(b"OK"), b"$OK#9a");
        assert_eq!(frame(b""), b"$#00");
        assert_eq!(
            frame(b"Qqemu.PhyMemMode:1"),
            format!(
                "$Qqemu.PhyMemMode:1#{:02x}",
                checksum(b"Qqemu.PhyMemMode:1")
            )
            .as_bytes()
        );
        // '#' (0x23) goes as "}\x03", and the checksum covers the escaped bytes.
        assert_eq!(frame(b"a#"), b"$a}\x03#e1");
        assert_eq!(checksum(b"a}\x03"), 0xe1);
        assert_eq!(write_memory_packet(0x4321_f000, &[1]), "M4321f000,1:01");
        assert_eq!(write_memory_packet(0x10, &[0xab, 0]), "M10,2:ab00");
    }

    #[test]
    fn parses_acks_packets_and_rejects_bad_checksums() {
        let mut buf = b"+$OK#9a-".to_vec();
        assert_eq!(next_packet(&mut buf).unwrap(), Some(Received::Ack));
        assert_eq!(
            next_packet(&mut buf).unwrap(),
            Some(Received::Packet(b"OK".to_vec()))
        );
        assert_eq!(next_packet(&mut buf).unwrap(), Some(Received::Nak));
        assert_eq!(next_packet(&mut buf).unwrap(), None);

        // Incomplete: kept until the checksum's two digits are in.
        let mut buf = b"$E14#a".to_vec();
        assert_eq!(next_packet(&mut buf).unwrap(), None);
        buf.push(b'a');
        assert_eq!(
            next_packet(&mut buf).unwrap(),
            Some(Received::Packet(b"E14".to_vec()))
        );

        let mut buf = b"$OK#00".to_vec();
        assert!(next_packet(&mut buf).is_err());
        // Round trip through the escaping, and run-length expansion: "0* " is "0" + 3 more.
        let mut buf = frame(b"x$}*y");
        assert_eq!(
            next_packet(&mut buf).unwrap(),
            Some(Received::Packet(b"x$}*y".to_vec()))
        );
        let mut buf = format!("$0* #{:02x}", checksum(b"0* ")).into_bytes();
        assert_eq!(
            next_packet(&mut buf).unwrap(),
            Some(Received::Packet(b"0000".to_vec()))
        );
    }

    /// The whole exchange against a fake stub that acks, answers like QEMU and keeps a
    /// byte of "memory".
    #[test]
    fn writes_physical_memory_through_a_fake_stub() {
        let dir = std::env::temp_dir().join(format!("xtask-gdbstub-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("gdb.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = Vec::new();
            let mut seen = Vec::new();
            let mut mem = 0u8;
            let mut nak_once = true;
            loop {
                let mut chunk = [0u8; 256];
                let n = s.read(&mut chunk).unwrap();
                if n == 0 {
                    return seen;
                }
                buf.extend_from_slice(&chunk[..n]);
                while let Some(r) = next_packet(&mut buf).unwrap() {
                    let Received::Packet(p) = r else { continue };
                    let p = String::from_utf8(p).unwrap();
                    if nak_once {
                        // Ask for the first packet again, as a stub that lost it would.
                        nak_once = false;
                        s.write_all(b"-").unwrap();
                        continue;
                    }
                    s.write_all(b"+").unwrap();
                    let reply = if let Some(v) = p.strip_prefix("M1000,1:") {
                        mem = u8::from_str_radix(v, 16).unwrap();
                        "OK".to_string()
                    } else if p == "m1000,1" {
                        format!("{mem:02x}")
                    } else {
                        "OK".to_string()
                    };
                    seen.push(p);
                    s.write_all(&frame(reply.as_bytes())).unwrap();
                }
            }
        });
        assert_eq!(write_physical(&sock, 0x1000, &[1]).unwrap(), [0]);
        let seen = server.join().unwrap();
        assert_eq!(
            seen,
            [
                "Qqemu.PhyMemMode:1",
                "m1000,1",
                "M1000,1:01",
                "m1000,1",
                "D"
            ]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
