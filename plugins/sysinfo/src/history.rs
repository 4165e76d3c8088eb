//! The plugin's settings (refresh interval, history length) read from its config, and the history
//! ring: the last `history` points of CPU, memory and temperature, oldest first. Memory is bounded
//! by the schema's maximum ([`HISTORY_MAX`] points); no I/O.

use std::collections::VecDeque;

use serde::Serialize;
use serde_json::Value;

use crate::collect::Snapshot;

/// `refresh_ms`: default and range (the manifest's `[settings]` schema says the same).
pub(crate) const REFRESH_DEFAULT_MS: u64 = 2000;
pub(crate) const REFRESH_MIN_MS: u64 = 500;
pub(crate) const REFRESH_MAX_MS: u64 = 60_000;
/// `history`: default and range, in points.
pub(crate) const HISTORY_DEFAULT: usize = 60;
pub(crate) const HISTORY_MIN: usize = 10;
pub(crate) const HISTORY_MAX: usize = 600;

/// The settings in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct Settings {
    /// Milliseconds between samples.
    pub refresh_ms: u64,
    /// Points kept in the history.
    pub history: usize,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            refresh_ms: REFRESH_DEFAULT_MS,
            history: HISTORY_DEFAULT,
        }
    }
}

impl Settings {
    /// Read the plugin's config (`{"refresh_ms": 2000, "history": 60}`; a missing field takes
    /// its default). The host validated it against the schema; anything else is refused with a
    /// sentence naming the field.
    pub(crate) fn from_config(config: &Value) -> Result<Settings, String> {
        let field = |name: &str, default: u64, min: u64, max: u64| -> Result<u64, String> {
            match config.get(name) {
                None | Some(Value::Null) => Ok(default),
                Some(v) => v
                    .as_u64()
                    .filter(|n| (min..=max).contains(n))
                    .ok_or_else(|| format!("{name} must be a whole number from {min} to {max}")),
            }
        };
        let history = field(
            "history",
            HISTORY_DEFAULT as u64,
            HISTORY_MIN as u64,
            HISTORY_MAX as u64,
        )?;
        Ok(Settings {
            refresh_ms: field(
                "refresh_ms",
                REFRESH_DEFAULT_MS,
                REFRESH_MIN_MS,
                REFRESH_MAX_MS,
            )?,
            history: usize::try_from(history).unwrap_or(HISTORY_DEFAULT),
        })
    }
}

/// One point of the history.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Point {
    /// When (milliseconds since the Unix epoch).
    pub t: u64,
    /// CPU busy, percent (all CPUs).
    pub cpu: Option<f64>,
    /// Memory used, percent.
    pub memory: Option<f64>,
    /// CPU temperature, °C.
    pub temperature: Option<f64>,
}

impl Point {
    /// The figures of a snapshot the chart draws.
    pub(crate) fn of(s: &Snapshot) -> Point {
        Point {
            t: s.time_ms,
            cpu: s.cpu.total_percent,
            memory: s.memory.as_ref().map(|m| m.used_percent),
            temperature: s.temperature.celsius,
        }
    }
}

/// The last `capacity` points, oldest first.
#[derive(Debug, Clone)]
pub(crate) struct History {
    points: VecDeque<Point>,
    capacity: usize,
}

impl History {
    /// An empty history of `capacity` points (at least 1).
    pub(crate) fn new(capacity: usize) -> History {
        let capacity = capacity.max(1);
        History {
            points: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    /// Add a point, dropping the oldest when full.
    pub(crate) fn push(&mut self, p: Point) {
        while self.points.len() >= self.capacity {
            self.points.pop_front();
        }
        self.points.push_back(p);
    }

    /// Keep `capacity` points from now on; a smaller one drops the oldest at once.
    pub(crate) fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity.max(1);
        while self.points.len() > self.capacity {
            self.points.pop_front();
        }
        self.points.shrink_to(self.capacity);
    }

    /// How many points it keeps.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// The points, oldest first.
    pub(crate) fn points(&self) -> impl Iterator<Item = &Point> {
        self.points.iter()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use serde_json::json;

    #[test]
    fn settings_from_config() {
        assert_eq!(Settings::from_config(&json!({})), Ok(Settings::default()));
        assert_eq!(
            Settings::from_config(&json!({"refresh_ms": 500, "history": 600})),
            Ok(Settings {
                refresh_ms: 500,
                history: 600
            })
        );
        assert_eq!(
            Settings::from_config(&json!({"refresh_ms": null})),
            Ok(Settings::default())
        );
        assert_eq!(
            Settings::from_config(&json!({"refresh_ms": 499})),
            Err("refresh_ms must be a whole number from 500 to 60000".into())
        );
        assert!(Settings::from_config(&json!({"history": 601})).is_err());
        assert!(Settings::from_config(&json!({"history": "60"})).is_err());
        assert!(Settings::from_config(&json!({"history": 9.5})).is_err());
    }

    fn p(t: u64) -> Point {
        Point {
            t,
            cpu: Some(1.0),
            memory: None,
            temperature: None,
        }
    }

    #[test]
    fn the_ring_keeps_the_newest_points() {
        let mut h = History::new(3);
        for t in 0..5 {
            h.push(p(t));
        }
        assert_eq!(h.points().map(|p| p.t).collect::<Vec<_>>(), [2, 3, 4]);
        h.set_capacity(2);
        assert_eq!(h.points().map(|p| p.t).collect::<Vec<_>>(), [3, 4]);
        h.set_capacity(4);
        h.push(p(5));
        h.push(p(6));
        assert_eq!(h.points().map(|p| p.t).collect::<Vec<_>>(), [3, 4, 5, 6]);
        assert_eq!((h.points().count(), h.capacity()), (4, 4));
        h.set_capacity(0);
        assert_eq!(h.capacity(), 1);
        assert_eq!(h.points().map(|p| p.t).collect::<Vec<_>>(), [6]);
    }
}
