//! The kit's duration settings and what each may be: one table, read by the environment's
//! parser, checked against the documentation by a test.

use std::{ops::RangeInclusive, time::Duration};

use super::settings::{Config, ConfigError};

/// How a duration variable is written: its name ends in `_MS` or `_SECS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Millis,
    Secs,
}

impl Unit {
    fn of(self, n: u64) -> Duration {
        match self {
            Unit::Millis => Duration::from_millis(n),
            Unit::Secs => Duration::from_secs(n),
        }
    }

    /// `duration` as written in this unit.
    pub fn written(self, duration: Duration) -> u128 {
        match self {
            Unit::Millis => duration.as_millis(),
            Unit::Secs => u128::from(duration.as_secs()),
        }
    }
}

/// A duration the kit reads from the environment, and what it may be: a value outside is
/// refused by name at start-up (docs/architecture.md's table gives the same ranges; a test
/// compares them).
pub struct DurationSetting {
    pub name: &'static str,
    pub unit: Unit,
    pub range: RangeInclusive<Duration>,
    field: Field,
}

/// Where a duration setting goes in the [`Config`].
enum Field {
    One(fn(&mut Config) -> &mut Duration),
    /// A comma-separated list, each value in range.
    Each(fn(&mut Config) -> &mut Vec<Duration>),
}

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

const DAY: u64 = 24 * 3600;

/// Every duration setting of the kit. Lower bounds keep a loop from spinning (a sweep, a
/// probe, a reconnect) or a timeout from firing on ordinary work; upper bounds are far beyond
/// any sensible value, so a slip of a few zeros is refused instead of meaning "never".
pub const DURATIONS: &[DurationSetting] = &[
    DurationSetting {
        name: "AMQP_HEARTBEAT_SECS",
        unit: Unit::Secs,
        range: secs(1)..=secs(600),
        field: Field::One(|c| &mut c.amqp_heartbeat),
    },
    DurationSetting {
        name: "AMQP_CONNECT_TIMEOUT_MS",
        unit: Unit::Millis,
        range: ms(100)..=secs(60),
        field: Field::One(|c| &mut c.amqp_connect_timeout),
    },
    DurationSetting {
        name: "AMQP_RECONNECT_MAX_MS",
        unit: Unit::Millis,
        range: ms(100)..=secs(300),
        field: Field::One(|c| &mut c.amqp_reconnect_max),
    },
    DurationSetting {
        name: "DB_TIMEOUT_MS",
        unit: Unit::Millis,
        range: ms(100)..=secs(300),
        field: Field::One(|c| &mut c.db_timeout),
    },
    DurationSetting {
        name: "DB_PROBE_MAX_MS",
        unit: Unit::Millis,
        range: ms(100)..=secs(60),
        field: Field::One(|c| &mut c.db_probe_max),
    },
    DurationSetting {
        name: "OUTBOX_SWEEP_MS",
        unit: Unit::Millis,
        range: ms(10)..=secs(600),
        field: Field::One(|c| &mut c.outbox_sweep_interval),
    },
    DurationSetting {
        name: "RETRY_DELAYS_MS",
        unit: Unit::Millis,
        range: ms(1)..=secs(DAY),
        field: Field::Each(|c| &mut c.retry_delays),
    },
    DurationSetting {
        name: "OUTBOX_RETENTION_SECS",
        unit: Unit::Secs,
        range: secs(60)..=secs(365 * DAY),
        field: Field::One(|c| &mut c.outbox_retention),
    },
    DurationSetting {
        name: "INBOX_RETENTION_SECS",
        unit: Unit::Secs,
        // Past the shortest dead-letter age, which it must outlast; ten years at most.
        range: secs(120)..=secs(3650 * DAY),
        field: Field::One(|c| &mut c.inbox_retention),
    },
    DurationSetting {
        name: "DEAD_LETTER_MAX_AGE_SECS",
        unit: Unit::Secs,
        range: secs(60)..=secs(365 * DAY),
        field: Field::One(|c| &mut c.dead_letter_max_age),
    },
    DurationSetting {
        name: "PRUNE_INTERVAL_SECS",
        unit: Unit::Secs,
        range: secs(1)..=secs(DAY),
        field: Field::One(|c| &mut c.prune_interval),
    },
    DurationSetting {
        name: "HTTP_HEADER_TIMEOUT_MS",
        unit: Unit::Millis,
        range: ms(100)..=secs(600),
        field: Field::One(|c| &mut c.http_header_timeout),
    },
    DurationSetting {
        name: "HTTP_REQUEST_TIMEOUT_MS",
        unit: Unit::Millis,
        range: ms(100)..=secs(3600),
        field: Field::One(|c| &mut c.http_request_timeout),
    },
];

impl DurationSetting {
    /// Sets `value` (as written in the environment) into `config`.
    pub(super) fn apply(&self, config: &mut Config, value: &str) -> Result<(), ConfigError> {
        match self.field {
            Field::One(field) => *field(config) = self.read(value)?,
            Field::Each(field) => {
                *field(config) = value
                    .split(',')
                    .map(|one| self.read(one))
                    .collect::<Result<_, _>>()?;
            }
        }
        Ok(())
    }

    /// `value` as this setting's duration, refused by name if it is not a whole number in range.
    fn read(&self, value: &str) -> Result<Duration, ConfigError> {
        let number =
            value
                .trim()
                .parse()
                .map_err(|e: std::num::ParseIntError| ConfigError::Invalid {
                    name: self.name,
                    reason: format!("{value:?}: {e}"),
                })?;
        let duration = self.unit.of(number);
        if self.range.contains(&duration) {
            return Ok(duration);
        }
        Err(ConfigError::Invalid {
            name: self.name,
            reason: format!(
                "{value} is outside {} to {}",
                self.unit.written(*self.range.start()),
                self.unit.written(*self.range.end())
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};

    use super::*;

    fn from(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);
        Config::from_lookup(addr, |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn every_duration_is_taken_at_its_bounds_and_refused_just_outside() {
        // Room for the retention rule that ties three settings together.
        let room = [
            ("INBOX_RETENTION_SECS", "315360000"),
            ("DEAD_LETTER_MAX_AGE_SECS", "60"),
            ("RETRY_DELAYS_MS", "1"),
            ("MAX_ATTEMPTS", "2"),
        ];
        for setting in DURATIONS {
            let others: Vec<(&str, &str)> = room
                .iter()
                .copied()
                .filter(|(name, _)| *name != setting.name)
                .collect();
            let without = from(&others).expect("the others alone");
            let (low, high) = (setting.range.start(), setting.range.end());
            let written = |d: &Duration| setting.unit.written(*d);
            for inside in [written(low), written(high)] {
                let value = inside.to_string();
                let mut vars = others.clone();
                vars.push((setting.name, &value));
                let config =
                    from(&vars).unwrap_or_else(|e| panic!("{}={inside}: {e}", setting.name));
                let mut expected = from(&others).expect("the others alone");
                setting.apply(&mut expected, &value).expect("in range");
                let shown = |c: &Config| format!("{c:?}");
                assert_eq!(shown(&config), shown(&expected), "{}", setting.name);
                assert_ne!(
                    shown(&config),
                    shown(&without),
                    "{}={inside} is used",
                    setting.name
                );
            }
            for outside in [written(low) - 1, written(high) + 1] {
                let value = outside.to_string();
                let err = from(&[(setting.name, &value)]).expect_err(setting.name);
                assert!(
                    err.to_string().contains(setting.name) && err.to_string().contains("outside"),
                    "{}={outside}: {err}",
                    setting.name
                );
            }
        }
    }
}
