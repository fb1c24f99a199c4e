//! A campaign definition (YAML) as `cairn campaign create` reads it: refused with an
//! error or accepted, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(source) = std::str::from_utf8(data) {
        let _ = cairn_segmenter::campaigns::definition::Campaign::parse(source);
    }
});
