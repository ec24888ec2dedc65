//! CONTROL actions, each through supermachine's public client.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure, Context};
use serde_json::json;
use supermachine::wire::{b64_decode, b64_encode};

use super::{first_difference, pattern};
use crate::client::Agent;
use crate::report::Report;

/// CONTROL actions.
pub fn control(r: &mut Report, a: &Agent) {
    let t = Duration::from_secs(30);
    r.check("probe-protocol", || {
        let ack = a.control(&json!({"action": "probe"}), t)?;
        let p = ack["protocol"]
            .as_u64()
            .context("no `protocol` in the ack")?;
        ensure!(
            p >= 5,
            "protocol {p} < 5 (supermachine 0.7.108 asks for a rebake)"
        );
        Ok(format!("protocol {p}"))
    });
    r.check("sync", || {
        a.control(&json!({"action": "sync"}), t)?;
        Ok("ok".into())
    });
    r.check("sync-time", || {
        a.control(&json!({"action": "sync_time", "host_unix_ns": now_ns()}), t)?;
        let guest: i64 = a.sh("date +%s")?.trim().parse().context("date +%s")?;
        let host = (now_ns() / 1_000_000_000) as i64;
        ensure!(
            (guest - host).abs() <= 10,
            "guest clock {guest}, host {host}"
        );
        match a.control(&json!({"action": "sync_time"}), t) {
            Ok(_) => bail!("sync_time without host_unix_ns was accepted"),
            Err(e) => Ok(format!(
                "clock within {} s; missing field: {e}",
                (guest - host).abs()
            )),
        }
    });
    r.check("drop-vfs-caches", || {
        a.control(&json!({"action": "drop_vfs_caches"}), t)?;
        Ok("ok".into())
    });
    r.check("file-chunks-3mib", || {
        const CHUNK: usize = 1 << 20;
        let path = "/tmp/conformance-chunked.bin";
        let data = pattern(3 * CHUNK, 3);
        let token = format!("conf{}", std::process::id());
        let chunks: Vec<&[u8]> = data.chunks(CHUNK).collect();
        for (i, c) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            let mut req = json!({
                "action": "write_file_chunk",
                "path": path,
                "offset": (i * CHUNK) as u64,
                "data_b64": b64_encode(c),
                "last": last,
                "token": token,
            });
            if last {
                req["mode"] = json!(0o640);
            }
            a.control(&req, t)
                .with_context(|| format!("write_file_chunk {i}"))?;
        }
        let mut back = Vec::new();
        let mut total = None;
        while back.len() < data.len() {
            let ack = a
                .control(
                    &json!({
                        "action": "read_file_chunk",
                        "path": path,
                        "offset": back.len() as u64,
                        "len": CHUNK as u64,
                        "max_bytes": 32u64 << 20,
                    }),
                    t,
                )
                .with_context(|| format!("read_file_chunk at {}", back.len()))?;
            total = ack["total_len"].as_u64();
            let part = b64_decode(ack["data_b64"].as_str().context("no data_b64")?)
                .map_err(|e| anyhow!("data_b64: {e}"))?;
            if part.is_empty() {
                break;
            }
            back.extend_from_slice(&part);
        }
        ensure!(
            total == Some(data.len() as u64),
            "total_len {total:?}, want {}",
            data.len()
        );
        ensure!(back == data, "read back {}", first_difference(&back, &data));
        let extra = a.sh(&format!(
            "stat -c %a {path}; ls -a /tmp | grep -c supermachine-write.partial || true"
        ))?;
        ensure!(
            extra == "640\n0\n",
            "mode and partial-file count: {:?} (want 640, 0)",
            extra
        );
        Ok("3 MiB in 3 chunks, mode 640, no partial left".into())
    });
    // supermachine's HVF snapshot path takes `ok:true` from smpark_park to mean "secondaries
    // parked" (its api.rs); a guest without /dev/smpark (this one: x86_64, no module) parked
    // nothing, so both actions must fail and say why.
    r.check("smpark-without-module", || {
        let mut said = Vec::new();
        for action in ["smpark_park", "smpark_unpark"] {
            match a.control(&json!({ "action": action }), t) {
                Ok(ack) => bail!("{action} answered ok without /dev/smpark: {ack}"),
                Err(e) if e.to_string().contains("/dev/smpark") => said.push(e.to_string()),
                Err(e) => bail!("{action}: error {e:?} does not name /dev/smpark"),
            }
        }
        Ok(said.join("; "))
    });
    r.check("unknown-action", || {
        match a.control(&json!({"action": "conformance-no-such-action"}), t) {
            Ok(ack) => bail!("accepted: {ack}"),
            Err(e) if e.to_string().contains("unknown CONTROL action") => Ok(e.to_string()),
            Err(e) => bail!("error {e:?} does not say `unknown CONTROL action`"),
        }
    });
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
