//! Stalls.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use supermachine_agent::client::{Client, Endpoint, Error};
use supermachine_agent::codec::encode;
use supermachine_agent::protocol::*;

use crate::fake::*;

#[test]
fn a_silent_agent_times_out_every_operation() {
    let fake = Fake::start(|mut s, _| linger(&mut s));
    let c = fake.quick();
    let e = within(BOUND, || c.probe().unwrap_err());
    assert!(
        matches!(e, Error::TimedOut { after, idle: false, .. } if after == T),
        "{e:?}"
    );
    assert!(e.to_string().contains("CONTROL ack (probe)"), "{e}");
    let e = within(BOUND, || c.exec_output(&sh("true")).unwrap_err());
    assert!(matches!(e, Error::TimedOut { idle: true, .. }), "{e:?}");
    let e = within(BOUND, || c.read_file("/etc/passwd", 1 << 20).unwrap_err());
    assert!(e.is_timeout(), "{e:?}");
    let e = within(BOUND, || {
        c.exec(&sh("true")).unwrap().next_event().unwrap_err()
    });
    assert!(e.is_timeout(), "{e:?}");
    let e = within(BOUND, || c.workload_wait(T).unwrap_err());
    assert!(e.is_timeout(), "{e:?}");
}

#[test]
fn an_agent_that_never_reads_cannot_block_a_write() {
    // Accepts, then neither reads nor answers: the request sits in the socket buffer, and a
    // write larger than that buffer blocks.
    let fake = Fake::start(|_s, _| stall());
    let c = fake.quick();
    let e = within(BOUND, || c.probe().unwrap_err());
    assert!(e.is_timeout(), "{e:?}");
    // 2 MiB, far above what the socket buffers hold.
    let big = vec![7u8; 2 << 20];
    let e = within(BOUND, || c.write_file("/tmp/x", 0o644, &big).unwrap_err());
    assert!(
        matches!(&e, Error::TimedOut { waiting_for, .. } if waiting_for.contains("read the CONTROL")),
        "{e:?}"
    );
    // Streamed stdin: the idle deadline.
    let exec = c.exec(&ExecRequest::new(["cat"])).unwrap();
    let mut input = exec.input().unwrap();
    let e = within(BOUND, || input.write(&big).unwrap_err());
    assert!(matches!(e, Error::TimedOut { idle: true, .. }), "{e:?}");
    // The input is closed for good after a frame went out in part.
    assert!(matches!(input.close(), Err(Error::Protocol(_))));
}

#[test]
fn a_trickled_answer_cannot_stretch_the_deadline() {
    // One byte of a valid ack every 50 ms: each read makes progress, the whole does not.
    let fake = Fake::start(|mut s, _| {
        if next_request(&mut s).is_none() {
            return;
        }
        let ack = encode(FrameKind::Control, &[b' '; 200]);
        for b in ack {
            if s.write_all(&[b]).is_err() {
                return;
            }
            std::thread::sleep(ms(50));
        }
    });
    let e = within(BOUND, || fake.quick().probe().unwrap_err());
    assert!(matches!(e, Error::TimedOut { idle: false, .. }), "{e:?}");
}

#[test]
fn wait_ready_keeps_to_its_own_timeout() {
    // The default client: a 60 s CONTROL deadline, which wait_ready must not wait out.
    let fake = Fake::start(|mut s, _| linger(&mut s));
    let c = Client::new(Endpoint::Unix(fake.sock.clone()));
    let e = within(BOUND, || c.wait_ready(ms(500)).unwrap_err());
    assert!(e.is_timeout(), "{e:?}");
    // Nothing listening: connection errors are retried until the timeout.
    let c = Client::new(Endpoint::Unix(fake.dir.join("nobody.sock")));
    let t = Instant::now();
    let e = c.wait_ready(ms(300)).unwrap_err();
    assert!(matches!(e, Error::Connect { .. }), "{e:?}");
    assert!((ms(300)..BOUND).contains(&t.elapsed()), "{:?}", t.elapsed());
    // Garbage answers: retried too, and the wait still ends on time.
    let fake = Fake::start(|mut s, _| {
        let _ = s.write_all(b"garbage garbage garbage\n");
        linger(&mut s);
    });
    let c = Client::new(Endpoint::Unix(fake.sock.clone()));
    let e = within(BOUND, || c.wait_ready(ms(300)).unwrap_err());
    assert!(
        matches!(e, Error::Codec(_) | Error::TimedOut { .. }),
        "{e:?}"
    );
    assert!(fake.connections() > 1, "wait_ready retried");
}

#[test]
fn a_full_listen_backlog_cannot_hang_connect() {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    let dir = scratch();
    let path = dir.join("full.sock");
    // A listener with backlog 0 that never accepts: one connection queues, the next waits.
    // SAFETY: socket(2) takes no pointers; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
    assert!(fd >= 0);
    // SAFETY: fd is fresh and owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero is a valid sockaddr_un.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, &b) in addr.sun_path.iter_mut().zip(path.as_os_str().as_bytes()) {
        *d = b as libc::c_char;
    }
    // SAFETY: addr is a valid sockaddr_un of the size passed.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0);
    // SAFETY: listen(2) on a descriptor we own.
    assert_eq!(unsafe { libc::listen(fd.as_raw_fd(), 0) }, 0);
    let _queued = UnixStream::connect(&path).unwrap();
    let c = Client::new(Endpoint::Unix(path)).with_connect_timeout(T);
    let e = within(BOUND, || c.probe().unwrap_err());
    assert!(
        matches!(&e, Error::Connect { source, .. } if source.kind() == std::io::ErrorKind::TimedOut),
        "{e:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_silent_hybrid_vsock_bridge_times_out_and_a_quick_one_keeps_its_bytes() {
    // The VMM's bridge never answers CONNECT.
    let silent = Fake::start(|mut s, _| linger(&mut s));
    let c = Client::new(Endpoint::HybridVsock {
        path: silent.sock.clone(),
        port: DEFAULT_PORT,
    })
    .with_connect_timeout(T);
    let e = within(BOUND, || c.probe().unwrap_err());
    assert!(
        matches!(&e, Error::Connect { source, .. } if source.kind() == std::io::ErrorKind::TimedOut),
        "{e:?}"
    );
    // `OK` and the agent's first bytes in one packet: nothing after the newline is lost.
    let quick = Fake::start(|mut s, _| {
        let mut line = [0u8; 13];
        s.read_exact(&mut line).unwrap();
        assert_eq!(&line, b"CONNECT 1028\n");
        // The answer goes out with OK, before the client could even ask.
        let mut reply = b"OK 5000\n".to_vec();
        reply.extend(encode(FrameKind::Control, br#"{"ok":true,"protocol":5}"#));
        let _ = s.write_all(&reply);
        let _ = next_request(&mut s);
        linger(&mut s);
    });
    let c = Client::new(Endpoint::HybridVsock {
        path: quick.sock.clone(),
        port: DEFAULT_PORT,
    })
    .with_control_timeout(PATIENT);
    assert_eq!(within(BOUND, || c.probe().unwrap()).protocol, 5);
}
