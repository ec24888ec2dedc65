//! Request bodies and the workload file (an OCI image `config`), parsed from arbitrary JSON
//! text as the agent parses them.
//!
//! Properties: parsing never panics; an accepted request survives a serialise/parse round trip
//! unchanged (the client and the agent agree on it); a workload config becomes an exec of
//! exactly `Entrypoint ++ Cmd`, and of nothing when both are empty.
#![no_main]

use libfuzzer_sys::fuzz_target;
use supermachine_agent::protocol::*;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = serde_json::from_slice::<Request>(data) {
        let text = serde_json::to_vec(&r).unwrap();
        assert_eq!(serde_json::from_slice::<Request>(&text).unwrap(), r);
    }
    if let Ok(c) = serde_json::from_slice::<ImageConfig>(data) {
        let mut argv = c.entrypoint.clone().unwrap_or_default();
        argv.extend(c.cmd.clone().unwrap_or_default());
        match c.to_exec() {
            None => assert!(argv.is_empty()),
            Some(e) => {
                assert_eq!(e.argv, argv);
                assert_eq!(e.env, c.env.clone().unwrap_or_default());
                assert!(e.cwd.as_deref() != Some("") && e.user.as_deref() != Some(""));
                assert!(!e.stdin && e.tty.is_none() && e.timeout_ms.is_none());
            }
        }
    }
    drop(serde_json::from_slice::<Hello>(data));
    drop(serde_json::from_slice::<ExecRequest>(data));
});
