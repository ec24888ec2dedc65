//! `sm-vsock`'s command line (see the crate's binary documentation in `main.rs`).

use std::path::PathBuf;

/// The command line.
#[derive(Debug, Default)]
pub struct Args {
    /// QEMU's vhost-user socket (`--vhost-socket`).
    pub vhost_socket: Option<PathBuf>,
    /// The guest's CID (`--cid`, 3 or more).
    pub cid: u64,
    /// Exec sockets: guest port and Unix socket path (`--port`).
    pub ports: Vec<(u32, String)>,
    /// The env document for port 1026 (`--env-json`).
    pub env_json: Option<PathBuf>,
    /// The inbound mux socket (`--mux-socket`).
    pub mux_socket: Option<String>,
    /// The TSI token the muxer requires (`--tsi-token`).
    pub tsi_token: Option<[u8; 32]>,
    /// supermachine's egress policy (`--egress-policy`).
    pub egress_policy: Option<String>,
    /// Where the muxer's TSI view is reported (`--status-file`).
    pub status_file: Option<PathBuf>,
    /// Guest inet ports whose host ports the report names (`--report-inet-port`).
    pub report_inet_ports: Vec<u16>,
}

const USAGE: &str = "usage: sm-vsock --vhost-socket PATH --cid N [--port GUEST_PORT=PATH]... \
                     [--env-json FILE] [--mux-socket PATH] [--tsi-token HEX64] \
                     [--egress-policy POLICY] [--status-file PATH [--report-inet-port PORT]...]";

/// The 32 bytes of a 64-hex-digit token.
fn parse_token(hex: &str) -> Result<[u8; 32], String> {
    let bad = || {
        format!(
            "--tsi-token: want 64 hex digits, got {} characters",
            hex.len()
        )
    };
    if hex.len() != 64 || !hex.is_ascii() {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

pub fn parse(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut a = Args::default();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--vhost-socket" => a.vhost_socket = Some(value.into()),
            "--cid" => a.cid = value.parse().map_err(|e| format!("--cid {value}: {e}"))?,
            "--port" => {
                let (port, path) = value
                    .split_once('=')
                    .ok_or_else(|| format!("--port {value}: want GUEST_PORT=PATH"))?;
                let port = port.parse().map_err(|e| format!("--port {value}: {e}"))?;
                a.ports.push((port, path.to_string()));
            }
            "--env-json" => a.env_json = Some(value.into()),
            "--mux-socket" => a.mux_socket = Some(value),
            "--tsi-token" => a.tsi_token = Some(parse_token(&value)?),
            "--egress-policy" => a.egress_policy = Some(value),
            "--status-file" => a.status_file = Some(value.into()),
            "--report-inet-port" => a.report_inet_ports.push(
                value
                    .parse()
                    .map_err(|e| format!("--report-inet-port {value}: {e}"))?,
            ),
            other => return Err(format!("unknown flag {other:?}\n{USAGE}")),
        }
    }
    if a.vhost_socket.is_none() || a.cid < 3 {
        return Err(format!(
            "--vhost-socket and a --cid of 3 or more are required\n{USAGE}"
        ));
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Result<Args, String> {
        parse(s.iter().map(|s| s.to_string()))
    }

    #[test]
    fn flags_parse_and_bad_ones_are_named() {
        let a = args(&[
            "--vhost-socket",
            "v.sock",
            "--cid",
            "3",
            "--port",
            "1028=/tmp/x.sock",
        ])
        .unwrap();
        assert_eq!((a.cid, a.ports), (3, vec![(1028, "/tmp/x.sock".into())]));
        assert!(args(&["--cid", "3"]).unwrap_err().contains("required"));
        assert!(args(&["--vhost-socket", "v", "--cid", "2"])
            .unwrap_err()
            .contains("3 or more"));
        assert!(args(&["--port", "1028"])
            .unwrap_err()
            .contains("GUEST_PORT=PATH"));
        assert!(args(&["--what", "1"]).unwrap_err().contains("unknown flag"));
        let t = args(&[
            "--vhost-socket",
            "v",
            "--cid",
            "3",
            "--tsi-token",
            &"0a".repeat(32),
        ])
        .unwrap();
        assert_eq!(t.tsi_token, Some([10u8; 32]));
        assert!(args(&["--tsi-token", "abc"])
            .unwrap_err()
            .contains("64 hex digits"));
        assert!(args(&["--tsi-token", &"zz".repeat(32)])
            .unwrap_err()
            .contains("64 hex digits"));
    }
}
