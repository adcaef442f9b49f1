//! Load scenarios in TOML (`loadtest/scenarios/*.toml`): who is in a room, how many
//! rooms, how fast they join, and for a ramp when to stop adding rooms.
//!
//! A file describes meetings the way the centre plans them (a tumour board is one
//! presenter, eleven specialists, two observers), so a capacity figure reads as "boards
//! per server", not as an abstract stream count.

use crate::units::parse_duration;
use serde::Deserialize;
use std::path::Path;
use std::time::Duration;

/// Why a scenario file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Toml {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("scenario: {0}")]
    Invalid(String),
}

fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

/// Pacing of the joins.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Ramp {
    /// Between two joins in a room (browsers arrive one by one, not in one burst).
    #[serde(deserialize_with = "duration", default = "default_join_interval")]
    pub join_interval: Duration,
    /// Between the first joins of two rooms. In ramp mode: how long each load step is held
    /// (joins, settling and the measured window) before the next room is added.
    #[serde(deserialize_with = "duration", default = "default_room_interval")]
    pub room_interval: Duration,
}

fn default_join_interval() -> Duration {
    Duration::from_millis(100)
}

fn default_room_interval() -> Duration {
    Duration::from_secs(1)
}

impl Default for Ramp {
    fn default() -> Self {
        Self {
            join_interval: default_join_interval(),
            room_interval: default_room_interval(),
        }
    }
}

/// When a ramp stops adding rooms: the first step whose window breaks one of these.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// Packet loss over the step's window, in percent (e.g. 0.5).
    pub max_loss_pct: f64,
    /// 95th percentile one-way media latency over the window, in ms.
    pub max_latency_p95_ms: f64,
    /// Stop here even if the server keeps up (protects the machine).
    #[serde(default = "default_max_rooms")]
    pub max_rooms: usize,
    /// The part of each step that is measured: its last `window` (joins and the first
    /// keyframes settle before it).
    #[serde(deserialize_with = "duration", default = "default_window")]
    pub window: Duration,
}

fn default_max_rooms() -> usize {
    100
}

fn default_window() -> Duration {
    Duration::from_secs(5)
}

/// A whole scenario file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// A name for the report.
    pub name: String,
    /// Rooms (meetings) at once; in ramp mode the most to start with (usually 1).
    #[serde(default = "one")]
    pub rooms: usize,
    /// Everyone in a room, observers included.
    pub participants: usize,
    /// Participants with a camera (and microphone). The rest of the non-observers
    /// publish a microphone only.
    pub publishers: usize,
    /// Publishers who also share their screen (a second video track); the first joiners.
    #[serde(default)]
    pub screen_share: usize,
    /// Receive-only participants (the `observer` role when the run has a JWT secret).
    #[serde(default)]
    pub observers: usize,
    /// The measured time once everyone has joined (fixed mode).
    #[serde(deserialize_with = "duration")]
    pub duration: Duration,
    #[serde(default)]
    pub ramp: Ramp,
    /// Present: ramp mode (add rooms one at a time until a threshold breaks).
    pub thresholds: Option<Thresholds>,
}

fn one() -> usize {
    1
}

/// What one participant of a room does, by its place in the join order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seat {
    pub audio: bool,
    pub camera: bool,
    pub screen: bool,
    pub observer: bool,
}

impl Seat {
    /// Publishes anything.
    pub fn publishes(&self) -> bool {
        self.audio || self.camera || self.screen
    }
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ScenarioError::Toml { source, .. } => ScenarioError::Toml {
                path: path.display().to_string(),
                source,
            },
            other => other,
        })
    }

    /// Parses and checks TOML text.
    pub fn parse(text: &str) -> Result<Self, ScenarioError> {
        let s: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Toml {
            path: "<text>".into(),
            source: Box::new(e),
        })?;
        s.validate()?;
        Ok(s)
    }

    fn validate(&self) -> Result<(), ScenarioError> {
        let bad = |m: String| Err(ScenarioError::Invalid(m));
        if self.participants == 0 || self.rooms == 0 {
            return bad("rooms and participants must be at least 1".into());
        }
        if self.publishers + self.observers > self.participants {
            return bad(format!(
                "publishers ({}) + observers ({}) exceed participants ({})",
                self.publishers, self.observers, self.participants
            ));
        }
        if self.screen_share > self.publishers {
            return bad(format!(
                "screen_share ({}) must be among the publishers ({})",
                self.screen_share, self.publishers
            ));
        }
        if self.participants == self.observers {
            return bad("a room of observers only has nothing to receive".into());
        }
        if let Some(t) = &self.thresholds {
            if t.window.is_zero() || t.window > self.ramp.room_interval {
                return bad(format!(
                    "thresholds.window ({:?}) must be positive and within ramp.room_interval ({:?}), the time each step is held",
                    t.window, self.ramp.room_interval
                ));
            }
            if t.max_rooms == 0 {
                return bad("thresholds.max_rooms must be at least 1".into());
            }
        }
        Ok(())
    }

    /// The seat at join position `i` in a room: screen sharers first (the presenter
    /// opens the meeting), then camera publishers, then microphone-only, then observers.
    pub fn seat(&self, i: usize) -> Seat {
        let observer = i >= self.participants - self.observers;
        Seat {
            audio: !observer,
            camera: i < self.publishers,
            screen: i < self.screen_share,
            observer,
        }
    }

    /// Everyone in `rooms` rooms.
    pub fn participants_in(&self, rooms: usize) -> usize {
        rooms * self.participants
    }

    /// Streams a room forwards: each published track to each other member.
    pub fn streams_per_room(&self) -> usize {
        (0..self.participants)
            .map(|i| {
                let s = self.seat(i);
                let tracks = usize::from(s.audio) + usize::from(s.camera) + usize::from(s.screen);
                tracks * (self.participants - 1)
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preset(name: &str) -> Scenario {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("scenarios")
            .join(name);
        Scenario::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    #[test]
    fn shipped_presets_parse_and_mean_what_they_say() {
        let board = preset("tumour-board.toml");
        assert_eq!(
            (
                board.participants,
                board.publishers,
                board.screen_share,
                board.observers
            ),
            (14, 12, 1, 2)
        );
        assert!(board.thresholds.is_none());
        let presenter = board.seat(0);
        assert!(presenter.camera && presenter.screen && presenter.audio && !presenter.observer);
        let specialist = board.seat(11);
        assert!(specialist.camera && !specialist.screen);
        for i in [12, 13] {
            assert!(board.seat(i).observer && !board.seat(i).publishes());
        }
        // 12 mics + 12 cameras + 1 screen, each to the 13 others.
        assert_eq!(board.streams_per_room(), 25 * 13);
        let qa = preset("plan-qa.toml");
        assert_eq!(qa.participants, 4);
        let ramp = preset("ramp.toml");
        let t = ramp.thresholds.clone().expect("ramp mode");
        assert_eq!((t.max_loss_pct, t.max_latency_p95_ms), (0.5, 50.0));
        assert_eq!(ramp.participants, 14);
    }

    #[test]
    fn bad_scenarios_are_refused_with_a_reason() {
        let base = "name = \"x\"\nduration = \"5s\"\n";
        let err = |extra: &str| {
            Scenario::parse(&format!("{base}{extra}"))
                .unwrap_err()
                .to_string()
        };
        assert!(err("participants = 3\npublishers = 3\nobservers = 1\n").contains("exceed"));
        assert!(
            err("participants = 3\npublishers = 1\nscreen_share = 2\n").contains("screen_share")
        );
        assert!(
            err("participants = 2\npublishers = 0\nobservers = 2\n").contains("observers only")
        );
        assert!(err("participants = 2\npublishers = 2\ncolour = 1\n").contains("colour"));
        assert!(
            Scenario::parse("name = \"x\"\nparticipants = 2\npublishers = 2\nduration = \"5\"\n")
                .unwrap_err()
                .to_string()
                .contains("unit")
        );
        let ok = Scenario::parse(&format!("{base}participants = 3\npublishers = 2\nobservers = 1\n[ramp]\njoin_interval = \"10ms\"\n")).unwrap();
        assert_eq!(ok.ramp.join_interval, Duration::from_millis(10));
        assert_eq!(ok.ramp.room_interval, Duration::from_secs(1));
        assert_eq!(ok.rooms, 1);
        assert!(err("participants = 3\npublishers = 2\n[thresholds]\nmax_loss_pct = 1\nmax_latency_p95_ms = 5\nwindow = \"10s\"\n").contains("window"));
    }
}
