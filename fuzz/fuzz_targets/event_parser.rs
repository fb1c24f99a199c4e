//! A request body as the collector's HTTP API receives it, plain or gzip: parsed as a
//! batch and as each single call. Accepted events must be JSON objects whose bytes are
//! exactly a part of the body.
#![no_main]

use bytes::Bytes;
use cairn_collector::event::{self, CallType};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, body)) = data.split_first() else {
        return;
    };
    let Ok(body) = event::decode_body(
        Bytes::copy_from_slice(body),
        flags & 1 == 1,
        512 * 1024,
        "per batch",
    ) else {
        return;
    };
    check(event::parse_batch(&body));
    let call = CallType::ALL[usize::from(flags >> 1) % CallType::ALL.len()];
    check(event::parse_single(call, &body));
    check(event::parse_events(&[body]));
});

fn check(parsed: Result<event::AcceptedRequest, event::Rejection>) {
    let Ok(request) = parsed else {
        return;
    };
    for accepted in request.events {
        let value: serde_json::Value =
            serde_json::from_slice(&accepted.raw).expect("an accepted event is JSON");
        assert!(value.is_object(), "an accepted event is an object");
    }
}
