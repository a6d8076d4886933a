//! containerd restarts across the cluster, a bounded number at once. A first
//! `helm install` starts an installer on every node together, and each
//! restarts its containerd (on k3s and rke2 servers, that is the control
//! plane's): so a restart holds one of N Leases (coordination.k8s.io),
//! PREFIX-0 to PREFIX-(N-1) in the installer's namespace, from before it
//! restarts until containerd serves again. A Lease whose holder did not
//! give it back (its node died mid-restart) is free again once its time is
//! up. Taking one is optimistic: a create or an update that another node
//! made first fails with Conflict, and the next one is tried.

use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::kube::{Kube, Written};

/// How often a waiting installer tries the slots again.
const RETRY: Duration = Duration::from_secs(2);
/// How often it says whom it waits for.
const REPORT: Duration = Duration::from_secs(30);

pub struct RestartSlots {
    pub kube: Kube,
    pub namespace: String,
    /// Leases are named PREFIX-0 to PREFIX-(slots-1).
    pub prefix: String,
    pub slots: u32,
    /// Who holds a slot: the node's name.
    pub holder: String,
    /// How long a slot is held at most: the restart's timeout and a margin.
    pub hold: Duration,
}

/// A slot held; given back when dropped.
pub struct Slot<'a> {
    slots: &'a RestartSlots,
    name: String,
}

/// What became of one try at a slot.
enum Try {
    Taken,
    HeldBy(String),
}

impl RestartSlots {
    /// Waits until one of the slots is this node's.
    pub fn acquire(&self) -> Result<Slot<'_>> {
        let mut reported = None::<Instant>;
        loop {
            let mut holders = Vec::new();
            for index in 0..self.slots {
                let name = format!("{}-{index}", self.prefix);
                match self.try_take(&name)? {
                    Try::Taken => {
                        info!(lease = name, "restart slot taken");
                        return Ok(Slot { slots: self, name });
                    }
                    Try::HeldBy(holder) => holders.push(holder),
                }
            }
            if reported.is_none_or(|at| at.elapsed() >= REPORT) {
                info!("waiting to restart containerd: {} of the cluster's nodes restart at a time, now {}", self.slots, holders.join(", "));
                reported = Some(Instant::now());
            }
            std::thread::sleep(RETRY);
        }
    }

    fn try_take(&self, name: &str) -> Result<Try> {
        let now = SystemTime::now();
        let Some(lease) = self.kube.get_lease(&self.namespace, name)? else {
            let lease = json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": name, "namespace": self.namespace},
                "spec": self.held_spec(now),
            });
            return Ok(match self.kube.create_lease(&self.namespace, &lease)? {
                Written::Done => Try::Taken,
                Written::Conflict => Try::HeldBy("another node".into()),
            });
        };
        let spec = &lease["spec"];
        let holder = spec["holderIdentity"].as_str().unwrap_or_default();
        if !holder.is_empty() && holder != self.holder && !expired(spec, now) {
            return Ok(Try::HeldBy(holder.to_string()));
        }
        let mut taken = lease.clone();
        taken["spec"] = self.held_spec(now);
        Ok(match self.kube.update_lease(&self.namespace, name, &taken)? {
            Written::Done => Try::Taken,
            Written::Conflict => Try::HeldBy("another node".into()),
        })
    }

    fn held_spec(&self, now: SystemTime) -> Value {
        let time = micro_time(now);
        json!({
            "holderIdentity": self.holder,
            "leaseDurationSeconds": self.hold.as_secs(),
            "acquireTime": time,
            "renewTime": time,
        })
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let RestartSlots { kube, namespace, holder, .. } = self.slots;
        let given_back = (|| -> Result<()> {
            let Some(mut lease) = kube.get_lease(namespace, &self.name)? else { return Ok(()) };
            if lease["spec"]["holderIdentity"].as_str() != Some(holder) {
                return Ok(());
            }
            lease["spec"] = json!({});
            kube.update_lease(namespace, &self.name, &lease).map(drop)
        })();
        match given_back {
            Ok(()) => info!(lease = self.name, "restart slot given back"),
            Err(err) => warn!(lease = self.name, "give back the restart slot: {err:#} (it frees itself when its time is up)"),
        }
    }
}

/// Whether a held Lease's time is up (renewTime + leaseDurationSeconds).
fn expired(spec: &Value, now: SystemTime) -> bool {
    let renewed = spec["renewTime"].as_str().or(spec["acquireTime"].as_str()).and_then(parse_micro_time);
    let duration = spec["leaseDurationSeconds"].as_u64().unwrap_or(0);
    match renewed {
        Some(renewed) => renewed + Duration::from_secs(duration) < now,
        None => true,
    }
}

/// Kubernetes' MicroTime: RFC 3339 in UTC with microseconds.
fn micro_time(time: SystemTime) -> String {
    let since = time.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let (days, seconds) = ((since.as_secs() / 86_400) as i64, since.as_secs() % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60,
        since.subsec_micros()
    )
}

/// A MicroTime or Time (`2026-12-07T20:10:00.123456Z`, fraction optional).
fn parse_micro_time(text: &str) -> Option<SystemTime> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut date = date.split('-').map(|part| part.parse::<i64>().ok());
    let (year, month, day) = (date.next()??, date.next()??, date.next()??);
    let (time, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let mut time = time.split(':').map(|part| part.parse::<u64>().ok());
    let (hour, minute, second) = (time.next()??, time.next()??, time.next()??);
    let micros: u64 = format!("{fraction:0<6}")[..6].parse().ok()?;
    let days = u64::try_from(days_from_civil(year, month, day)).ok()?;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds) + Duration::from_micros(micros))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm), and its inverse below.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    (year_of_era + era * 400 + i64::from(month <= 2), month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micro_times_round_trip_and_read_the_apis_forms() {
        let time = SystemTime::UNIX_EPOCH + Duration::from_micros(1_796_674_200_123_456);
        let text = micro_time(time);
        assert_eq!(text, "2026-12-07T20:10:00.123456Z");
        assert_eq!(parse_micro_time(&text), Some(time));
        assert_eq!(parse_micro_time("2024-02-29T00:00:01Z"), Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_709_164_801)));
        assert_eq!(parse_micro_time("yesterday"), None);
    }

    #[test]
    fn a_lease_is_free_once_its_time_is_up() {
        let now = SystemTime::now();
        let spec = |renewed: SystemTime| json!({"holderIdentity": "node-b", "leaseDurationSeconds": 60, "renewTime": micro_time(renewed)});
        assert!(!expired(&spec(now - Duration::from_secs(30)), now));
        assert!(expired(&spec(now - Duration::from_secs(90)), now));
        assert!(expired(&json!({"holderIdentity": "node-b"}), now));
    }
}
