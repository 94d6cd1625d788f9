//! Human durations for flags: `250ms`, `2s`, `1m30s`, `1.5s`, `2m`.

use std::time::Duration;

/// Parses one or more `<number><unit>` parts (unit ms, s, m or h; a bare
/// number is seconds) and adds them up.
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let hint = || format!("invalid duration {s:?}: use e.g. 500ms, 2s, 1m30s");
    if s.is_empty() {
        return Err(hint());
    }
    let mut total = 0.0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let n: f64 = rest[..num_len].parse().map_err(|_| hint())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "" if num_len == s.len() => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(format!("invalid duration unit in {s:?}: use ms, s, m or h")),
        };
        total += n * scale;
        rest = &rest[unit_len..];
    }
    if !total.is_finite() || total < 0.0 {
        return Err(hint());
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_rejects_garbage() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "s", "abc", "5x", "5 parsecs", "-1s", "m5", "1s5"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
