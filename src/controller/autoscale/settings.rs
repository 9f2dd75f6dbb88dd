//! `spec.autoscaling` read and checked: what the CRD's CEL rules cannot check (cron
//! expressions, time zones) and what they do, again, for a spec stored before them. Pure.

use std::time::Duration;

use super::windows::{Window, parse_cron, parse_time_zone};
use crate::crd::Autoscaling;

/// `scaleDownDelay` when unset.
pub const DEFAULT_SCALE_DOWN_DELAY: Duration = Duration::from_secs(300);

/// The autoscaling settings of a pool, checked.
#[derive(Clone, Debug)]
pub struct Settings {
    pub min_pool_size: u32,
    pub max_pool_size: u32,
    pub min_idle: u32,
    pub scale_up_stabilization: Duration,
    pub scale_down_delay: Duration,
    pub windows: Vec<Window>,
}

/// Why `spec.autoscaling` cannot be used. Each names the field and the fix.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A number or duration out of range.
    #[error("spec.autoscaling.{field}: {problem}")]
    Invalid { field: String, problem: String },
    /// A window's `start` or `end` is not a cron expression.
    #[error(
        "spec.autoscaling.windows[{index}].{field}: {expression:?} is not a five-field cron expression (minute hour day-of-month month day-of-week, such as \"0 8 * * 1-5\"): {source}"
    )]
    Cron {
        index: usize,
        field: &'static str,
        expression: String,
        #[source]
        source: croner::errors::CronError,
    },
    /// A window's `timeZone` is not an IANA time zone.
    #[error(
        "spec.autoscaling.windows[{index}].timeZone: {name:?} is not an IANA time zone (such as \"UTC\" or \"Europe/Berlin\"): {source}"
    )]
    TimeZone {
        index: usize,
        name: String,
        #[source]
        source: chrono_tz::ParseError,
    },
}

/// Reads `spec.autoscaling`.
pub fn settings(spec: &Autoscaling) -> Result<Settings, SettingsError> {
    let invalid = |field: &str, problem: String| SettingsError::Invalid {
        field: field.to_string(),
        problem,
    };
    let count = |field: &str, value: i32| {
        u32::try_from(value).map_err(|_| invalid(field, format!("must be 0 or more, got {value}")))
    };
    let min_pool_size = count("minPoolSize", spec.min_pool_size)?;
    let max_pool_size = count("maxPoolSize", spec.max_pool_size)?;
    let min_idle = count("minIdle", spec.min_idle)?;
    if max_pool_size == 0 {
        return Err(invalid(
            "maxPoolSize",
            "must be 1 or more: a pool that may never have a worker runs nothing".into(),
        ));
    }
    if min_pool_size > max_pool_size {
        return Err(invalid(
            "minPoolSize",
            format!(
                "{min_pool_size} must not exceed maxPoolSize ({max_pool_size}): lower minPoolSize or raise maxPoolSize"
            ),
        ));
    }
    if min_idle > max_pool_size {
        return Err(invalid(
            "minIdle",
            format!(
                "{min_idle} must not exceed maxPoolSize ({max_pool_size}): the pool never has more than maxPoolSize workers, idle or busy"
            ),
        ));
    }
    let duration =
        |field: &str, value: &Option<kube::core::Duration>, default: Duration| match value {
            None => Ok(default),
            Some(d) if d.is_negative() => Err(invalid(field, "must not be negative".into())),
            Some(d) => Ok(Duration::from(*d)),
        };
    let scale_up_stabilization = duration(
        "scaleUpStabilization",
        &spec.scale_up_stabilization,
        Duration::ZERO,
    )?;
    let scale_down_delay = duration(
        "scaleDownDelay",
        &spec.scale_down_delay,
        DEFAULT_SCALE_DOWN_DELAY,
    )?;
    let mut windows = Vec::new();
    for (index, window) in spec.windows.iter().enumerate() {
        let field = format!("windows[{index}].minPoolSize");
        let min = count(&field, window.min_pool_size)?;
        if min > max_pool_size {
            return Err(invalid(
                &field,
                format!(
                    "{min} must not exceed maxPoolSize ({max_pool_size}): lower the window's minPoolSize or raise maxPoolSize"
                ),
            ));
        }
        let cron = |field: &'static str, expression: &str| {
            parse_cron(expression).map_err(|source| SettingsError::Cron {
                index,
                field,
                expression: expression.to_string(),
                source,
            })
        };
        let zone = window.time_zone.as_deref().unwrap_or("UTC");
        windows.push(Window {
            name: window
                .name
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| format!("windows[{index}]")),
            start: cron("start", &window.start)?,
            end: cron("end", &window.end)?,
            time_zone: parse_time_zone(zone).map_err(|source| SettingsError::TimeZone {
                index,
                name: zone.to_string(),
                source,
            })?,
            min_pool_size: min,
        });
    }
    Ok(Settings {
        min_pool_size,
        max_pool_size,
        min_idle,
        scale_up_stabilization,
        scale_down_delay,
        windows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::AutoscalingWindow;

    fn spec(change: impl FnOnce(&mut Autoscaling)) -> Autoscaling {
        let mut spec = Autoscaling {
            max_pool_size: 20,
            ..Autoscaling::default()
        };
        change(&mut spec);
        spec
    }

    fn hours() -> AutoscalingWindow {
        AutoscalingWindow {
            name: None,
            start: "0 8 * * 1-5".into(),
            end: "0 18 * * 1-5".into(),
            time_zone: Some("Europe/Berlin".into()),
            min_pool_size: 5,
        }
    }

    #[test]
    fn defaults_are_zero_minimum_no_stabilization_and_five_minutes_delay() {
        let settings = settings(&spec(|_| {})).expect("valid");
        assert_eq!(
            (
                settings.min_pool_size,
                settings.max_pool_size,
                settings.min_idle
            ),
            (0, 20, 0)
        );
        assert_eq!(settings.scale_up_stabilization, Duration::ZERO);
        assert_eq!(settings.scale_down_delay, Duration::from_secs(300));
    }

    #[test]
    fn durations_are_go_durations() {
        let settings = settings(&spec(|s| {
            s.scale_up_stabilization = Some("30s".parse().expect("duration"));
            s.scale_down_delay = Some("1m30s".parse().expect("duration"));
        }))
        .expect("valid");
        assert_eq!(settings.scale_up_stabilization, Duration::from_secs(30));
        assert_eq!(settings.scale_down_delay, Duration::from_secs(90));
    }

    #[test]
    fn bad_settings_name_the_field_and_the_fix() {
        let cases: Vec<(Autoscaling, &str)> = vec![
            (
                spec(|s| s.min_pool_size = 21),
                "spec.autoscaling.minPoolSize: 21 must not exceed maxPoolSize (20): lower minPoolSize or raise maxPoolSize",
            ),
            (
                spec(|s| s.min_idle = 30),
                "spec.autoscaling.minIdle: 30 must not exceed maxPoolSize (20)",
            ),
            (
                spec(|s| s.max_pool_size = 0),
                "spec.autoscaling.maxPoolSize: must be 1 or more",
            ),
            (
                spec(|s| s.min_idle = -1),
                "spec.autoscaling.minIdle: must be 0 or more, got -1",
            ),
            (
                spec(|s| s.scale_down_delay = Some("-5m".parse().expect("duration"))),
                "spec.autoscaling.scaleDownDelay: must not be negative",
            ),
            (
                spec(|s| {
                    s.windows = vec![AutoscalingWindow {
                        min_pool_size: 25,
                        ..hours()
                    }]
                }),
                "spec.autoscaling.windows[0].minPoolSize: 25 must not exceed maxPoolSize (20)",
            ),
            (
                spec(|s| {
                    s.windows = vec![
                        hours(),
                        AutoscalingWindow {
                            start: "8 * * 1-5".into(),
                            ..hours()
                        },
                    ]
                }),
                "spec.autoscaling.windows[1].start: \"8 * * 1-5\" is not a five-field cron expression (minute hour day-of-month month day-of-week, such as \"0 8 * * 1-5\")",
            ),
            (
                spec(|s| {
                    s.windows = vec![AutoscalingWindow {
                        time_zone: Some("Berlin".into()),
                        ..hours()
                    }]
                }),
                "spec.autoscaling.windows[0].timeZone: \"Berlin\" is not an IANA time zone (such as \"UTC\" or \"Europe/Berlin\")",
            ),
        ];
        for (spec, expected) in cases {
            let message = settings(&spec).expect_err(expected).to_string();
            assert!(
                message.starts_with(expected),
                "{message}\n  expected: {expected}"
            );
        }
    }

    #[test]
    fn a_window_is_named_by_its_position_unless_named() {
        let parsed = settings(&spec(|s| {
            s.windows = vec![
                hours(),
                AutoscalingWindow {
                    name: Some("nights".into()),
                    ..hours()
                },
            ]
        }))
        .expect("valid");
        let names: Vec<&str> = parsed.windows.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["windows[0]", "nights"]);
    }
}
