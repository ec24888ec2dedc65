//! Guest networking as supermachine carries it: our kernel's TSI (`assets/kernel/patches/0002`)
//! against supermachine 0.7.108's own muxer (`sm-vsock`), the guest booted as supermachine
//! boots it plus the datagram switch ([`crate::vm::cmdline_words::FORCE_DGRAM`]; QEMU masks the
//! feature bit supermachine's device offers).
//!
//! The host side lives in a network namespace the suite creates ([`crate::vm::test_network`]:
//! loopback plus documentation addresses on `lo`, echo, HTTP and DNS servers). The main guest
//! boots a Debian bookworm root ([`crate::debian::rootfs`]) and runs its `curl` and `bash`,
//! Debian's busybox-static (`wget`, `nslookup`, `httpd`), and `xtask/guest-probe/net.c` for
//! what needs exact control (UDP modes, names, non-blocking connect, load, random operations).

use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use super::{check, out, sh, stdout};
use crate::spec::Arch;
use crate::vm::qemu::VsockDevice;
use crate::vm::test_network::{self as network, *};
use crate::vm::tsi_host::{self, TsiHost};
use crate::vm::{self, boot, sm_vsock, Guest, Options};
use crate::{debian, progress, util};

/// The guest's two servers, told apart by port on the way in.
const GUEST_HTTP: u16 = 8080;
const GUEST_ECHO: u16 = 8081;
/// Bytes each way through one connection (the 256 MiB).
const BIG: u64 = 256 << 20;
/// Bytes of the one-way transfers (to the sink, from the source).
const ONE_WAY: u64 = 64 << 20;
/// Concurrent outbound connections, and bytes each; inbound ones.
const MANY_OUT: usize = 256;
const MANY_IN: usize = 64;
/// Random socket operations (5 seeds of 20 000).
const STRESS_SEEDS: u32 = 5;
const STRESS_OPS: u32 = 20_000;

/// Runs the suite on `arch`, on a thread of its own inside a fresh network namespace.
pub fn run(arch: Arch) -> Result<()> {
    // Everything that may need the network is fetched and built before the namespace.
    sm_vsock::binary()?;
    let tools = Tools {
        net: vm::guest_program(arch, "net")?,
        busybox: std::fs::read(debian::busybox(arch)?)?,
        debian: debian::rootfs(arch)?,
    };
    network::run(move || netns(arch, tools))
}

/// The guest programs the checks run, and the Debian tree the main guest boots.
struct Tools {
    net: Vec<u8>,
    busybox: Vec<u8>,
    debian: std::path::PathBuf,
}

fn netns(arch: Arch, tools: Tools) -> Result<()> {
    let blob = network::http_blob();
    let token = util::sha256(format!("tsi-token-{}", std::process::id()).as_bytes());
    let main = start_guest(
        arch,
        &tools,
        TsiHost {
            token: Some(token.clone()),
            host_ipv6: Some(false),
            report_inet_ports: vec![GUEST_HTTP, GUEST_ECHO],
            ..TsiHost::default()
        },
        true,
    )?;
    let result = main_checks(&main, &token, &blob);
    if let Err(e) = result {
        return Err(main.vm.failure(format!("{} TSI guest: {e:#}", arch.name())));
    }
    main.shutdown()?;
    policy_and_token_checks(arch, &tools, &token)
}

/// `fetch URL | sha256` of the host's HTTP blob in `g` gives `blob`'s sha256.
fn fetches_blob(g: &Guest, blob: &[u8], fetch: &str, sha256: &str) -> Result<()> {
    let sum = stdout(
        g,
        &format!("{fetch} http://{SERVER}:{HTTP_PORT}/blob | {sha256}"),
    )?;
    let want = util::sha256(blob);
    ensure!(
        sum.starts_with(&want),
        "`{fetch}`: sha256 {sum:?}, served {want}"
    );
    Ok(())
}

/// A guest on the default (busybox) root, or on the Debian tree when `debian`.
fn start_guest(arch: Arch, tools: &Tools, tsi: TsiHost, debian: bool) -> Result<Guest> {
    progress!(
        "e2e: {} TSI guest on {}",
        arch.name(),
        if debian { "Debian bookworm" } else { "busybox" }
    );
    let g = boot(&Options {
        arch,
        vsock_device: VsockDevice::Supermachine,
        tsi,
        rootfs: match debian {
            true => vm::rootfs::Source::Dir(tools.debian.clone()),
            false => vm::rootfs::Source::Default,
        },
        ..Options::default()
    })?;
    g.client.write_file("/tmp/net", 0o755, &tools.net)?;
    g.client.write_file("/tmp/busybox", 0o755, &tools.busybox)?;
    Ok(g)
}

/// `/tmp/net ARGS`: its "ok …" line, or the failure it printed.
fn net(g: &Guest, args: &str) -> Result<String> {
    let o = out(g, &sh(&format!("/tmp/net {args}")))?;
    let text = String::from_utf8_lossy(&o.stdout).trim().to_string();
    ensure!(
        o.status.code == 0 && text.starts_with("ok"),
        "net {args}: {text} {:?} {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(text)
}

/// `/tmp/net WHAT`'s count (`ok WHAT N`): `sockets`, the user sockets of
/// `/proc/net/sockstat` (TSI sockets count there, their inner kernel sockets do not); `vsocks`,
/// the AF_VSOCK sockets.
fn count(g: &Guest, what: &str) -> Result<u32> {
    let line = net(g, what)?;
    line.trim_start_matches(&format!("ok {what} "))
        .parse()
        .with_context(|| format!("net {what}: {line}"))
}

/// `/tmp/net connect ADDR PORT` expected to fail with `errno`.
fn connect_fails(g: &Guest, addr: &str, port: u16, errno: i32) -> Result<()> {
    let o = out(g, &sh(&format!("/tmp/net connect {addr} {port}")))?;
    let text = String::from_utf8_lossy(&o.stdout).trim().to_string();
    ensure!(
        text.contains(&format!("errno={errno} ")),
        "connect {addr}:{port}: want errno {errno}, got {text:?}"
    );
    Ok(())
}

fn main_checks(g: &Guest, token: &str, blob: &[u8]) -> Result<()> {
    check("TSI: the token is nowhere guest root can read it", || {
        let seen = stdout(
            g,
            "cat /proc/cmdline; dmesg; cat /proc/device-tree/chosen/bootargs 2>/dev/null; \
             cat /sys/firmware/fdt 2>/dev/null; cat /proc/1/cmdline /proc/1/environ",
        )?;
        ensure!(!seen.contains(token), "the token is readable in the guest");
        ensure!(
            !seen.contains("tsi_token"),
            "supermachine.tsi_token is on the guest's command line"
        );
        Ok(())
    })?;
    let sockets_before = count(g, "sockets")?;
    let vsocks_before = count(g, "vsocks")?;
    check("TSI: TCP echo of 1 MiB, getpeername/getsockname", || {
        net(g, &format!("tcp {SERVER} {ECHO_PORT} 1048576"))?;
        net(g, &format!("names {SERVER} {ECHO_PORT}"))?;
        Ok(())
    })?;
    check("TSI: 256 MiB each way through one connection", || {
        net(g, &format!("tcp {SERVER} {ECHO_PORT} {BIG}")).map(drop)
    })?;
    check("TSI: 64 MiB one way, each way", || {
        // A pure upload gets the VMM's credit only every 4 MiB delivered; with vsock's
        // default buffer it stopped for ever after 256 KiB.
        net(g, &format!("send {SERVER} {SINK_PORT} {ONE_WAY}"))?;
        net(g, &format!("fetch {SERVER} {SOURCE_PORT} {ONE_WAY}")).map(drop)
    })?;
    check("TSI: a refused port is ECONNREFUSED", || {
        connect_fails(g, SERVER, 9, libc::ECONNREFUSED)
    })?;
    check("TSI: non-blocking connect, poll and SO_ERROR", || {
        net(g, &format!("nonblock {SERVER} {ECHO_PORT}")).map(drop)
    })?;
    check(
        "TSI: IPv6, v4-mapped, and EAFNOSUPPORT where IPv6 is unreachable",
        || {
            net(g, &format!("tcp ::ffff:{SERVER} {ECHO_PORT} 65536"))?;
            net(g, &format!("tcp {SERVER6} {ECHO_PORT} 65536"))?;
            net(g, &format!("names {SERVER6} {ECHO_PORT}"))?;
            // No route to it in the namespace: the host answers -97, and clients fall back.
            connect_fails(g, "2001:db8::99", ECHO_PORT, libc::EAFNOSUPPORT)
        },
    )?;
    check(
        "TSI: UDP, connected and unconnected (replies name the destination)",
        || {
            net(g, &format!("udp {SERVER} {ECHO_PORT} connected"))?;
            net(g, &format!("udp {SERVER} {ECHO_PORT} unconnected"))?;
            net(g, &format!("udp {SERVER6} {ECHO_PORT} unconnected"))?;
            Ok(())
        },
    )?;
    check(
        "TSI: DNS A through a stub resolver, AAAA stripped without a host IPv6 route",
        || {
            stdout(g, &format!("echo nameserver {DNS} > /etc/resolv.conf"))?;
            let a = stdout(g, "/tmp/busybox nslookup -type=a web.example.test")?;
            ensure!(a.contains(DNS_A), "nslookup A: {a}");
            let aaaa = out(g, &sh("/tmp/busybox nslookup -type=aaaa web.example.test"))?;
            let text = String::from_utf8_lossy(&aaaa.stdout);
            ensure!(
                !text.contains(DNS_AAAA),
                "AAAA answered though the host has no IPv6 route: {text}"
            );
            Ok(())
        },
    )?;
    check(
        "TSI: busybox wget fetches from the host side (sha256)",
        || {
            fetches_blob(
                g,
                blob,
                "/tmp/busybox wget -q -O -",
                "/tmp/busybox sha256sum",
            )
        },
    )?;
    inbound_checks(g)?;
    check("TSI: Debian's curl and bash reach the host side", || {
        fetches_blob(g, blob, "curl -sS", "sha256sum")?;
        let line = stdout(
            g,
            &format!(
                "bash -c 'exec 3<>/dev/tcp/{SERVER}/{ECHO_PORT}; echo through-bash >&3; \
                 read -r l <&3; echo \"$l\"'"
            ),
        )?;
        ensure!(
            line.trim() == "through-bash",
            "bash /dev/tcp echo: {line:?}"
        );
        Ok(())
    })?;
    check("TSI: guest loopback stays the guest's", || {
        let o = out(
            g,
            &sh("(/tmp/net serve 9999 1 >/dev/null &); sleep 0.5; /tmp/net tcp 127.0.0.1 9999 65536"),
        )?;
        ensure!(o.status.code == 0, "{}", String::from_utf8_lossy(&o.stdout));
        Ok(())
    })?;
    check("TSI: 256 outbound connections at once, 1 MiB each", || {
        net(g, &format!("many {SERVER} {ECHO_PORT} {MANY_OUT} 1048576")).map(drop)
    })?;
    check("TSI: 100 000 random socket operations", || {
        for seed in 1..=STRESS_SEEDS {
            net(
                g,
                &format!("stress {seed} {STRESS_OPS} {SERVER} {ECHO_PORT}"),
            )?;
        }
        Ok(())
    })?;
    check(
        "TSI: no socket or vsock port leaked, no kernel warning",
        || {
            // The inbound servers are gone; give closes their moment.
            std::thread::sleep(Duration::from_millis(500));
            // Not more than before (a boot-time socket of aarch64's init may close meanwhile).
            let after = count(g, "sockets")?;
            ensure!(
                after <= sockets_before,
                "{sockets_before} sockets before, {after} after"
            );
            // vsock keeps a closed stream until its peer resets it or 8 s pass (supermachine's
            // muxer answers no SHUTDOWN): wait that out, then the count is back.
            let t = Instant::now();
            let mut vsocks = count(g, "vsocks")?;
            while vsocks > vsocks_before && t.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(500));
                vsocks = count(g, "vsocks")?;
            }
            ensure!(
                vsocks <= vsocks_before,
                "{vsocks_before} vsock sockets before, {vsocks} 20 s after"
            );
            let log = stdout(g, "dmesg")?;
            for bad in [
                "WARNING",
                "BUG",
                "Oops",
                "Call Trace",
                "no answer to control",
            ] {
                ensure!(!log.contains(bad), "kernel log has {bad:?}:\n{log}");
            }
            Ok(())
        },
    )
}

/// Waits up to 10 s for the muxer to count `n` listeners and to know guest `port`; its host
/// port.
fn wait_listener(g: &Guest, n: usize, port: u16) -> Result<u16> {
    let t = Instant::now();
    loop {
        let (count, ports) = tsi_host::read_status(g.vm.dir());
        let host = ports.iter().find(|(p, _)| *p == port).map(|(_, h)| *h);
        if let (true, Some(h)) = (count == n, host) {
            return Ok(h);
        }
        if t.elapsed() > Duration::from_secs(10) {
            bail!("the muxer counts {count} listeners ({ports:?}), want {n} with {port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A connection to guest `port` through supermachine's mux socket, with the `SMUX-PORT-V1`
/// header `Vm::expose_tcp` sends.
fn via_mux(g: &Guest, port: u16) -> Result<UnixStream> {
    let mut s = UnixStream::connect(sm_vsock::mux_socket(g.vm.dir()))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut hdr = b"SMUX-PORT-V1\0\0\0\0".to_vec();
    hdr.extend_from_slice(&u32::from(port).to_be_bytes());
    s.write_all(&hdr)?;
    Ok(s)
}

fn http_get(mut s: impl Read + Write) -> Result<String> {
    s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text)
}

fn echo_once(mut s: impl Read + Write, data: &[u8]) -> Result<()> {
    s.write_all(data)?;
    let mut back = vec![0; data.len()];
    s.read_exact(&mut back)?;
    ensure!(back == data, "the echo differs");
    Ok(())
}

fn inbound_checks(g: &Guest) -> Result<()> {
    let page = "served by busybox httpd in the guest";
    check(
        "TSI: inbound to busybox httpd, through the mux socket and the host port",
        || {
            ensure!(
                tsi_host::read_status(g.vm.dir()).0 == 0,
                "listeners before any listen"
            );
            stdout(
                g,
                &format!(
                    "mkdir -p /tmp/www && echo '{page}' > /tmp/www/index.html && \
                 (/tmp/busybox httpd -f -p {GUEST_HTTP} -h /tmp/www >/dev/null 2>&1 & \
                 echo $! > /tmp/httpd.pid)"
                ),
            )?;
            let host = wait_listener(g, 1, GUEST_HTTP)?;
            let a = http_get(via_mux(g, GUEST_HTTP)?)?;
            ensure!(a.contains(page), "through the mux socket: {a:?}");
            let s = TcpStream::connect(SocketAddr::from((Ipv6Addr::LOCALHOST, host)))?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            let b = http_get(s)?;
            ensure!(b.contains(page), "through host port {host}: {b:?}");
            Ok(())
        },
    )?;
    check(
        "TSI: two listeners routed by port; 64 inbound connections at once",
        || {
            stdout(
                g,
                &format!(
                    "(/tmp/net serve {GUEST_ECHO} {} > /tmp/serve.log 2>&1 &)",
                    MANY_IN + 1
                ),
            )?;
            let host = wait_listener(g, 2, GUEST_ECHO)?;
            let a = http_get(via_mux(g, GUEST_HTTP)?)?;
            ensure!(
                a.contains(page),
                "port {GUEST_HTTP} after a second listener: {a:?}"
            );
            echo_once(via_mux(g, GUEST_ECHO)?, b"routed by port")?;
            let threads: Vec<_> = (0..MANY_IN)
                .map(|i| {
                    std::thread::spawn(move || -> Result<()> {
                        let s = TcpStream::connect(SocketAddr::from((Ipv6Addr::LOCALHOST, host)))?;
                        s.set_read_timeout(Some(Duration::from_secs(60)))?;
                        let data: Vec<u8> = (0..65536u32).map(|b| (b ^ i as u32) as u8).collect();
                        echo_once(s, &data)
                    })
                })
                .collect();
            for (i, t) in threads.into_iter().enumerate() {
                t.join()
                    .map_err(|_| anyhow::anyhow!("inbound {i} panicked"))?
                    .with_context(|| format!("inbound connection {i}"))?;
            }
            stdout(g, "kill $(cat /tmp/httpd.pid)")?;
            Ok(())
        },
    )
}

/// A guest whose host has an IPv6 route, one under a deny policy, and one whose token the
/// host does not share.
fn policy_and_token_checks(arch: Arch, tools: &Tools, token: &str) -> Result<()> {
    let ipv6 = TsiHost {
        host_ipv6: Some(true),
        ..TsiHost::default()
    };
    with_guest(
        arch,
        tools,
        ipv6,
        "TSI: DNS AAAA answered when the host has an IPv6 route",
        |g| {
            stdout(g, &format!("echo nameserver {DNS} > /etc/resolv.conf"))?;
            let aaaa = stdout(g, "/tmp/busybox nslookup -type=aaaa web.example.test")?;
            ensure!(aaaa.contains(DNS_AAAA), "nslookup AAAA: {aaaa}");
            Ok(())
        },
    )?;
    let deny = TsiHost {
        egress_policy: Some("deny_private".into()),
        ..TsiHost::default()
    };
    with_guest(
        arch,
        tools,
        deny,
        "TSI: an egress policy that denies is EACCES",
        |g| {
            // deny_private covers the documentation ranges; the guest asks without a token.
            connect_fails(g, SERVER, ECHO_PORT, libc::EACCES)
        },
    )?;
    let mismatch = TsiHost {
        token: Some(token.to_string()),
        host_token: Some(util::sha256(b"another token")),
        ..TsiHost::default()
    };
    with_guest(
        arch,
        tools,
        mismatch,
        "TSI: a token the host does not share fails in bounded time",
        |g| {
            // The host drops the messages without an answer: tsi.timeout_ms (5 s) ends the wait.
            connect_fails(g, SERVER, ECHO_PORT, libc::ETIMEDOUT)?;
            let o = out(
                g,
                &sh(&format!("/tmp/net udp {SERVER} {ECHO_PORT} connected")),
            )?;
            let text = String::from_utf8_lossy(&o.stdout);
            ensure!(text.contains("errno=110 "), "UDP connect: {text}");
            Ok(())
        },
    )
}

/// One check, `name`, on a busybox guest of its own with the host side `tsi`; a failure
/// carries the guest's logs.
fn with_guest(
    arch: Arch,
    tools: &Tools,
    tsi: TsiHost,
    name: &str,
    f: impl FnOnce(&Guest) -> Result<()>,
) -> Result<()> {
    let g = start_guest(arch, tools, tsi, false)?;
    let result = check(name, || f(&g));
    g.finish(result)
}
