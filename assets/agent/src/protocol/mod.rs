//! Wire protocol 5: frame kinds, limits and the JSON bodies of REQUEST and CONTROL frames.
//!
//! This is the protocol supermachine 0.7.108's host code speaks (its "protocol 5"); `PROTOCOL.md`
//! next to this crate is the normative description and marks this project's compatible
//! extensions. Data frames (stdin/stdout/stderr) carry raw bytes; REQUEST and CONTROL carry
//! UTF-8 JSON; file contents travel base64-encoded inside CONTROL JSON ([`crate::base64`]).

mod acks;
mod control;
mod exec;
mod frames;

pub use acks::*;
pub use control::*;
pub use exec::*;
pub use frames::*;

/// Protocol version this agent reports in `probe` (supermachine requires at least 5).
pub const PROTOCOL_VERSION: u32 = 5;

/// The AF_VSOCK port the agent listens on (supermachine's `DEFAULT_EXEC_GUEST_PORT`).
pub const DEFAULT_PORT: u32 = 1028;

/// Largest accepted payload length of one frame, 16 MiB, in both directions.
pub const MAX_FRAME_LEN: u32 = 16 << 20;

/// Largest single `write` the agent makes to its connection (header and payload bytes alike).
///
/// Why 16 KiB: Linux 6.12 builds non-linear socket buffers for virtio-vsock packets above
/// ~32 KiB, whose data spans several virtqueue descriptors; vhost-device-vsock 0.3.0 rejects
/// such packets (`DescriptorLengthTooSmall`) without completing them, and the stream stalls.
/// Frames may be up to [`MAX_FRAME_LEN`] long; the agent just writes them in pieces.
pub const MAX_WRITE: usize = 16 * 1024;

/// Bytes before a frame's payload: the kind byte and 4 length bytes (the wire format's; the
/// codec reads and writes it).
pub const HEADER_LEN: usize = 5;

/// Largest payload the agent puts in one STDOUT/STDERR frame: header and payload then fit in
/// one [`MAX_WRITE`].
pub const MAX_DATA_CHUNK: usize = MAX_WRITE - HEADER_LEN;

/// Raw bytes per `write_file_chunk` / `read_file_chunk` (supermachine's own chunk size): the
/// base64 of 8 MiB, 10.7 MiB, stays under [`MAX_FRAME_LEN`].
pub const FILE_CHUNK: u64 = 8 << 20;

/// Console line prefix the agent prints once it accepts connections (`… port 1028`).
pub const READY_LINE: &str = "supermachine-agent: listening on AF_VSOCK port";

/// File the agent creates once it accepts connections (init-oci waits for it): the guest
/// contract's.
pub use supermachine_guest::paths::AGENT_READY as READY_FILE;

/// File holding the workload's pid, written by whoever started it (supermachine's x86
/// `/.supermachine/launch`, or init-oci); `signal` acts on that pid. The guest contract's.
pub use supermachine_guest::paths::WORKLOAD_PID as WORKLOAD_PID_FILE;

/// The error text of a CONTROL action the agent does not know; supermachine maps exactly this
/// string to "rebake the image".
pub const UNKNOWN_ACTION: &str = "unknown CONTROL action";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_kinds_round_trip() {
        for b in 0..=255u8 {
            if let Some(t) = FrameKind::from_u8(b) {
                assert_eq!(t as u8, b);
            }
        }
        assert_eq!(FrameKind::from_u8(0x7f), None);
    }

    #[test]
    fn exit_payload_is_supermachines() {
        let e = ExitStatus {
            code: 0,
            peak_rss_kib: 0x610,
        };
        assert_eq!(e.encode(), [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x06, 0x10]);
        assert_eq!(ExitStatus::decode(&e.encode()), Some(e));
        assert_eq!(
            ExitStatus::decode(&[0, 0, 0, 143]).map(|e| e.signal()),
            Some(Some(15))
        );
        assert_eq!(ExitStatus::decode(&[0, 0, 1]), None);
        let ws = WinSize {
            cols: 120,
            rows: 40,
        };
        assert_eq!(ws.encode(), [0, 120, 0, 40]);
        assert_eq!(WinSize::decode(&ws.encode()), Some(ws));
        assert_eq!(WinSize::decode(&[1, 2, 3]), None);
    }

    #[test]
    fn request_json_shape() {
        let mut r = ExecRequest::new(["true"]);
        r.env.insert("A".into(), "1".into());
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"argv":["true"],"env":{"A":"1"},"tty":false}"#
        );
        let r: ExecRequest =
            serde_json::from_str(r#"{"argv":["x"],"tty":true,"cols":120,"rows":40,"extra":1}"#)
                .unwrap();
        assert_eq!(
            r.winsize(),
            WinSize {
                cols: 120,
                rows: 40
            }
        );
    }

    #[test]
    fn control_parse_tells_unknown_from_malformed() {
        assert_eq!(
            Control::parse(br#"{"action":"probe","x":1}"#),
            Ok(Control::Probe)
        );
        assert_eq!(
            Control::parse(br#"{"action":"signal","signum":15}"#),
            Ok(Control::Signal { signum: 15 })
        );
        let e = Control::parse(br#"{"action":"frobnicate"}"#).unwrap_err();
        assert_eq!(e.to_string(), UNKNOWN_ACTION);
        let e = Control::parse(br#"{"action":"sync_time"}"#).unwrap_err();
        assert!(
            e.to_string().contains("missing field `host_unix_ns`"),
            "{e}"
        );
        let e = Control::parse(br#"{"nope":1}"#).unwrap_err();
        assert!(e.to_string().starts_with("CONTROL JSON parse:"), "{e}");
        // Every listed action parses with its fields, so the list and the enum agree.
        for a in ACTIONS {
            let e = Control::parse(format!(r#"{{"action":"{a}"}}"#).as_bytes());
            assert!(
                !matches!(e, Err(ControlParseError::UnknownAction(_))),
                "{a}"
            );
        }
    }

    #[test]
    fn acks_flatten_their_body() {
        let a = Ack {
            ok: true,
            body: Signalled { pid: 7 },
        };
        assert_eq!(serde_json::to_string(&a).unwrap(), r#"{"ok":true,"pid":7}"#);
        let e = AckError {
            ok: false,
            error: UNKNOWN_ACTION.into(),
            code: Some(ErrorCode::UnknownAction),
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"ok":false,"error":"unknown CONTROL action","code":"unknown_action"}"#
        );
    }
}
