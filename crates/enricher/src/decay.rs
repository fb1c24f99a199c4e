//! Weights that fade: what the enrichers that remember (activity, content) count halves
//! every half-life, so that habits and interests can change.

use std::time::Duration;

use cairn_runtime::config::{ConfigError, Settings, Var};

/// The weight of an event at `at_ms` in totals kept as of `as_of` (the newest event
/// time seen). A newer event first fades everything counted so far (`fade_all` gets the
/// factor), moves `as_of` to it and weighs 1; an older one arriving late weighs what it
/// would have by now.
pub fn weigh(as_of: &mut i64, at_ms: i64, half_life_ms: f64, fade_all: impl FnOnce(f64)) -> f64 {
    if at_ms >= *as_of {
        fade_all(0.5f64.powf((at_ms - *as_of) as f64 / half_life_ms));
        *as_of = at_ms;
        1.0
    } else {
        0.5f64.powf((*as_of - at_ms) as f64 / half_life_ms)
    }
}

/// A half-life setting: a duration of at least an hour.
pub fn half_life(settings: &Settings, var: &Var) -> Result<Duration, ConfigError> {
    let half_life = settings.duration(var)?;
    if half_life < Duration::from_secs(3_600) {
        return Err(settings.invalid(var, "must be at least 1h"));
    }
    Ok(half_life)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_events_fade_the_past_and_late_ones_count_as_faded() {
        let day = 86_400_000.0;
        let mut as_of = 0;
        let mut total = 0.0;
        total += weigh(&mut as_of, 10 * 86_400_000, day, |fade| total *= fade);
        assert_eq!((total, as_of), (1.0, 10 * 86_400_000));
        total += weigh(&mut as_of, 11 * 86_400_000, day, |fade| total *= fade);
        assert_eq!(total, 1.5);
        // A day late: half a weight, and the newest time stays.
        total += weigh(&mut as_of, 10 * 86_400_000, day, |_| unreachable!());
        assert_eq!((total, as_of), (2.0, 11 * 86_400_000));
    }
}
