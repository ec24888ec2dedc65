//! `park`, `unpark`, `park_status`: secondary vCPUs parked through smpark.ko for a snapshot.
//!
//! The agent keeps one `/dev/smpark` file open for its whole life: the module unparks
//! when the file that parked is closed, so a park must outlive the request that made it,
//! and an agent that dies cannot leave the guest parked.
//!
//! While CPUs are parked the agent's own threads are pinned to the primary CPU. Otherwise
//! the scheduler may wake an agent thread on a parked CPU (a CPU busy with a real-time task
//! looks empty to the fair class), where it waits about a second for the fair server's
//! slice: every request during a park would be that slow. Processes started while parked
//! inherit that pinning. The VMM may also unpark without the agent (it writes the module's
//! state page: supermachine's host-direct unpark), so before serving a request a pinned
//! agent asks the module whether any CPU is still parked and, if none is, unpins
//! ([`unpin_if_released`]).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use supermachine_agent::protocol::ParkStatus;
use supermachine_agent::smpark::{self, Status};

use crate::sys;
use crate::system::{self, Refused};
use crate::Config;

/// The agent's side of smpark (part of [`crate::state::State`]).
#[derive(Debug)]
pub struct Parking {
    /// The open device, once opened.
    device: Mutex<Option<File>>,
    /// Serialises park and unpark with the thread pinning that goes with them.
    operation: Mutex<()>,
    /// The agent's threads are pinned to the primary CPU for a park.
    pinned: AtomicBool,
}

impl Parking {
    /// The device not opened yet, nothing pinned.
    pub const fn new() -> Parking {
        Parking {
            device: Mutex::new(None),
            operation: Mutex::new(()),
            pinned: AtomicBool::new(false),
        }
    }
}

/// A failed park action; `op` is `park`, `unpark` or `park_status`.
#[derive(Debug)]
pub enum Error {
    /// Host test mode: parking would act on the host.
    Refused(Refused),
    /// Opening [`smpark::DEVICE`] failed (other than its absence).
    Open {
        /// The action.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// An smpark ioctl failed; ETIMEDOUT means a CPU did not park in time.
    Ioctl {
        /// The action.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// A park or unpark without the device (smpark.ko not loaded).
    NotLoaded {
        /// The action.
        op: &'static str,
        /// CPUs online.
        online: usize,
    },
}

impl Error {
    /// Whether a CPU did not park in time (the module then released every CPU).
    pub fn timed_out(&self) -> bool {
        matches!(self, Error::Ioctl { source, .. } if source.raw_os_error() == Some(libc::ETIMEDOUT))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dev = smpark::DEVICE;
        match self {
            Error::Refused(r) => r.fmt(f),
            Error::Open { op, source } => write!(f, "{op}: open {dev}: {source}"),
            Error::Ioctl { op, source } => {
                write!(f, "{op}: ioctl on {dev}: {source}")?;
                if self.timed_out() {
                    f.write_str(
                        " (a CPU did not park in time; every CPU was released, see the guest console)",
                    )?;
                }
                Ok(())
            }
            Error::NotLoaded { op, online } => write!(
                f,
                "{op}: {dev} not available: smpark.ko is not loaded ({online} CPU(s) online; init-oci loads /supermachine-smpark.ko when more than one is), so no CPU was parked"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Refused(r) => Some(r),
            Error::Open { source, .. } | Error::Ioctl { source, .. } => Some(source),
            Error::NotLoaded { .. } => None,
        }
    }
}

impl From<Refused> for Error {
    fn from(r: Refused) -> Error {
        Error::Refused(r)
    }
}

/// smpark's ioctl `request` on `f`: STATUS writes a `Status` through `arg`; PARK and UNPARK
/// take none.
fn ioctl(f: &File, op: &'static str, request: u32, arg: Option<&mut Status>) -> Result<(), Error> {
    sys::ioctl(f.as_raw_fd(), request, arg).map_err(|source| Error::Ioctl { op, source })
}

fn status_of(f: &File) -> Result<ParkStatus, Error> {
    let mut st = Status::default();
    ioctl(f, "park_status", smpark::SMPARK_STATUS, Some(&mut st))?;
    Ok(ParkStatus {
        module_loaded: true,
        online: smpark::cpus(st.online),
        parked: smpark::cpus(st.parked),
        primary: st.primary,
        parks: st.parks,
    })
}

/// Runs `op` with the device, opening it on first use. Without the module, `park_status`
/// reports `module_loaded: false`, while a park or unpark (`request`) fails with
/// [`Error::NotLoaded`], even on one CPU: supermachine takes a successful `smpark_park` to
/// mean "the secondaries are parked" and snapshots on it (its `api.rs`, HVF snapshot path),
/// so only a park that happened may answer `ok:true`, as upstream's agent answers.
fn with_device(
    parking: &Parking,
    op: &'static str,
    request: Option<u32>,
) -> Result<ParkStatus, Error> {
    let mut dev = parking.device.lock().unwrap_or_else(|e| e.into_inner());
    if dev.is_none() {
        match OpenOptions::new()
            .read(true)
            .write(true)
            .open(smpark::DEVICE)
        {
            Ok(f) => *dev = Some(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(Error::Open { op, source }),
        }
    }
    let Some(f) = dev.as_ref() else {
        let online = system::online_cpu_list();
        if request.is_none() {
            return Ok(ParkStatus {
                module_loaded: false,
                online,
                ..ParkStatus::default()
            });
        }
        return Err(Error::NotLoaded {
            op,
            online: online.len(),
        });
    };
    if let Some(r) = request {
        ioctl(f, op, r, None)?;
    }
    status_of(f)
}

/// Sets the CPU affinity of every thread of the agent (not of its children).
fn pin_threads(cpus: &[u32]) {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    for tid in tasks.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
        // A thread that exited meanwhile gives ESRCH, which is fine.
        let _ = sys::set_affinity(tid, cpus);
    }
}

/// Parks every online CPU but the primary; returns once all are parked.
pub fn park(config: &Config, parking: &Parking) -> Result<ParkStatus, Error> {
    system::refuse_on_host(config, "park")?;
    let _op = parking.operation.lock().unwrap_or_else(|e| e.into_inner());
    let before = with_device(parking, "park", None)?;
    if !before.module_loaded {
        return Err(Error::NotLoaded {
            op: "park",
            online: before.online.len(),
        });
    }
    pin_threads(&[before.primary]);
    parking.pinned.store(true, Ordering::SeqCst);
    let parked = with_device(parking, "park", Some(smpark::SMPARK_PARK));
    if parked.is_err() {
        pin_threads(&before.online);
        parking.pinned.store(false, Ordering::SeqCst);
    }
    parked
}

/// Releases the parked CPUs; returns once all run again.
pub fn unpark(config: &Config, parking: &Parking) -> Result<ParkStatus, Error> {
    system::refuse_on_host(config, "unpark")?;
    let _op = parking.operation.lock().unwrap_or_else(|e| e.into_inner());
    let st = with_device(parking, "unpark", Some(smpark::SMPARK_UNPARK))?;
    if st.module_loaded {
        pin_threads(&st.online);
        parking.pinned.store(false, Ordering::SeqCst);
    }
    Ok(st)
}

/// Unpins the agent's threads when the CPUs were released behind its back (host-direct
/// unpark). Cheap when not pinned: one atomic load. Skipped while a park or unpark runs.
pub fn unpin_if_released(parking: &Parking) {
    if !parking.pinned.load(Ordering::SeqCst) {
        return;
    }
    let Ok(_op) = parking.operation.try_lock() else {
        return;
    };
    if let Ok(st) = with_device(parking, "park_status", None) {
        if st.parked.is_empty() {
            pin_threads(&st.online);
            parking.pinned.store(false, Ordering::SeqCst);
        }
    }
}

/// Reports which CPUs are online and parked.
pub fn status(parking: &Parking) -> Result<ParkStatus, Error> {
    with_device(parking, "park_status", None)
}
