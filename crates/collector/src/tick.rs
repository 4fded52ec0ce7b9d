//! Which minutes are due, and when to wake for the next one.
//!
//! A sample is stamped with the UTC minute it describes, never with the time it was sent:
//! the agent wakes just after each minute ends and samples the minute that ended. A tick
//! that came late (the host was overloaded, the process was stopped, the clock jumped
//! forward) catches up every minute it missed, up to `max_catch_up_minutes`; minutes
//! further back are reported as a gap, never invented, since the agent cannot know what
//! state a resource was in then. A minute is sampled once: after the clock jumps back, the
//! agent waits until time passes its last sampled minute again.
//!
//! The source is asked about each due minute in turn. A live source (libvirt) answers
//! every caught-up minute with what it sees now: the state now stands for the missed
//! minutes, and the traffic of all of them lands in the first (the counters' delta since
//! the last reading), so bytes are neither lost nor counted twice. The simulator answers
//! for the minute asked, as it can tell any minute.
//!
//! Clock jumps are told apart from slow ticks by comparing how far the wall clock moved
//! with how far the monotonic clock moved since the last tick.

use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use tally_model::Minute;

/// How far after a minute's end the agent wakes: late enough that a timer firing a
/// little early still lands in the next minute.
const WAKE_AFTER_MINUTE_END: Duration = Duration::from_millis(500);

/// What is due at one tick.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Due {
    /// The minutes to sample now, oldest first; empty when none has ended since the last.
    pub minutes: Vec<Minute>,
    /// Minutes passed over because they lie further back than the catch-up bound:
    /// `(first, count)`.
    pub skipped: Option<(Minute, i64)>,
    /// The wall clock moved this many seconds more (or, negative, less) than the
    /// monotonic clock since the last tick.
    pub clock_jump_seconds: Option<i64>,
}

/// Keeps track of the minutes sampled.
#[derive(Clone, Debug)]
pub struct Ticker {
    last_sampled: Option<Minute>,
    max_catch_up_minutes: i64,
    jump_tolerance: TimeDelta,
    previous_tick: Option<(DateTime<Utc>, Duration)>,
}

impl Ticker {
    /// A ticker that sampled `last_sampled` last (from the agent's checkpoint; `None` on
    /// the first start ever).
    pub fn new(last_sampled: Option<Minute>, max_catch_up_minutes: u32) -> Self {
        Self {
            last_sampled,
            max_catch_up_minutes: i64::from(max_catch_up_minutes.max(1)),
            jump_tolerance: TimeDelta::seconds(5),
            previous_tick: None,
        }
    }

    pub fn last_sampled(&self) -> Option<Minute> {
        self.last_sampled
    }

    /// The minutes due at wall-clock time `now`, with `monotonic` the monotonic clock's
    /// reading at the same moment.
    pub fn due(&mut self, now: DateTime<Utc>, monotonic: Duration) -> Due {
        let mut due = Due::default();
        if let Some((previous_wall, previous_monotonic)) = self.previous_tick {
            let wall_moved = now - previous_wall;
            let monotonic_moved = TimeDelta::from_std(monotonic.saturating_sub(previous_monotonic))
                .unwrap_or(TimeDelta::MAX);
            let jump = wall_moved - monotonic_moved;
            if jump.abs() > self.jump_tolerance {
                due.clock_jump_seconds = Some(jump.num_seconds());
            }
        }
        self.previous_tick = Some((now, monotonic));

        let current = Minute::containing(now).unix_minutes();
        let newest_ended = current - 1;
        let first_wanted = match self.last_sampled {
            Some(last) => last.unix_minutes() + 1,
            None => newest_ended,
        };
        let first_due = first_wanted.max(newest_ended - self.max_catch_up_minutes + 1);
        if first_due > first_wanted {
            due.skipped = Some((
                Minute::from_unix_minutes(first_wanted),
                first_due - first_wanted,
            ));
        }
        due.minutes = (first_due..=newest_ended)
            .map(Minute::from_unix_minutes)
            .collect();
        due
    }

    /// `minute` is sampled (its samples are in the spool).
    pub fn sampled(&mut self, minute: Minute) {
        debug_assert!(self.last_sampled.is_none_or(|last| last < minute));
        self.last_sampled = Some(minute);
    }

    /// When to wake for the minute after the one `now` lies in.
    pub fn next_wake(now: DateTime<Utc>) -> DateTime<Utc> {
        let next_minute = Minute::containing(now).plus(1).to_datetime();
        next_minute + TimeDelta::from_std(WAKE_AFTER_MINUTE_END).unwrap_or_default()
    }
}

/// The agent's sense of time: the machine's clocks, or (for the simulator only) a fast
/// clock on which minutes pass `speed` times quicker, for demos and tests of hours of
/// sampling in seconds, or the machine's clock set off by `offset`, as on a host whose
/// clock is wrong.
#[derive(Clone, Debug)]
pub enum AgentClock {
    Wall {
        started: Instant,
        offset: TimeDelta,
    },
    /// Agent time = `from` + (real time − `from`) × `speed`: the same at every restart,
    /// so a restarted agent carries on where the killed one was.
    Fast {
        from: DateTime<Utc>,
        speed: u32,
        started: Instant,
    },
}

impl AgentClock {
    pub fn wall() -> Self {
        Self::skewed(TimeDelta::zero())
    }

    /// The machine's clock, reading `offset` off it.
    pub fn skewed(offset: TimeDelta) -> Self {
        AgentClock::Wall {
            started: Instant::now(),
            offset,
        }
    }

    pub fn fast(from: DateTime<Utc>, speed: u32) -> Self {
        AgentClock::Fast {
            from,
            speed: speed.max(1),
            started: Instant::now(),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        match self {
            AgentClock::Wall { offset, .. } => Utc::now() + *offset,
            AgentClock::Fast { from, speed, .. } => {
                *from + (Utc::now() - *from) * i32::try_from(*speed).unwrap_or(i32::MAX)
            }
        }
    }

    /// The monotonic clock, on the same scale as [`Self::now`].
    pub fn monotonic(&self) -> Duration {
        match self {
            AgentClock::Wall { started, .. } => started.elapsed(),
            AgentClock::Fast { started, speed, .. } => started.elapsed() * *speed,
        }
    }

    /// How long to sleep, in real time, until the agent's clock reads `at`.
    pub fn real_time_until(&self, at: DateTime<Utc>) -> Duration {
        let agent_time = (at - self.now()).to_std().unwrap_or_default();
        match self {
            AgentClock::Wall { .. } => agent_time,
            AgentClock::Fast { speed, .. } => agent_time / *speed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().expect("RFC 3339 time")
    }

    fn minutes(due: &Due) -> Vec<String> {
        due.minutes.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn the_first_tick_samples_the_minute_that_just_ended() {
        let mut ticker = Ticker::new(None, 10);
        let due = ticker.due(at("2026-11-23T10:00:00.5Z"), Duration::ZERO);
        assert_eq!(minutes(&due), ["2026-11-23T09:59:00Z"]);
        assert_eq!((due.skipped, due.clock_jump_seconds), (None, None));
    }

    #[test]
    fn missed_ticks_are_caught_up_and_a_minute_is_never_sampled_twice() {
        let mut ticker = Ticker::new(None, 10);
        ticker.due(at("2026-11-23T10:00:00.5Z"), Duration::ZERO);
        ticker.sampled("2026-11-23T09:59:00Z".parse().expect("minute"));
        // Three minutes late (the host was overloaded): all three are due.
        let due = ticker.due(at("2026-11-23T10:03:10Z"), Duration::from_secs(190));
        assert_eq!(
            minutes(&due),
            [
                "2026-11-23T10:00:00Z",
                "2026-11-23T10:01:00Z",
                "2026-11-23T10:02:00Z"
            ]
        );
        assert_eq!(due.clock_jump_seconds, None);
        for minute in &due.minutes {
            ticker.sampled(*minute);
        }
        // Woken again within the same minute: nothing is due.
        let again = ticker.due(at("2026-11-23T10:03:40Z"), Duration::from_secs(220));
        assert!(again.minutes.is_empty());
    }

    #[test]
    fn a_gap_beyond_the_catch_up_bound_is_reported_not_invented() {
        let mut ticker = Ticker::new(Some("2026-11-23T09:59:00Z".parse().expect("minute")), 5);
        // Restarted after an hour down.
        let due = ticker.due(at("2026-11-23T11:00:01Z"), Duration::ZERO);
        assert_eq!(due.minutes.len(), 5);
        assert_eq!(due.minutes[0].to_string(), "2026-11-23T10:55:00Z");
        assert_eq!(
            due.skipped,
            Some(("2026-11-23T10:00:00Z".parse().expect("minute"), 55))
        );
    }

    #[test]
    fn clock_jumps_are_detected_both_ways_and_a_jump_back_resamples_nothing() {
        let mut ticker = Ticker::new(None, 10);
        ticker.due(at("2026-11-23T10:00:01Z"), Duration::from_secs(1000));
        ticker.sampled("2026-11-23T09:59:00Z".parse().expect("minute"));
        // 60 s passed, but the wall clock moved ten minutes.
        let forward = ticker.due(at("2026-11-23T10:10:01Z"), Duration::from_secs(1060));
        assert_eq!(forward.clock_jump_seconds, Some(540));
        for minute in &forward.minutes {
            ticker.sampled(*minute);
        }
        // NTP steps the clock back eight minutes.
        let back = ticker.due(at("2026-11-23T10:03:01Z"), Duration::from_secs(1120));
        assert_eq!(back.clock_jump_seconds, Some(-480));
        assert!(back.minutes.is_empty(), "{back:?}");
    }

    #[test]
    fn the_agent_wakes_just_after_the_minute_ends() {
        assert_eq!(
            Ticker::next_wake(at("2026-11-23T10:00:59.9Z")),
            at("2026-11-23T10:01:00.5Z")
        );
    }

    #[test]
    fn the_fast_clock_runs_speed_times_quicker_from_a_fixed_origin() {
        let from = Utc::now() - TimeDelta::seconds(10);
        let clock = AgentClock::fast(from, 60);
        let agent_now = clock.now();
        let passed = (agent_now - from).num_seconds();
        assert!((600..=660).contains(&passed), "{passed} s of agent time");
        let one_agent_minute = clock.real_time_until(agent_now + TimeDelta::seconds(60));
        assert!(
            one_agent_minute <= Duration::from_secs(1),
            "{one_agent_minute:?}"
        );
    }
}
