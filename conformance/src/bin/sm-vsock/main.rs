//! `sm-vsock`: supermachine 0.7.108's own virtio-vsock device and muxer, served to QEMU as a
//! vhost-user-vsock backend, so that the project's rigs talk to the guest through the code
//! supermachine runs (its `devices::virtio::vsock::Vsock`, `VsockMuxer`, its exec and mux
//! sockets from `vmm::vsock_mux`, and its env service on port 1026) instead of
//! vhost-device-vsock.
//!
//! ```text
//! sm-vsock --vhost-socket PATH --cid N [--port GUEST_PORT=PATH]... [--env-json FILE]
//!          [--mux-socket PATH] [--tsi-token HEX64] [--egress-policy POLICY]
//!          [--status-file PATH [--report-inet-port PORT]...]
//! ```
//! - `--port`: supermachine's exec socket (`vmm::vsock_mux::start_exec`): every connection to
//!   the Unix socket PATH becomes a stream to the guest's GUEST_PORT (1028: the agent).
//! - `--env-json`: the document supermachine's muxer answers a guest connection to host port
//!   1026 with (`set_env_json`); without it, the muxer's default, no variables.
//! - `--mux-socket`: supermachine's inbound mux socket (`vmm::vsock_mux::start`, TSI ingress).
//! - `--tsi-token`: arm the muxer with this TSI token (`Vsock::with_tsi_token`): control
//!   messages without it are dropped silently, as on supermachine's HVF bakes and restores.
//! - `--egress-policy`: supermachine's outbound policy (`vmm::egress_policy::set`:
//!   `allow_all`, `deny_private`, `denylist:CIDRS`, `allowlist:CIDRS`).
//! - `--status-file`: every 50 ms, the muxer's TSI view, replaced atomically: a line
//!   `listeners N` (`VsockMuxer::listener_count`, what supermachine's listener-ready snapshot
//!   trigger counts), then `inet PORT host HOST_PORT` for each `--report-inet-port` the guest
//!   listens on (`host_port_for_inet_port`, what `expose_tcp` routes by).
//!
//! Whether the host has an IPv6 route (AAAA answers kept or stripped) is supermachine's own
//! `SUPERMACHINE_HOST_IPV6` variable (`0`/`1`), read from this process's environment.
//!
//! The bridge only moves queues, memory and notifications between vhost-user and
//! supermachine's device: every descriptor is read and written by supermachine's code. Guest
//! memory is mapped once from QEMU's memfd (one linear view: QEMU's RAM regions come from one
//! file with a constant `GPA − offset`). The device does not implement indirect descriptors
//! or event-idx, so neither is offered. QEMU's `vhost-user-vsock-device` masks the DGRAM
//! feature (bit 3) whatever the backend says; supermachine's device never consults it.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use supermachine::internal::devices::virtio::queue::{GuestMem, Queue};
use supermachine::internal::devices::virtio::vsock::device::Vsock;
use supermachine::internal::devices::virtio::vsock::muxer::set_env_json;
use supermachine::internal::devices::virtio::VirtioDevice;
use supermachine::internal::vmm::{egress_policy, vsock_mux};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{
    FileOffset, GuestAddressSpace, GuestMemory, GuestMemoryAtomic, GuestMemoryMmap,
    GuestMemoryRegion, MmapRegion,
};
use vmm_sys_util::epoll::EventSet;

mod args;
use args::{parse, Args};

/// `VIRTIO_F_VERSION_1`.
const VERSION_1: u64 = 1 << 32;
/// Queues of a virtio-vsock device: RX, TX, event.
const QUEUES: usize = 3;
/// The largest ring QEMU may set up (QEMU 10's vhost-user-vsock-device sets 1024, and a
/// backend that accepts less drops the connection); supermachine's queues walk whatever size
/// they are given.
const MAX_QUEUE_SIZE: usize = 1024;

type Memory = GuestMemoryAtomic<GuestMemoryMmap>;

/// Ring addresses and size of one queue: a change means the driver set the queues up anew.
type RingKey = (u64, u64, u64, u16, bool);

/// A mapping of guest RAM: the file (device, inode), `GPA − offset`, and the length.
type Identity = (u64, u64, u64, usize);

/// How long after QEMU resends its memory table (every `cont` after a `stop`, a gdbstub
/// attach) the bridge raises both data interrupts once: supermachine's threads may have used
/// buffers while QEMU had no call descriptor set, and those interrupts were dropped.
const RESIGNAL_AFTER: std::time::Duration = std::time::Duration::from_millis(200);

#[derive(Default)]
struct State {
    /// The current view of guest RAM, and supermachine's handle on it.
    view: Option<(MmapRegion, GuestMem)>,
    /// What the view maps: the file (device, inode), `GPA − offset`, and the length.
    identity: Option<Identity>,
    /// The data rings, once wired, for interrupts the bridge raises itself.
    rings: Vec<VringRwLock>,
    /// Earlier views: supermachine's threads may still hold their `GuestMem`, so a mapping is
    /// never unmapped while the process lives.
    old_views: Vec<MmapRegion>,
    /// The rings last handed to the device.
    active: Option<[RingKey; QUEUES]>,
    /// Interrupts and the muxer's wake-ups are wired.
    wired: bool,
}

struct Bridge {
    vsock: Arc<Vsock>,
    state: Mutex<State>,
    /// `SM_VSOCK_TRACE=1`: one stderr line per vhost-user event, for debugging a rig.
    trace: bool,
}

impl Bridge {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Maps guest RAM once, linearly. Fails (naming why) when QEMU's regions are not one
    /// file at one constant offset.
    fn map(mem: &GuestMemoryMmap) -> io::Result<(MmapRegion, GuestMem, Identity)> {
        let mut delta = None;
        let mut inode = None;
        let mut end = 0u64;
        let mut file = None;
        for r in mem.iter() {
            let fo = r.file_offset().ok_or_else(|| {
                io::Error::other(format!("region at {:#x} has no file", r.start_addr().0))
            })?;
            let d = r.start_addr().0.wrapping_sub(fo.start());
            let md = fo.file().metadata()?;
            let id = (md.dev(), md.ino());
            if *delta.get_or_insert(d) != d || *inode.get_or_insert(id) != id {
                return Err(io::Error::other(
                    "guest RAM is not one file at one offset; cannot map it linearly",
                ));
            }
            end = end.max(fo.start() + r.len());
            if file.is_none() {
                file = Some(fo.file().try_clone()?);
            }
        }
        let (file, delta) = file
            .zip(delta)
            .ok_or_else(|| io::Error::other("QEMU sent no memory regions"))?;
        let len = usize::try_from(end).map_err(io::Error::other)?;
        let map = MmapRegion::<()>::from_file(FileOffset::new(file, 0), len)
            .map_err(|e| io::Error::other(format!("map guest RAM ({len} B): {e}")))?;
        let gm = GuestMem::new(map.as_ptr(), delta, len);
        let (dev, ino) = inode.expect("set with delta");
        Ok((map, gm, (dev, ino, delta, len)))
    }

    /// Wires interrupts once, and hands the rings to the device whenever the driver set them
    /// up anew (first kick, or after a reset).
    fn activate_if_new(&self, vrings: &[VringRwLock]) {
        let mut st = self.state();
        if !st.wired {
            let rings: Vec<VringRwLock> = vrings.iter().take(2).cloned().collect();
            st.rings = rings.clone();
            self.vsock.set_irq_raise(Arc::new(move || signal(&rings)));
            let vsock = self.vsock.clone();
            self.vsock.muxer().set_kick(Arc::new(move || vsock.kick()));
            st.wired = true;
        }
        let Some((_, gm)) = st.view.as_ref() else {
            return;
        };
        // Every kick comes here: the queues are built only when the rings changed.
        let mut key = [(0, 0, 0, 0, false); QUEUES];
        for (k, ring) in key.iter_mut().zip(vrings) {
            let guard = ring.get_ref();
            let q = guard.get_queue();
            *k = (
                q.desc_table(),
                q.avail_ring(),
                q.used_ring(),
                q.size(),
                q.ready(),
            );
        }
        if st.active == Some(key) {
            return;
        }
        let queues: Vec<Queue> = vrings
            .iter()
            .take(QUEUES)
            .map(|ring| {
                let guard = ring.get_ref();
                let q = guard.get_queue();
                let mut sq = Queue::new(gm.clone());
                sq.size = q.size();
                sq.ready = q.ready();
                sq.desc_table = q.desc_table();
                sq.avail_ring = q.avail_ring();
                sq.used_ring = q.used_ring();
                sq.last_avail_idx = q.next_avail();
                sq.next_used_idx = q.next_used();
                sq
            })
            .collect();
        st.active = Some(key);
        let rings = st.rings.clone();
        drop(st);
        self.vsock.activate(queues);
        // Anything the muxer queued before the driver was ready goes out now, and the driver
        // hears of whatever is already used.
        self.vsock.notify(0);
        signal(&rings);
    }
}

/// Raises the interrupt of each of `rings`. supermachine raises its one line without naming
/// the queue, so the bridge signals both data queues (a spurious interrupt costs the driver
/// one look).
fn signal(rings: &[VringRwLock]) {
    for r in rings {
        let _ = r.signal_used_queue();
    }
}

impl VhostUserBackend for Bridge {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        QUEUES
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        VERSION_1 | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        // QEMU's vhost-user-vsock-device reads the guest CID through CONFIG.
        VhostUserProtocolFeatures::CONFIG
    }

    fn set_event_idx(&self, _enabled: bool) {}

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let c = self.vsock.config();
        let end = offset.saturating_add(size);
        c.get(offset as usize..end as usize)
            .map(<[u8]>::to_vec)
            .unwrap_or_default()
    }

    fn update_memory(&self, mem: Memory) -> io::Result<()> {
        let (map, gm, identity) = Self::map(&mem.memory())?;
        if self.trace {
            let regions: Vec<String> = mem
                .memory()
                .iter()
                .map(|r| format!("{:#x}+{:#x}", r.start_addr().0, r.len()))
                .collect();
            eprintln!("sm-vsock: memory {regions:?}");
        }
        let mut st = self.state();
        if st.identity == Some(identity) {
            // The same memory again: QEMU restarting the device after a `stop`. The rings and
            // supermachine's cursors stand; re-activating from vhost-user's copies of the
            // cursors would move them back past buffers supermachine used meanwhile (a
            // request written right after a `cont` was lost that way).
            st.old_views.push(map);
            let rings = st.rings.clone();
            std::thread::spawn(move || {
                std::thread::sleep(RESIGNAL_AFTER);
                signal(&rings);
            });
            return Ok(());
        }
        if let Some((old, _)) = st.view.replace((map, gm)) {
            st.old_views.push(old);
        }
        st.identity = Some(identity);
        st.active = None;
        Ok(())
    }

    fn handle_event(
        &self,
        queue: u16,
        _events: EventSet,
        vrings: &[VringRwLock],
        _thread: usize,
    ) -> io::Result<()> {
        self.activate_if_new(vrings);
        if self.trace {
            let rings: Vec<String> = vrings
                .iter()
                .map(|r| {
                    let g = r.get_ref();
                    let q = g.get_queue();
                    format!("{}@{:#x}/{}", q.size(), q.desc_table(), q.ready())
                })
                .collect();
            eprintln!("sm-vsock: kick {queue} {rings:?}");
        }
        if usize::from(queue) < 2 {
            // RX: the driver gave buffers; TX: the driver sent packets.
            self.vsock.notify(queue);
        }
        // Keep the ring positions QEMU reads back (GET_VRING_BASE) true.
        let cursors = self.vsock.snapshot_queues();
        if self.trace {
            let c: Vec<(u16, u16)> = cursors
                .iter()
                .map(|q| (q.last_avail_idx, q.next_used_idx))
                .collect();
            eprintln!("sm-vsock: after {queue}: (avail, used) {c:?}");
        }
        for (ring, q) in vrings.iter().zip(cursors) {
            ring.set_queue_next_avail(q.last_avail_idx);
            ring.set_queue_next_used(q.next_used_idx);
        }
        Ok(())
    }
}

fn run(a: Args) -> Result<(), String> {
    if let Some(f) = &a.env_json {
        let json = std::fs::read_to_string(f).map_err(|e| format!("read {}: {e}", f.display()))?;
        set_env_json(json);
    }
    if let Some(p) = &a.egress_policy {
        egress_policy::set(p);
    }
    let vsock = Arc::new(
        Vsock::with_tsi_token(a.cid, a.tsi_token)
            .map_err(|e| format!("supermachine's vsock device: {e}"))?,
    );
    for (port, path) in &a.ports {
        vsock_mux::start_exec(path, vsock.clone(), *port)
            .map_err(|e| format!("exec socket {path} (guest port {port}): {e}"))?;
    }
    let _mux = match &a.mux_socket {
        Some(path) => Some(
            vsock_mux::start(path, vsock.clone(), None)
                .map_err(|e| format!("mux socket {path}: {e}"))?,
        ),
        None => None,
    };
    if let Some(path) = &a.status_file {
        report_status(vsock.clone(), path.clone(), a.report_inet_ports.clone());
    }
    let trace = std::env::var_os("SM_VSOCK_TRACE").is_some();
    if trace {
        eprintln!("sm-vsock: device config {:?}", vsock.config());
    }
    let bridge = Arc::new(Bridge {
        vsock,
        state: Mutex::new(State::default()),
        trace,
    });
    let mut daemon = VhostUserDaemon::new(
        "sm-vsock".into(),
        bridge,
        GuestMemoryAtomic::new(GuestMemoryMmap::new()),
    )
    .map_err(|e| format!("vhost-user daemon: {e:?}"))?;
    let path = a.vhost_socket.expect("parse requires --vhost-socket");
    let listener =
        Listener::new(&path, true).map_err(|e| format!("listen on {}: {e}", path.display()))?;
    daemon
        .start(listener)
        .map_err(|e| format!("serve {}: {e:?}", path.display()))?;
    // Returns when QEMU disconnects (the VM ended).
    daemon.wait().map_err(|e| format!("vhost-user: {e:?}"))
}

/// Writes the muxer's TSI view to `path` every 50 ms (see `--status-file`), for the life of
/// the process.
fn report_status(vsock: Arc<Vsock>, path: PathBuf, ports: Vec<u16>) {
    let tmp = path.with_extension("tmp");
    std::thread::spawn(move || loop {
        let muxer = vsock.muxer();
        let mut text = format!("listeners {}\n", muxer.listener_count());
        for p in &ports {
            if let Some(h) = muxer.host_port_for_inet_port(*p) {
                text.push_str(&format!("inet {p} host {h}\n"));
            }
        }
        if std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .is_err()
        {
            // The VM's directory is gone: the VM ended.
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    });
}

fn main() -> ExitCode {
    match parse(std::env::args().skip(1)).and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sm-vsock: {e}");
            ExitCode::FAILURE
        }
    }
}
