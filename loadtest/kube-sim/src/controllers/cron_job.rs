//! The CronJob controller, on the simulated clock: at each time its `schedule` names it creates a Job
//! `<cronjob>-<scheduled minute since the epoch>` from its `jobTemplate` (only the latest missed time,
//! as the real controller does), honours `suspend` and `concurrencyPolicy` (`Allow`, `Forbid`, `Replace`),
//! keeps `successfulJobsHistoryLimit` / `failedJobsHistoryLimit` finished Jobs, and reports
//! `lastScheduleTime`, `lastSuccessfulTime` and the active Jobs.

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;

use super::*;

/// A 5-field cron schedule (`minute hour day-of-month month day-of-week`): `*`, `*/n`, `a`, `a-b`,
/// `a-b/n`, comma lists, and `@hourly`, `@daily`, `@midnight`, `@weekly`, `@monthly`, `@yearly`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: Vec<bool>,
    hours: Vec<bool>,
    days: Vec<bool>,
    months: Vec<bool>,
    weekdays: Vec<bool>,
    /// Both day fields restricted: either may match (cron's rule).
    either_day: bool,
}

fn field(text: &str, min: u32, max: u32) -> Result<Vec<bool>, String> {
    let mut allowed = vec![false; (max + 1) as usize];
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => (range, step.parse::<u32>().map_err(|_| format!("bad step in {part:?}"))?),
            None => (part, 1),
        };
        if step == 0 {
            return Err(format!("a step of 0 in {part:?}"));
        }
        let (from, to) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (
                a.parse().map_err(|_| format!("bad value in {part:?}"))?,
                b.parse().map_err(|_| format!("bad value in {part:?}"))?,
            )
        } else {
            let value: u32 = range.parse().map_err(|_| format!("bad value in {part:?}"))?;
            (value, if part.contains('/') { max } else { value })
        };
        if from < min || to > max || from > to {
            return Err(format!("{part:?} is outside {min}-{max}"));
        }
        for value in (from..=to).step_by(step as usize) {
            allowed[value as usize] = true;
        }
    }
    Ok(allowed)
}

impl Schedule {
    /// Parses `text`, or says why it is not a schedule.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = match text.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        let fields: Vec<&str> = text.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = fields[..] else {
            return Err(format!("expected exactly 5 fields, found {}: {text:?}", fields.len()));
        };
        let mut weekdays = field(weekday, 0, 7)?;
        if weekdays[7] {
            weekdays[0] = true;
        }
        Ok(Self {
            minutes: field(minute, 0, 59)?,
            hours: field(hour, 0, 23)?,
            days: field(day, 1, 31)?,
            months: field(month, 1, 12)?,
            weekdays,
            either_day: day != "*" && weekday != "*",
        })
    }

    fn matches(&self, at: &jiff::civil::DateTime) -> bool {
        let day = self.days[at.day() as usize];
        let weekday = self.weekdays[at.weekday().to_sunday_zero_offset() as usize];
        let day_matches = if self.either_day { day || weekday } else { day && weekday };
        self.minutes[at.minute() as usize]
            && self.hours[at.hour() as usize]
            && self.months[at.month() as usize]
            && day_matches
    }

    /// The first scheduled minute after `after` (UTC), within four years.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let start = after.to_zoned(jiff::tz::TimeZone::UTC).datetime();
        let mut at = start
            .with()
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .ok()?
            .checked_add(jiff::Span::new().minutes(1))
            .ok()?;
        for _ in 0..(4 * 366 * 24 * 60) {
            if self.matches(&at) {
                return at.to_zoned(jiff::tz::TimeZone::UTC).ok().map(|z| z.timestamp());
            }
            at = at.checked_add(jiff::Span::new().minutes(1)).ok()?;
        }
        None
    }
}

fn time_of(value: Option<&Value>) -> Option<Timestamp> {
    value.and_then(Value::as_str).and_then(|s| s.parse().ok())
}

fn finished(job: &Job) -> Option<(&'static str, Option<Timestamp>)> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    conditions.iter().find(|c| c.status == "True" && (c.type_ == "Complete" || c.type_ == "Failed")).map(
        |c| {
            (
                if c.type_ == "Complete" { "Complete" } else { "Failed" },
                c.last_transition_time.as_ref().map(|t| t.0),
            )
        },
    )
}

impl Controllers<'_> {
    pub(super) fn cron_job(&self, ns: &str, name: &str) -> Result<(), ApiError> {
        let Ok(object) = self.state.store.get(&CRONJOBS, ns, name) else { return Ok(()) };
        let value = object.value();
        if value.pointer("/metadata/deletionTimestamp").is_some() {
            return Ok(());
        }
        let clock = self.state.kubelet.clock();
        let now = clock.now();
        let mut jobs: Vec<Job> = self
            .state
            .store
            .owned_by(&JOBS, ns, &object.uid)
            .iter()
            .map(|o| o.typed())
            .collect::<Result<_, _>>()?;
        let schedule = value.pointer("/spec/schedule").and_then(Value::as_str).unwrap_or_default();
        let Ok(schedule) = Schedule::parse(schedule) else { return Ok(()) };
        let suspended = value.pointer("/spec/suspend").and_then(Value::as_bool) == Some(true);
        let mut last = time_of(value.pointer("/status/lastScheduleTime"));
        let created = time_of(value.pointer("/metadata/creationTimestamp")).unwrap_or(now);
        let since = last.unwrap_or_else(|| clock.sim_time_of(created));
        // The latest scheduled time that has come (earlier missed ones are skipped, as the real
        // controller starts only the most recent).
        let mut due = None;
        let mut next = schedule.next_after(since);
        while let Some(at) = next.filter(|at| *at <= now) {
            due = Some(at);
            next = schedule.next_after(at);
        }
        if let (Some(at), false) = (due, suspended) {
            let active: Vec<&Job> = jobs.iter().filter(|j| finished(j).is_none()).collect();
            let policy = value.pointer("/spec/concurrencyPolicy").and_then(Value::as_str).unwrap_or("Allow");
            let skip = policy == "Forbid" && !active.is_empty();
            if policy == "Replace" {
                for job in &active {
                    let options = DeleteOptions { uid: job.metadata.uid.clone(), ..DeleteOptions::default() };
                    let _ = self.state.delete(
                        &JOBS,
                        ns,
                        job.metadata.name.as_deref().unwrap_or_default(),
                        &options,
                        &Actor::controller("cronjob-controller"),
                    );
                }
            }
            if !skip {
                let job_name = format!("{name}-{}", at.as_second() / 60);
                let template = value.pointer("/spec/jobTemplate").cloned().unwrap_or(Value::Null);
                let mut job = json!({
                    "apiVersion": "batch/v1", "kind": "Job",
                    "metadata": {"name": job_name, "namespace": ns,
                        "labels": template.pointer("/metadata/labels").cloned().unwrap_or(json!({})),
                        "annotations": template.pointer("/metadata/annotations").cloned().unwrap_or(json!({})),
                        "ownerReferences": [batch_owner_ref("CronJob", name, &object.uid)]},
                    "spec": template.get("spec").cloned().unwrap_or(json!({})),
                });
                job["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"] =
                    json!(at.to_string());
                match self.state.create(&JOBS, ns, job, false, &Actor::controller("cronjob-controller")) {
                    Ok(created) => jobs.push(serde_json::from_value(created).map_err(ApiError::internal)?),
                    Err(e) if e.code == 409 => {}
                    Err(e) => return Err(e),
                }
            }
            last = Some(at);
        }
        // History: the newest finished Jobs of each kind, up to their limits.
        for (kind, key, default) in
            [("Complete", "successfulJobsHistoryLimit", 3), ("Failed", "failedJobsHistoryLimit", 1)]
        {
            let limit =
                value.pointer(&format!("/spec/{key}")).and_then(Value::as_i64).unwrap_or(default).max(0)
                    as usize;
            let mut done: Vec<&Job> =
                jobs.iter().filter(|j| finished(j).is_some_and(|(k, _)| k == kind)).collect();
            done.sort_by_key(|j| j.metadata.creation_timestamp.as_ref().map(|t| t.0));
            if done.len() > limit {
                for job in &done[..done.len() - limit] {
                    let options = DeleteOptions { uid: job.metadata.uid.clone(), ..DeleteOptions::default() };
                    let _ = self.state.delete(
                        &JOBS,
                        ns,
                        job.metadata.name.as_deref().unwrap_or_default(),
                        &options,
                        &Actor::controller("cronjob-controller"),
                    );
                }
            }
        }
        let active: Vec<Value> = jobs
            .iter()
            .filter(|j| finished(j).is_none())
            .map(|j| json!({"kind": "Job", "apiVersion": "batch/v1", "name": j.metadata.name, "namespace": ns, "uid": j.metadata.uid}))
            .collect();
        let last_successful = jobs
            .iter()
            .filter_map(|j| finished(j).filter(|(k, _)| *k == "Complete").and_then(|(_, at)| at))
            .max();
        let mut status = json!({});
        if !active.is_empty() {
            status["active"] = json!(active);
        }
        if let Some(at) = last {
            status["lastScheduleTime"] = json!(at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
        }
        if let Some(at) = last_successful {
            status["lastSuccessfulTime"] = json!(at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
        }
        self.write_status(&CRONJOBS, ns, name, &object.uid, status)?;
        if let (Some(at), false) = (next, suspended) {
            let wait = now.duration_until(at).unsigned_abs();
            self.requeue_after(
                Key::CronJob(ns.to_owned(), name.to_owned()),
                clock.scaled(wait) + std::time::Duration::from_millis(5),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().expect("time")
    }

    #[test]
    fn schedules_name_the_next_minute_they_match() {
        let every_five = Schedule::parse("*/5 * * * *").expect("schedule");
        assert_eq!(every_five.next_after(at("2026-12-01T10:02:30Z")), Some(at("2026-12-01T10:05:00Z")));
        assert_eq!(every_five.next_after(at("2026-12-01T10:05:00Z")), Some(at("2026-12-01T10:10:00Z")));
        let nightly = Schedule::parse("@daily").expect("schedule");
        assert_eq!(nightly.next_after(at("2026-12-01T10:00:00Z")), Some(at("2026-12-02T00:00:00Z")));
        let weekdays = Schedule::parse("30 9 * * 1-5").expect("schedule");
        // 2026-12-05 is a Saturday: the next is Monday the 7th.
        assert_eq!(weekdays.next_after(at("2026-12-04T10:00:00Z")), Some(at("2026-12-07T09:30:00Z")));
        for bad in ["* * * *", "61 * * * *", "*/0 * * * *", "a b c d e"] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
    }
}
