//! Unit tests of the file actions.

use super::*;

#[test]
fn procfs_files_read_back_their_contents() {
    let whole = read_whole("/proc/self/status", 1 << 20).unwrap();
    let text = base64::decode(&whole.data_b64).unwrap();
    assert!(String::from_utf8_lossy(&text).contains("VmRSS"), "{text:?}");
    let chunk = read_chunk("/proc/self/status", 0, 1 << 20, 1 << 20).unwrap();
    assert!(chunk.total_len > 0);
    assert!(
        read_whole("/proc/self/status", 4).is_err(),
        "max_bytes holds"
    );
    // sysfs: 4096 reported, less held; the chunk says where the file really ends.
    let attr = "/sys/kernel/mm/transparent_hugepage/enabled";
    if let Ok(c) = read_chunk(attr, 0, 1 << 20, 1 << 20) {
        let data = base64::decode(&c.data_b64).unwrap();
        assert!(!data.is_empty() && data.len() < 4096);
        assert_eq!(c.total_len, data.len() as u64);
    }
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("smk-files-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

fn left(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn chunked_write_commits_on_last_and_refuses_gaps() {
    let d = dir("chunk");
    let t = d.join("f").to_string_lossy().into_owned();
    let b = |s: &[u8]| base64::encode(s);
    write_chunk(&t, 0, &b(b"abc"), false, "tok", None).unwrap();
    assert!(!Path::new(&t).exists());
    let e = write_chunk(&t, 7, &b(b"x"), false, "tok", None).unwrap_err();
    assert!(
        e.to_string()
            .contains("offset 7 does not follow the 3 bytes"),
        "{e}"
    );
    write_chunk(&t, 3, &b(b"def"), true, "tok", Some(0o600)).unwrap();
    assert_eq!(fs::read(&t).unwrap(), b"abcdef");
    assert_eq!(
        fs::metadata(&t).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(left(&d), ["f"]);
    let e = write_chunk(&t, 0, "", false, "../x", None).unwrap_err();
    assert!(e.to_string().contains("token"), "{e}");
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn whole_writes_and_reads() {
    let d = dir("whole");
    let t = d.join("g").to_string_lossy().into_owned();
    write_whole(&t, &base64::encode(b"hello"), None).unwrap();
    assert_eq!(
        fs::metadata(&t).unwrap().permissions().mode() & 0o777,
        0o644
    );
    let e = write_whole(&t, "ab", None).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("write_file({t}): bad base64: length 2 is not a multiple of 4")
    );
    let missing = d.join("no/such").to_string_lossy().into_owned();
    let e = write_whole(&missing, "", None).unwrap_err();
    // The edge classifies this as `not_found` (its tests check that mapping).
    assert!(
        matches!(&e.cause, Cause::Os { source, .. } if source.kind() == io::ErrorKind::NotFound),
        "{e}"
    );
    assert_eq!(left(&d), ["g"]);
    let r = read_whole(&t, 100).unwrap();
    assert_eq!(base64::decode(&r.data_b64).unwrap(), b"hello");
    let e = read_whole(&t, 3).unwrap_err();
    assert!(
        e.to_string()
            .ends_with("file is 5 bytes; exceeds max_bytes=3"),
        "{e}"
    );
    let c = read_chunk(&t, 1, 2, 100).unwrap();
    assert_eq!(
        (base64::decode(&c.data_b64).unwrap(), c.total_len),
        (b"el".to_vec(), 5)
    );
    let e = read_chunk(&t, 9, 1, 100).unwrap_err();
    assert!(e.to_string().ends_with("offset 9 > file len 5"), "{e}");
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn fifos_are_refused_without_blocking() {
    let d = dir("fifo");
    let f = d.join("p");
    let c = std::ffi::CString::new(f.to_string_lossy().as_bytes()).unwrap();
    // SAFETY: c is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let e = read_whole(&f.to_string_lossy(), 10).unwrap_err();
    assert!(e.to_string().ends_with("not a regular file"), "{e}");
    fs::remove_dir_all(&d).unwrap();
}
