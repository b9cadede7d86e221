//! The proxy's pure half: what it remembers about each task and how that is
//! laid over moto's task JSON, plus the ARN, cluster and paging rules. No I/O,
//! no clock (callers pass `now`), so every rule is unit-tested here.

use serde_json::{Map, Value, json};

/// moto's cluster when a request names none, as on AWS ("If you do not
/// specify a cluster, the default cluster is assumed").
pub(super) const DEFAULT_CLUSTER: &str = "default";

/// The lifecycle states a Fargate task passes between RUNNING and STOPPED
/// (AWS "Task lifecycle": DEACTIVATING, STOPPING, DEPROVISIONING), shown
/// one per DescribeTasks while a stopping phase is configured.
const STOPPING_PHASES: [&str; 3] = ["DEACTIVATING", "STOPPING", "DEPROVISIONING"];

/// The name of a cluster given as a name or an ARN (`...:cluster/<name>`).
pub(super) fn cluster_name(cluster: &str) -> &str {
    match cluster.split_once(":cluster/") {
        Some((_, name)) => name,
        None => cluster,
    }
}

/// The cluster of a request body: its `cluster` field as a name, or
/// [`DEFAULT_CLUSTER`].
pub(super) fn request_cluster(body: &Map<String, Value>) -> String {
    body.get("cluster")
        .and_then(Value::as_str)
        .map_or(DEFAULT_CLUSTER, cluster_name)
        .to_owned()
}

/// The parts of a long-format task ARN,
/// `arn:aws:ecs:<region>:<account>:task/<cluster>/<id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TaskArn<'a> {
    pub region: &'a str,
    pub cluster: &'a str,
    pub id: &'a str,
}

/// Parses a long-format task ARN; `None` for anything else (short-format
/// ARNs without a cluster, bare ids, other resources).
pub(super) fn parse_task_arn(arn: &str) -> Option<TaskArn<'_>> {
    let mut fields = arn.splitn(6, ':');
    let (Some("arn"), Some(_partition), Some("ecs"), Some(region), Some(_account), Some(rest)) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return None;
    };
    let rest = rest.strip_prefix("task/")?;
    let (cluster, id) = rest.split_once('/')?;
    if region.is_empty() || cluster.is_empty() || id.is_empty() || id.contains('/') {
        return None;
    }
    Some(TaskArn {
        region,
        cluster,
        id,
    })
}

/// The id of a task ARN (its last path segment), or the input if it has none.
pub(super) fn task_id(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap_or(arn)
}

/// Whether `ident`, a task as a request names it (a full ARN or a bare id),
/// names the task `task_arn`. An ARN must match exactly; an id must equal the
/// ARN's id. (moto matches ids as substrings, so `"a"` finds every task whose
/// id contains an `a`; AWS does not.)
pub(super) fn names_task(ident: &str, task_arn: &str) -> bool {
    if ident.starts_with("arn:") {
        ident == task_arn
    } else {
        !ident.is_empty() && ident == task_id(task_arn)
    }
}

/// Whether a task JSON object belongs to cluster `cluster` (a name).
pub(super) fn task_in_cluster(task: &Map<String, Value>, cluster: &str) -> bool {
    task.get("clusterArn")
        .and_then(Value::as_str)
        .is_some_and(|arn| cluster_name(arn) == cluster)
}

/// How a task came to stop, as the proxy will report it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct StopInfo {
    /// `stopCode`: `UserInitiated`, `EssentialContainerExited`, `TaskFailedToStart`, ...
    pub code: String,
    /// `stoppedReason`; `None` keeps whatever moto reports (a StopTask
    /// without `reason` has none).
    pub reason: Option<String>,
    /// Exit code of the (essential) container once it has stopped.
    pub exit_code: Option<i32>,
    /// The container's `reason` (e.g. `OutOfMemoryError: ...`).
    pub container_reason: Option<String>,
    /// The container exited before the task began to stop (an exit, an OOM
    /// kill, a failed start), so during a stopping phase it is already
    /// STOPPED; for a StopTask it runs until the task is STOPPED.
    pub container_stopped_first: bool,
    /// The task never reached RUNNING (TaskFailedToStart): no `startedAt`.
    pub never_started: bool,
    /// When the stop began (`stoppingAt`), epoch seconds.
    pub stopping_at: f64,
    /// When the task was first reported STOPPED (`stoppedAt`).
    pub stopped_at: Option<f64>,
    /// DescribeTasks still to answer with a stopping phase before STOPPED.
    pub stopping_polls_left: u32,
    /// DescribeTasks answered with a stopping phase so far.
    pub stopping_polls_seen: u32,
}

impl StopInfo {
    /// A stop that began at `now` and shows `stopping_polls` stopping phases.
    pub fn new(code: impl Into<String>, now: f64, stopping_polls: u32) -> Self {
        Self {
            code: code.into(),
            reason: None,
            exit_code: None,
            container_reason: None,
            container_stopped_first: false,
            never_started: false,
            stopping_at: now,
            stopped_at: if stopping_polls == 0 { Some(now) } else { None },
            stopping_polls_left: stopping_polls,
            stopping_polls_seen: 0,
        }
    }
}

/// What the proxy knows about a task beyond what moto stores.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct TaskOverlay {
    /// Cluster name the task runs in.
    pub cluster: String,
    /// `createdAt`, epoch seconds.
    pub created_at: f64,
    /// `startedAt`, epoch seconds (moto starts tasks RUNNING at once).
    pub started_at: f64,
    /// DescribeTasks still to answer MISSING (the eventual-consistency window).
    pub missing_polls_left: u32,
    /// Set once the task was stopped through the proxy.
    pub stop: Option<StopInfo>,
}

impl TaskOverlay {
    /// A task launched at `now` in `cluster`, hidden from its first
    /// `missing_polls` DescribeTasks.
    pub fn launched(cluster: impl Into<String>, now: f64, missing_polls: u32) -> Self {
        Self {
            cluster: cluster.into(),
            created_at: now,
            started_at: now,
            missing_polls_left: missing_polls,
            stop: None,
        }
    }

    /// The phase to report now. With `poll` (a DescribeTasks), a stopping
    /// phase is used up and the first STOPPED report stamps `stoppedAt`;
    /// without (RunTask and StopTask answers) nothing changes, and a task
    /// whose stop has not yet been observed shows as still RUNNING with
    /// desiredStatus STOPPED, as AWS's StopTask answer does.
    pub fn phase(&mut self, now: f64, poll: bool) -> Phase {
        let Some(stop) = self.stop.as_mut() else {
            return Phase::Running;
        };
        if stop.stopping_polls_left == 0 {
            if poll && stop.stopped_at.is_none() {
                stop.stopped_at = Some(now);
            }
            return Phase::Stopped;
        }
        if !poll {
            return Phase::StopRequested;
        }
        let index = (stop.stopping_polls_seen as usize).min(STOPPING_PHASES.len() - 1);
        stop.stopping_polls_seen += 1;
        stop.stopping_polls_left -= 1;
        Phase::Stopping(STOPPING_PHASES[index])
    }
}

/// Where a task stands, as laid over moto's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Not stopped through the proxy: moto's `lastStatus` stands.
    Running,
    /// Stop accepted, not yet observed: RUNNING, desiredStatus STOPPED.
    StopRequested,
    /// Between RUNNING and STOPPED, with this `lastStatus`.
    Stopping(&'static str),
    /// STOPPED.
    Stopped,
}

fn set(task: &mut Map<String, Value>, key: &str, value: impl Into<Value>) {
    task.insert(key.to_owned(), value.into());
}

/// Lays the proxy's knowledge over one task object from moto, in place.
///
/// AWS behaviour restored (ECS API reference, `Task` and `Container`):
/// * `createdAt` and `startedAt` ("The Unix timestamp for the time when the
///   task was created / started"), epoch seconds as awsJson sends them;
/// * `stoppingAt`, `stoppedAt`, `stopCode` and `stoppedReason` once the task
///   is stopping or stopped ("the time when the task stops, transitions
///   from RUNNING to STOPPED");
/// * `stoppedReason` absent while running (moto sends `""`);
/// * each container's `taskArn` is the task's ARN ("The ARN of the task"),
///   where moto puts the task-definition ARN;
/// * the container's `lastStatus` follows the task (moto keeps PENDING
///   forever), and its `exitCode` is present only once it has stopped
///   (moto sends 0 from the start).
pub(super) fn overlay_task(task: &mut Map<String, Value>, overlay: &TaskOverlay, phase: Phase) {
    let task_arn = task
        .get("taskArn")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let stop = overlay.stop.as_ref();
    set(task, "createdAt", overlay.created_at);
    if stop.is_some_and(|s| s.never_started) {
        task.remove("startedAt");
    } else {
        set(task, "startedAt", overlay.started_at);
    }

    let (container_status, container_stopped) = match (phase, stop) {
        (Phase::Running, _) | (_, None) => {
            let last = task
                .get("lastStatus")
                .and_then(Value::as_str)
                .unwrap_or("RUNNING");
            let status = match last {
                "STOPPED" => "STOPPED",
                "RUNNING" | "DEACTIVATING" | "STOPPING" | "DEPROVISIONING" => "RUNNING",
                _ => "PENDING",
            };
            if task.get("stoppedReason").and_then(Value::as_str) == Some("") {
                task.remove("stoppedReason");
            }
            (status, status == "STOPPED")
        }
        (phase, Some(stop)) => {
            let last = match phase {
                Phase::Stopping(status) => status,
                Phase::Stopped => "STOPPED",
                _ => "RUNNING",
            };
            set(task, "lastStatus", last);
            set(task, "desiredStatus", "STOPPED");
            set(task, "stopCode", stop.code.as_str());
            match &stop.reason {
                Some(reason) => set(task, "stoppedReason", reason.as_str()),
                None => {
                    if task.get("stoppedReason").and_then(Value::as_str) == Some("") {
                        task.remove("stoppedReason");
                    }
                }
            }
            set(task, "stoppingAt", stop.stopping_at);
            match (phase, stop.stopped_at) {
                (Phase::Stopped, Some(at)) => {
                    set(task, "stoppedAt", at);
                    set(task, "executionStoppedAt", at);
                }
                _ => {
                    task.remove("stoppedAt");
                    task.remove("executionStoppedAt");
                }
            }
            let stopped = phase == Phase::Stopped
                || (stop.container_stopped_first && phase != Phase::StopRequested);
            (if stopped { "STOPPED" } else { "RUNNING" }, stopped)
        }
    };

    let Some(containers) = task.get_mut("containers").and_then(Value::as_array_mut) else {
        return;
    };
    for container in containers.iter_mut().filter_map(Value::as_object_mut) {
        set(container, "taskArn", task_arn.as_str());
        set(container, "lastStatus", container_status);
        container.remove("exitCode");
        container.remove("reason");
        if let (true, Some(stop)) = (container_stopped, stop) {
            if let Some(code) = stop.exit_code {
                set(container, "exitCode", code);
            }
            if let Some(reason) = &stop.container_reason {
                set(container, "reason", reason.as_str());
            }
        }
    }
}

/// A ListTasks `nextToken`: the last ARN handed out. Pages are cut from the
/// ARNs in sorted order, so "everything after the last ARN" stays right when
/// tasks join or leave the filter between calls (AWS leaves the order
/// unspecified). Opaque to callers, as AWS's is.
pub(super) fn page_token(last_arn: &str) -> String {
    format!("p1:{last_arn}")
}

/// One ListTasks page: `arns` (sorted) after `token`'s position, at most
/// `max_results` of them, and the token for the next page if any remain.
/// `None` for a token this proxy did not make.
pub(super) fn page(
    arns: &[String],
    token: Option<&str>,
    max_results: usize,
) -> Option<(Vec<String>, Option<String>)> {
    let start = match token {
        None => 0,
        Some(token) => {
            let last = token.strip_prefix("p1:")?;
            arns.partition_point(|a| a.as_str() <= last)
        }
    };
    let end = start.saturating_add(max_results).min(arns.len());
    let items = arns[start..end].to_vec();
    let next = (end < arns.len())
        .then(|| items.last().map(|last| page_token(last)))
        .flatten();
    Some((items, next))
}

/// A DescribeTasks failure entry as AWS sends it for a task it cannot find.
pub(super) fn missing(ident: &str) -> Value {
    json!({ "arn": ident, "reason": "MISSING" })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARN: &str = "arn:aws:ecs:us-east-1:123456789012:task/nomad/0123abcd";

    fn moto_task() -> Map<String, Value> {
        json!({
            "taskArn": ARN,
            "clusterArn": "arn:aws:ecs:us-east-1:123456789012:cluster/nomad",
            "lastStatus": "RUNNING",
            "desiredStatus": "RUNNING",
            "stoppedReason": "",
            "containers": [{
                "name": "app",
                "taskArn": "arn:aws:ecs:us-east-1:123456789012:task-definition/web:1",
                "lastStatus": "PENDING",
                "exitCode": 0,
            }],
        })
        .as_object()
        .cloned()
        .unwrap()
    }

    fn container(task: &Map<String, Value>) -> &Map<String, Value> {
        task["containers"][0].as_object().unwrap()
    }

    #[test]
    fn a_long_task_arn_parses_into_region_cluster_and_id() {
        assert_eq!(
            parse_task_arn(ARN),
            Some(TaskArn {
                region: "us-east-1",
                cluster: "nomad",
                id: "0123abcd"
            })
        );
        for bad in [
            "0123abcd",
            "arn:aws:ecs:us-east-1:123456789012:task/0123abcd",
            "arn:aws:ecs:us-east-1:123456789012:cluster/nomad",
            "arn:aws:ec2:us-east-1:123456789012:task/nomad/x",
            "arn:aws:ecs::123456789012:task/nomad/x",
            "",
        ] {
            assert_eq!(parse_task_arn(bad), None, "{bad}");
        }
    }

    #[test]
    fn an_arn_names_a_task_exactly_and_an_id_by_its_last_segment() {
        assert!(names_task(ARN, ARN));
        assert!(names_task("0123abcd", ARN));
        assert!(!names_task("0123", ARN), "no substring match as in moto");
        assert!(!names_task("", ARN));
        assert!(!names_task(
            "arn:aws:ecs:us-east-1:123456789012:task/other/0123abcd",
            ARN
        ));
    }

    #[test]
    fn cluster_names_come_from_names_arns_or_the_default() {
        assert_eq!(cluster_name("nomad"), "nomad");
        assert_eq!(
            cluster_name("arn:aws:ecs:us-east-1:123456789012:cluster/nomad"),
            "nomad"
        );
        let body = json!({}).as_object().cloned().unwrap();
        assert_eq!(request_cluster(&body), "default");
    }

    #[test]
    fn a_running_task_gets_timestamps_and_a_running_container_without_exit_code() {
        let mut task = moto_task();
        let mut overlay = TaskOverlay::launched("nomad", 100.5, 0);
        let phase = overlay.phase(101.0, true);
        overlay_task(&mut task, &overlay, phase);
        assert_eq!(task["createdAt"], json!(100.5));
        assert_eq!(task["startedAt"], json!(100.5));
        assert!(!task.contains_key("stoppedReason"));
        assert!(!task.contains_key("stopCode"));
        let c = container(&task);
        assert_eq!(c["taskArn"], ARN);
        assert_eq!(c["lastStatus"], "RUNNING");
        assert!(!c.contains_key("exitCode"));
    }

    #[test]
    fn an_exited_task_is_stopped_with_its_exit_code_and_stop_code() {
        let mut task = moto_task();
        let mut overlay = TaskOverlay::launched("nomad", 100.0, 0);
        let mut stop = StopInfo::new("EssentialContainerExited", 110.0, 0);
        stop.reason = Some("Essential container in task exited".into());
        stop.exit_code = Some(3);
        stop.container_stopped_first = true;
        overlay.stop = Some(stop);
        let phase = overlay.phase(111.0, true);
        overlay_task(&mut task, &overlay, phase);
        assert_eq!(task["lastStatus"], "STOPPED");
        assert_eq!(task["desiredStatus"], "STOPPED");
        assert_eq!(task["stopCode"], "EssentialContainerExited");
        assert_eq!(task["stoppedReason"], "Essential container in task exited");
        assert_eq!(task["stoppingAt"], json!(110.0));
        assert_eq!(task["stoppedAt"], json!(110.0));
        let c = container(&task);
        assert_eq!(c["lastStatus"], "STOPPED");
        assert_eq!(c["exitCode"], 3);
        assert!(!c.contains_key("reason"));
    }

    #[test]
    fn a_stopping_phase_walks_the_aws_states_then_stamps_stopped_at() {
        let mut overlay = TaskOverlay::launched("nomad", 100.0, 0);
        let mut stop = StopInfo::new("UserInitiated", 110.0, 4);
        stop.exit_code = Some(143);
        overlay.stop = Some(stop);

        assert_eq!(overlay.phase(110.5, false), Phase::StopRequested);
        let mut seen = Vec::new();
        for t in 0..4 {
            let mut task = moto_task();
            let phase = overlay.phase(111.0 + f64::from(t), true);
            overlay_task(&mut task, &overlay, phase);
            assert!(!task.contains_key("stoppedAt"));
            assert_eq!(container(&task)["lastStatus"], "RUNNING");
            assert!(!container(&task).contains_key("exitCode"));
            seen.push(task["lastStatus"].as_str().unwrap().to_owned());
        }
        assert_eq!(
            seen,
            [
                "DEACTIVATING",
                "STOPPING",
                "DEPROVISIONING",
                "DEPROVISIONING"
            ]
        );
        let mut task = moto_task();
        let phase = overlay.phase(120.0, true);
        overlay_task(&mut task, &overlay, phase);
        assert_eq!(task["lastStatus"], "STOPPED");
        assert_eq!(task["stoppedAt"], json!(120.0));
        assert_eq!(container(&task)["exitCode"], 143);
        // Later polls keep the first stoppedAt.
        overlay.phase(130.0, true);
        assert_eq!(overlay.stop.as_ref().unwrap().stopped_at, Some(120.0));
    }

    #[test]
    fn a_task_that_failed_to_start_has_no_started_at_and_no_exit_code() {
        let mut task = moto_task();
        let mut overlay = TaskOverlay::launched("nomad", 100.0, 0);
        let mut stop = StopInfo::new("TaskFailedToStart", 101.0, 0);
        stop.reason = Some("CannotPullContainerError: pull access denied".into());
        stop.container_reason = stop.reason.clone();
        stop.never_started = true;
        stop.container_stopped_first = true;
        overlay.stop = Some(stop);
        let phase = overlay.phase(102.0, true);
        overlay_task(&mut task, &overlay, phase);
        assert!(!task.contains_key("startedAt"));
        assert_eq!(task["stopCode"], "TaskFailedToStart");
        let c = container(&task);
        assert!(!c.contains_key("exitCode"));
        assert_eq!(c["reason"], "CannotPullContainerError: pull access denied");
    }

    #[test]
    fn pages_cover_every_arn_once_and_survive_a_shrinking_list() {
        let arns: Vec<String> = (0..5).map(|i| format!("arn:{i}")).collect();
        let (first, token) = page(&arns, None, 2).unwrap();
        assert_eq!(first, ["arn:0", "arn:1"]);
        let (second, token) = page(&arns, token.as_deref(), 2).unwrap();
        assert_eq!(second, ["arn:2", "arn:3"]);
        // arn:3 left the filter (stopped) and arn:1 too, between the calls.
        let shrunk: Vec<String> = arns
            .iter()
            .filter(|a| *a != "arn:3" && *a != "arn:1")
            .cloned()
            .collect();
        let (third, token) = page(&shrunk, token.as_deref(), 2).unwrap();
        assert_eq!(third, ["arn:4"]);
        assert_eq!(token, None);
        assert_eq!(page(&arns, Some("bogus"), 2), None);
    }
}
