//! File transfers that lie.

use supermachine_agent::base64;
use supermachine_agent::client::Error;
use supermachine_agent::protocol::*;

use crate::fake::*;

/// A fake that answers each `read_file_chunk` with `chunk(offset)`: (data, total_len), one
/// request per connection.
fn file_server(chunk: impl Fn(u64) -> (Vec<u8>, u64) + Send + Sync + 'static) -> Fake {
    Fake::start(move |mut s, _| {
        while let Some(f) = next_request(&mut s) {
            let v: serde_json::Value = serde_json::from_slice(&f.payload).unwrap();
            let (data, total) = chunk(v["offset"].as_u64().unwrap());
            let ack = serde_json::json!({
                "ok": true,
                "data_b64": base64::encode(&data),
                "total_len": total,
            });
            send(&mut s, FrameKind::Control, ack.to_string().as_bytes());
        }
    })
}

#[test]
fn read_file_allocates_only_what_arrived() {
    // A file of 2^62 bytes, claimed; `max_size = u64::MAX` must not reserve either.
    let fake = file_server(|off| (if off == 0 { b"abc".to_vec() } else { vec![] }, 1 << 62));
    let e = within(BOUND, || {
        fake.client().read_file("/big", u64::MAX).unwrap_err()
    });
    assert!(
        matches!(&e, Error::Protocol(m) if m.contains("short transfer: 3 of 4611686018427387904")),
        "{e:?}"
    );
    // Above the caller's max_size: refused at the first answer.
    let fake = file_server(|_| (b"abc".to_vec(), 1 << 40));
    let e = within(BOUND, || {
        fake.client().read_file("/big", 1 << 20).unwrap_err()
    });
    assert!(
        matches!(&e, Error::Protocol(m) if m.contains("above max_size")),
        "{e:?}"
    );
}

#[test]
fn short_and_inconsistent_transfers_are_errors() {
    // The length shrinks to what was sent: once accepted silently.
    let fake = file_server(|off| match off {
        0 => (vec![1; FILE_CHUNK as usize], 2 * FILE_CHUNK),
        _ => (vec![], 4),
    });
    let e = within(PATIENT, || {
        fake.client().read_file("/f", 1 << 30).unwrap_err()
    });
    assert!(
        matches!(&e, Error::Protocol(m) if m.contains(&format!("changed from {} to 4", 2 * FILE_CHUNK))),
        "{e:?}"
    );
    // More bytes than the file has.
    let fake = file_server(|_| (b"abcd".to_vec(), 2));
    let e = within(BOUND, || {
        fake.client().read_file("/f", 1 << 20).unwrap_err()
    });
    assert!(
        matches!(&e, Error::Protocol(m) if m.contains("run past")),
        "{e:?}"
    );
    // Chunks that stop before the end.
    let fake = file_server(|off| (if off < 4 { b"ab".to_vec() } else { vec![] }, 10));
    let e = within(BOUND, || {
        fake.client().read_file("/f", 1 << 20).unwrap_err()
    });
    assert!(
        matches!(&e, Error::Protocol(m) if m.contains("short transfer: 2 of 10")),
        "{e:?}"
    );
    // A chunk larger than asked.
    let fake = file_server(|_| (vec![0; FILE_CHUNK as usize + 1], 1 << 30));
    // (16 MiB of base64 through unoptimised code: a looser bound on a loaded machine.)
    let e = within(PATIENT, || {
        fake.client().read_file("/f", 1 << 31).unwrap_err()
    });
    assert!(
        matches!(&e, Error::Protocol(m) if m.contains("above the")),
        "{e:?}"
    );
    // Issue 22: 2^62 bytes claimed, one byte per chunk: 314,813 round trips in 75 s and still
    // going, as the deadline was per chunk. The first short chunk ends it now.
    let fake = file_server(|off| (vec![off as u8], 1 << 62));
    let e = within(BOUND, || {
        fake.client().read_file("/f", u64::MAX).unwrap_err()
    });
    assert!(
        matches!(&e, Error::Protocol(m) if m.contains("short transfer: 1 of")),
        "{e:?}"
    );
    assert_eq!(fake.connections(), 1);
    // Whole chunks, then the rest: what our agent sends.
    let len = FILE_CHUNK + 3;
    let fake = file_server(move |off| {
        let n = (len - off).min(FILE_CHUNK);
        (vec![7; n as usize], len)
    });
    let data = within(PATIENT, || fake.client().read_file("/f", u64::MAX).unwrap());
    assert_eq!(data.len() as u64, len);
    assert_eq!(fake.connections(), 2);
}
