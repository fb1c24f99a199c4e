//! The process-wide subscriber (its own test binary: it can be installed once).

use cairn_runtime::config::Settings;
use cairn_runtime::telemetry;
use tracing::level_filters::LevelFilter;

#[tokio::test]
async fn the_subscriber_switches_off_what_is_below_its_levels() {
    let settings = Settings::from_pairs(&[telemetry::LOG, telemetry::LOG_FORMAT], []);
    let _telemetry = telemetry::init("cairn-test", &settings).unwrap();
    // Known, so that debug and trace callsites (and `log` records) are switched off once
    // instead of being filtered on every call.
    assert_eq!(LevelFilter::current(), LevelFilter::INFO);
    assert!(!tracing::enabled!(tracing::Level::DEBUG));
    assert!(tracing::enabled!(tracing::Level::INFO));
}
