//! CONTROL actions: file transfers, probe and the refusals of host mode, workload signals.

use std::path::Path;

use supermachine_agent::protocol::*;

use crate::harness::*;

#[test]
fn files_round_trip_whole_and_chunked() {
    let a = Agent::start();
    let p = a.path("blob");
    let data: Vec<u8> = (0..(9u32 << 20) + 77)
        .map(|i| (i ^ (i >> 9)) as u8)
        .collect();
    a.client.write_file(&p, 0o640, &data).unwrap();
    assert!(a.client.read_file(&p, 64 << 20).unwrap() == data);
    let e = a.client.read_file(&p, 100).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::TooLarge), "{e}");
    // Only the target remains: no temp or partial files.
    let names: Vec<_> = std::fs::read_dir(&a.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    let v = control(
        &a,
        serde_json::json!({"action":"read_file","path":p,"max_bytes":5}),
    );
    assert_eq!(v["ok"], false);
    let small = a.path("small");
    let v = control(
        &a,
        serde_json::json!({"action":"write_file","path":small,"data_b64":"aGk="}),
    );
    assert_eq!(v, serde_json::json!({"ok":true}));
    let v = control(
        &a,
        serde_json::json!({"action":"read_file","path":small,"max_bytes":5}),
    );
    assert_eq!(v["data_b64"], "aGk=");
}

/// Issue 22: a hard link planted at the partial file's name had its target truncated and
/// overwritten, whether planted before the first chunk or between chunks.
#[test]
fn planted_hard_links_at_the_partial_name_are_not_written_through() {
    let a = Agent::start();
    let victim = a.path("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let out = a.path("out");
    let part = a.path(".out.sm-part-tok1");
    let chunk = |offset: u64, data: &[u8], last: bool| {
        control(
            &a,
            serde_json::json!({"action":"write_file_chunk","path":out,"offset":offset,
                "data_b64":supermachine_agent::base64::encode(data),"last":last,"token":"tok1"}),
        )
    };
    // Planted before the first chunk: unlinked, and a file of the transfer's own is created.
    std::fs::hard_link(&victim, &part).unwrap();
    assert_eq!(chunk(0, b"abc", false)["ok"], true);
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    // Planted between chunks: refused, naming why, and the victim is untouched.
    std::fs::remove_file(&part).unwrap();
    std::fs::hard_link(&victim, &part).unwrap();
    let v = chunk(3, b"def", true);
    assert_eq!(v["ok"], false, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("not the one this transfer created"),
        "{v}"
    );
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(!Path::new(&out).exists());
    // A FIFO planted between chunks fails the chunk at once instead of hanging the agent.
    assert_eq!(chunk(0, b"abc", false)["ok"], true);
    std::fs::remove_file(&part).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&part)
        .status()
        .unwrap();
    assert!(made.success());
    let v = chunk(3, b"def", true);
    assert_eq!(v["ok"], false, "{v}");
}

#[test]
fn probe_and_host_mode_refusals() {
    let a = Agent::start();
    let p = a.client.probe().unwrap();
    assert_eq!(p.protocol, 5);
    assert!(p.pid > 1 && p.threads >= 2 && p.rss_kib > 0, "{p:?}");
    assert!(a.client.sync().is_ok());
    for e in [
        a.client
            .sync_time(std::time::SystemTime::now())
            .unwrap_err(),
        a.client.power(PowerAction::Reboot).unwrap_err(),
        a.client.park().unwrap_err(),
    ] {
        assert_eq!(e.code(), Some(ErrorCode::PermissionDenied), "{e}");
    }
}

#[test]
fn signal_without_a_workload_pid_is_an_error() {
    if Path::new(WORKLOAD_PID_FILE).exists() {
        return; // a real supermachine guest's file on this host: not ours to signal.
    }
    let a = Agent::start();
    let e = a.client.workload_signal(15).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NoWorkload));
    assert!(
        e.to_string().contains("no workload pid recorded yet"),
        "{e}"
    );
}
