//! The supermachine guest agent: wire protocol, frame codec and a blocking host client.
//!
//! The agent binary (`supermachine-agent`, built from `src/bin/supermachine-agent/`) runs inside the guest as
//! PID 1 (x86_64) or as init-oci's child (aarch64) and serves supermachine's protocol 5 over
//! AF_VSOCK port [`protocol::DEFAULT_PORT`] (1028). This library is the host half:
//! [`client::Client`] speaks the protocol described byte by byte in `PROTOCOL.md` over a Unix
//! socket (`--listen unix:PATH`, or a VMM's bridge), hybrid vsock (`CONNECT <port>\n`) or
//! plain AF_VSOCK.
//!
//! # Implementation Design
//! - [`protocol`]: frame kinds, limits and the JSON bodies of REQUEST and CONTROL.
//! - [`codec`]: length-prefixed frame encoding and a decoder that never trusts its input.
//! - [`base64`]: the encoding of file contents inside JSON.
//! - [`client`]: the blocking host client, one connection per exec.
//! - [`transport`]: the socket types both sides share (Unix, hybrid vsock, AF_VSOCK).
//! - [`smpark`]: the ioctl ABI of the aarch64 vCPU-parking module the agent drives.
//!
//! # Examples
//! ```no_run
//! use supermachine_agent::client::{Client, Endpoint};
//! use supermachine_agent::protocol::ExecRequest;
//!
//! let client = Client::new(Endpoint::HybridVsock { path: "/tmp/vm.vsock".into(), port: 1028 });
//! let out = client.exec_output(&ExecRequest::new(["uname", "-a"]))?;
//! print!("{}", String::from_utf8_lossy(&out.stdout));
//! # Ok::<(), supermachine_agent::client::Error>(())
//! ```
#![deny(missing_docs)]

pub mod base64;
pub mod client;
pub mod codec;
pub mod protocol;
pub mod smpark;
pub mod transport;
