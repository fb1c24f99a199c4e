//! FilterQL text: parsing never panics, and whatever parses prints to a canonical form
//! that parses back to the same filter.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(filter) = cairn_filterql::parse(source) else {
        return;
    };
    let printed = cairn_filterql::print(&filter);
    let reparsed = cairn_filterql::parse(&printed)
        .unwrap_or_else(|err| panic!("the canonical form does not parse: {printed:?}: {err}"));
    assert_eq!(
        cairn_filterql::print(&reparsed),
        printed,
        "printing is not stable"
    );
});
