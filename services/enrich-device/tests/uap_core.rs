//! The uap-core test suites, run through the parser the service uses. Each file's pass
//! rate is printed (run with `--nocapture` to see it) and must be at least 99%.

#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::io::Read as _;
use std::path::Path;

use cairn_enrich_device::Devices;
use serde::Deserialize;

#[derive(Deserialize)]
struct Suite {
    test_cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    user_agent_string: String,
    family: Option<String>,
    major: Option<String>,
    minor: Option<String>,
    patch: Option<String>,
    brand: Option<String>,
    model: Option<String>,
}

fn suite(name: &str) -> Vec<Case> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/uap")
        .join(format!("{name}.yaml.gz"));
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&path).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    serde_yaml::from_str::<Suite>(&text).unwrap().test_cases
}

fn version(case: &Case) -> Option<String> {
    let parts: Vec<&str> = [&case.major, &case.minor, &case.patch]
        .into_iter()
        .map_while(|part| part.as_deref())
        .collect();
    (!parts.is_empty()).then(|| parts.join("."))
}

/// Runs one suite; `check` says whether a case's answer is right.
fn pass_rate(name: &str, check: impl Fn(&Devices, &Case) -> bool) -> f64 {
    let devices = Devices::load(None, 0).unwrap();
    let cases = suite(name);
    let failed: Vec<&Case> = cases.iter().filter(|case| !check(&devices, case)).collect();
    let rate = 1.0 - failed.len() as f64 / cases.len() as f64;
    println!(
        "uap-core {name}: {} of {} cases pass ({:.2}%)",
        cases.len() - failed.len(),
        cases.len(),
        rate * 100.0
    );
    for case in failed.iter().take(5) {
        println!("  failed: {}", case.user_agent_string);
    }
    rate
}

#[test]
fn browsers_match_the_uap_core_suite() {
    let rate = pass_rate("test_ua", |devices, case| {
        let info = devices.parse(&case.user_agent_string);
        Some(&info.browser) == case.family.as_ref() && info.browser_version == version(case)
    });
    assert!(rate >= 0.99, "{rate}");
}

#[test]
fn operating_systems_match_the_uap_core_suite() {
    let rate = pass_rate("test_os", |devices, case| {
        let info = devices.parse(&case.user_agent_string);
        Some(&info.os) == case.family.as_ref() && info.os_version == version(case)
    });
    assert!(rate >= 0.99, "{rate}");
}

#[test]
fn devices_match_the_uap_core_suite() {
    let rate = pass_rate("test_device", |devices, case| {
        let info = devices.parse(&case.user_agent_string);
        Some(&info.device) == case.family.as_ref()
            && info.brand == case.brand
            && info.model == case.model
    });
    assert!(rate >= 0.99, "{rate}");
}
