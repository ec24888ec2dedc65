//! REQUEST and CONTROL bodies and base64 file contents, parsed from arbitrary text as the agent
//! parses them.
//!
//! Properties: parsing never panics; an accepted request or action survives a
//! serialise/parse round trip unchanged (the client and the agent agree on it); a CONTROL
//! is refused as an unknown action exactly when its `action` is not one the agent lists;
//! base64 that decodes re-encodes to the same text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use supermachine_agent::base64;
use supermachine_agent::protocol::*;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = serde_json::from_slice::<ExecRequest>(data) {
        let text = serde_json::to_vec(&r).unwrap();
        assert_eq!(serde_json::from_slice::<ExecRequest>(&text).unwrap(), r);
    }
    match Control::parse(data) {
        Ok(c) => {
            let text = serde_json::to_vec(&c).unwrap();
            assert_eq!(Control::parse(&text).unwrap(), c);
        }
        Err(ControlParseError::UnknownAction(a)) => assert!(!ACTIONS.contains(&a.as_str())),
        Err(ControlParseError::Json(_)) => {}
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(bytes) = base64::decode(text) {
            assert_eq!(base64::encode(&bytes), text);
        }
    }
});
