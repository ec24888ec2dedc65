//! REQUEST and CONTROL bodies, the CONTROL acks the host client reads back, and base64 file
//! contents, parsed from arbitrary text the way the agent and the client parse them.
//!
//! Properties: parsing never panics; an accepted request or action survives a
//! serialise/parse round trip unchanged (the client and the agent agree on it); a CONTROL
//! is refused as an unknown action exactly when its `action` is not one the agent lists; an
//! ack is read as the client reads it (`ok: true` picks the answer type, anything else the
//! error type) and whatever it accepts round-trips; base64 that decodes re-encodes to the
//! same text, and any bytes encode to text of the expected length that decodes back to them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use supermachine_agent::base64;
use supermachine_agent::protocol::*;

/// The client's `control_within` turns an `ok: true` ack into `T` straight from the JSON
/// object (the `ok` key is ignored by `T`): whatever a guest gets accepted that way must
/// mean the same after a round trip, or the host would act on a value it cannot restate.
fn answer_round_trips<T>(v: &Value)
where
    T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    if let Ok(t) = serde_json::from_value::<T>(v.clone()) {
        let again = serde_json::to_value(&t).expect("an answer always serialises");
        assert_eq!(serde_json::from_value::<T>(again).ok().as_ref(), Some(&t));
    }
}

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
    if let Ok(v) = serde_json::from_slice::<Value>(data) {
        if v.get("ok") == Some(&Value::Bool(true)) {
            answer_round_trips::<Empty>(&v);
            answer_round_trips::<Signalled>(&v);
            answer_round_trips::<FileData>(&v);
            answer_round_trips::<FileChunk>(&v);
            answer_round_trips::<ParkStatus>(&v);
            answer_round_trips::<ProbeInfo>(&v);
            answer_round_trips::<WorkloadState>(&v);
            answer_round_trips::<Ack<ProbeInfo>>(&v);
        } else if let Ok(e) = serde_json::from_value::<AckError>(v) {
            // Reached only when `ok` is not `true`, so a parsed error ack says false.
            assert!(!e.ok);
            let again = serde_json::to_value(&e).expect("an error ack always serialises");
            assert_eq!(serde_json::from_value::<AckError>(again).ok(), Some(e));
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(bytes) = base64::decode(text) {
            assert_eq!(base64::encode(&bytes), text);
        }
    }
    let coded = base64::encode(data);
    assert_eq!(coded.len(), data.len().div_ceil(3) * 4);
    assert_eq!(base64::decode(&coded).as_deref(), Ok(data));
});
