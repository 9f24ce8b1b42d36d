//! Weekly time windows in a fixed UTC offset, as plain functions.

use std::fmt;

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const MINUTES_PER_DAY: u32 = 24 * 60;
const MS_PER_DAY: i64 = 86_400_000;

/// Days of the week a window opens on, and its hours in local minutes since midnight.
/// `start > end` is a window running past midnight (22:00-06:00): it opens on the listed
/// days and closes the next morning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    days: [bool; 7],
    start: u32,
    end: u32,
}

/// Weekday (0 = Monday) and minute of the day of `now_ms` (unix ms) at `offset_minutes`
/// from UTC.
pub fn local_time(now_ms: u64, offset_minutes: i32) -> (usize, u32) {
    let local = i64::try_from(now_ms).unwrap_or(i64::MAX).saturating_add(i64::from(offset_minutes) * 60_000);
    let day = local.div_euclid(MS_PER_DAY);
    // 1970-01-01 was a Thursday (index 3).
    let weekday = (day + 3).rem_euclid(7) as usize;
    let minute = (local.rem_euclid(MS_PER_DAY) / 60_000) as u32;
    (weekday, minute)
}

/// `HH:MM`, `00:00` to `24:00`.
fn parse_clock(field: &str, text: &str) -> Result<u32, String> {
    let bad = || format!("{field}: {text:?} is not HH:MM (00:00 to 24:00)");
    let (h, m) = text.trim().split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: u32 = h.parse().map_err(|_| bad())?;
    let m: u32 = m.parse().map_err(|_| bad())?;
    if m > 59 || h > 24 || (h == 24 && m != 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

fn parse_days(field: &str, names: &[String]) -> Result<[bool; 7], String> {
    if names.is_empty() {
        return Err(format!("{field}: list at least one day"));
    }
    let mut days = [false; 7];
    for (i, name) in names.iter().enumerate() {
        let lower = name.trim().to_ascii_lowercase();
        let index = DAY_NAMES.iter().position(|d| *d == lower).ok_or_else(|| {
            format!("{field}[{i}]: {name:?} is not one of mon, tue, wed, thu, fri, sat, sun")
        })?;
        days[index] = true;
    }
    Ok(days)
}

impl Window {
    /// Parses a window; `field` prefixes error messages (e.g. `overrides.oncall`).
    pub fn parse(field: &str, days: &[String], start: &str, end: &str) -> Result<Window, String> {
        let days = parse_days(&format!("{field}days"), days)?;
        let start = parse_clock(&format!("{field}start"), start)?;
        let end = parse_clock(&format!("{field}end"), end)?;
        if start == MINUTES_PER_DAY {
            return Err(format!("{field}start: 24:00 can only end a window"));
        }
        if start == end {
            return Err(format!("{field}start/end: an empty window (use 00:00-24:00 for whole days)"));
        }
        Ok(Window { days, start, end })
    }

    /// Whether local `(weekday, minute)` falls inside the window.
    pub fn contains(&self, weekday: usize, minute: u32) -> bool {
        if self.start < self.end {
            self.days[weekday] && (self.start..self.end).contains(&minute)
        } else {
            let yesterday = (weekday + 6) % 7;
            (self.days[weekday] && minute >= self.start) || (self.days[yesterday] && minute < self.end)
        }
    }
}

/// `mon-fri 09:00-17:00`.
impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let listed: Vec<usize> = (0..7).filter(|&d| self.days[d]).collect();
        let contiguous = listed.windows(2).all(|w| w[1] == w[0] + 1);
        if listed.len() >= 3 && contiguous {
            write!(f, "{}-{}", DAY_NAMES[listed[0]], DAY_NAMES[listed[listed.len() - 1]])?;
        } else {
            let names: Vec<&str> = listed.iter().map(|&d| DAY_NAMES[d]).collect();
            f.write_str(&names.join(","))?;
        }
        let clock = |m: u32| format!("{:02}:{:02}", m / 60, m % 60);
        write!(f, " {}-{}", clock(self.start), clock(self.end))
    }
}

/// `UTC+01:00`.
pub fn describe_offset(offset_minutes: i32) -> String {
    let sign = if offset_minutes < 0 { '-' } else { '+' };
    let abs = offset_minutes.unsigned_abs();
    format!("UTC{sign}{:02}:{:02}", abs / 60, abs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn days(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn local_time_follows_the_offset() {
        // 2025-11-25T08:30:00Z, a Tuesday.
        let tuesday_0830 = 1_764_059_400_000;
        assert_eq!(local_time(tuesday_0830, 0), (1, 8 * 60 + 30));
        assert_eq!(local_time(tuesday_0830, 60), (1, 9 * 60 + 30));
        assert_eq!(local_time(tuesday_0830, -9 * 60), (0, 23 * 60 + 30), "still Monday in Alaska");
        assert_eq!(local_time(0, 0), (3, 0), "the epoch was a Thursday");
    }

    #[test]
    fn day_windows() {
        let w = Window::parse("", &days(&["mon", "TUE", "wed", "thu", "fri"]), "09:00", "17:00").unwrap();
        assert!(w.contains(1, 9 * 60));
        assert!(w.contains(4, 17 * 60 - 1));
        assert!(!w.contains(4, 17 * 60));
        assert!(!w.contains(5, 12 * 60), "saturday");
        assert_eq!(w.to_string(), "mon-fri 09:00-17:00");
        let whole = Window::parse("", &days(&["sat", "sun"]), "00:00", "24:00").unwrap();
        assert!(whole.contains(6, 24 * 60 - 1));
        assert_eq!(whole.to_string(), "sat,sun 00:00-24:00");
    }

    #[test]
    fn overnight_windows_close_the_next_morning() {
        let w = Window::parse("", &days(&["fri"]), "22:00", "06:00").unwrap();
        assert!(w.contains(4, 22 * 60));
        assert!(w.contains(5, 5 * 60 + 59), "saturday morning after a friday night");
        assert!(!w.contains(5, 6 * 60));
        assert!(!w.contains(3, 23 * 60), "thursday night is not listed");
        assert!(!w.contains(4, 5 * 60), "friday morning belongs to thursday night");
    }

    #[test]
    fn bad_windows_name_the_field() {
        let err = |d: &[&str], s: &str, e: &str| Window::parse("x.", &days(d), s, e).unwrap_err();
        assert!(err(&["mon"], "9:00", "17:00").starts_with("x.start"));
        assert!(err(&["mon"], "09:00", "24:30").starts_with("x.end"));
        assert!(err(&["mon"], "24:00", "17:00").starts_with("x.start"));
        assert!(err(&["mon"], "09:00", "09:00").starts_with("x.start/end"));
        assert!(err(&["funday"], "09:00", "17:00").starts_with("x.days[0]"));
        assert!(err(&[], "09:00", "17:00").starts_with("x.days"));
    }

    #[test]
    fn offsets_are_described() {
        assert_eq!(describe_offset(60), "UTC+01:00");
        assert_eq!(describe_offset(-210), "UTC-03:30");
        assert_eq!(describe_offset(0), "UTC+00:00");
    }
}
