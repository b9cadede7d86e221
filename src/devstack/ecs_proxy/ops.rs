//! The corrected ECS operations: each handler forwards to moto and lays the
//! AWS-documented behaviour over moto's answer, or answers itself where moto
//! has no answer (tokens, MISSING, paging, not-found errors).

use std::io;

use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode};
use serde_json::{Map, Value, json};

use super::model::{
    self, Phase, StopInfo, TaskOverlay, names_task, overlay_task, parse_task_arn, request_cluster,
    task_in_cluster,
};
use super::upstream::{UpstreamResponse, own_headers};
use super::wire::{self, Body, invalid_parameter, serialization};
use super::{ControlError, Shared, TokenEntry, now_secs};

/// DescribeTasks' limit: "A list of up to 100 task IDs or full ARN entries"
/// (API reference, DescribeTasks `tasks`).
const MAX_DESCRIBE_TASKS: usize = 100;
/// RunTask's limit: "You can specify up to 10 tasks for each call".
const MAX_RUN_COUNT: i64 = 10;
/// ListTasks' page size: `maxResults` "can be between 1 and 100 ... If
/// this parameter isn't used, then ListTasks returns up to 100 results".
const MAX_LIST_RESULTS: u64 = 100;

/// One ECS call as received.
pub(super) struct Call {
    pub operation: String,
    /// The client's headers, reused for the upstream call (moto reads the
    /// region from `Authorization`).
    pub headers: HeaderMap,
    pub request: Map<String, Value>,
    /// The body exactly as received, for calls forwarded unchanged.
    pub raw: Bytes,
}

/// moto's answer, relayed as it is (bar hop-by-hop headers).
pub(super) fn relay(resp: UpstreamResponse) -> Response<Body> {
    wire::response(resp.status, resp.headers, resp.body)
}

/// moto's answer with its body replaced by `body`.
fn rewrite(resp: UpstreamResponse, body: Map<String, Value>) -> Response<Body> {
    let body = Bytes::from(Value::Object(body).to_string());
    wire::response(resp.status, resp.headers, body)
}

/// The emulator could not be reached or did not answer in time.
pub(super) fn bad_gateway(error: &io::Error) -> Response<Body> {
    let status = if error.kind() == io::ErrorKind::TimedOut {
        StatusCode::GATEWAY_TIMEOUT
    } else {
        StatusCode::BAD_GATEWAY
    };
    wire::proxy_failure(status, &format!("the emulator failed: {error}"))
}

/// A request field that should have been a string.
struct NotAString(&'static str);

impl NotAString {
    /// awsJson's answer to a member of the wrong type.
    fn answer(&self) -> Response<Body> {
        serialization(&format!("{} must be a string", self.0))
    }
}

/// A field that must be a string when present.
fn optional_string(
    request: &Map<String, Value>,
    field: &'static str,
) -> Result<Option<String>, NotAString> {
    match request.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(NotAString(field)),
    }
}

/// What moto said about one task named in a request.
enum Lookup {
    Found(Map<String, Value>),
    NotFound,
    /// moto refused the DescribeTasks (e.g. `ClusterNotFoundException`).
    Refused(UpstreamResponse),
}

/// How a test stops a task.
pub(super) struct TestStop {
    code: String,
    reason: String,
    exit_code: Option<i32>,
    container_reason: Option<String>,
}

impl TestStop {
    /// The essential container exited with `exit_code`. ECS reports this as
    /// `stopCode` EssentialContainerExited ("Task stopped because an
    /// essential container exited") with `stoppedReason` "Essential
    /// container in task exited".
    pub fn exited(exit_code: i32, container_reason: Option<String>) -> Self {
        Self {
            code: "EssentialContainerExited".into(),
            reason: "Essential container in task exited".into(),
            exit_code: Some(exit_code),
            container_reason,
        }
    }

    /// The task failed with `code` and `reason` and no exit code (a
    /// container that never ran has none).
    pub fn failed(code: &str, reason: &str) -> Self {
        Self {
            code: code.into(),
            reason: reason.into(),
            exit_code: None,
            container_reason: Some(reason.into()),
        }
    }
}

impl Shared {
    pub(super) async fn dispatch(&self, call: Call) -> Response<Body> {
        match call.operation.as_str() {
            "RunTask" => self.run_task(call).await,
            "DescribeTasks" => self.describe_tasks(call).await,
            "StopTask" => self.stop_task(call).await,
            "ListTasks" => self.list_tasks(call).await,
            "TagResource" | "UntagResource" | "ListTagsForResource" => self.tags(call).await,
            _ => match self.forward(&call).await {
                Ok(resp) => relay(resp),
                Err(error) => bad_gateway(&error),
            },
        }
    }

    /// Sends the call to moto unchanged.
    async fn forward(&self, call: &Call) -> io::Result<UpstreamResponse> {
        self.upstream
            .send(Method::POST, "/", &call.headers, call.raw.clone())
            .await
    }

    /// RunTask with `clientToken` idempotency (AWS "Ensuring idempotency"):
    /// "If you retry a request that completed successfully using the same
    /// client token and the same request parameters, the response of the
    /// original request is returned. If you retry ... with the same client
    /// token but change one or more of the parameters other than the Region
    /// or Availability Zone, the retry fails with a ConflictException"; and
    /// "Requests with the same token in the same cluster are idempotent" (a
    /// token is scoped to its cluster). The token's TTL (at most 24 h) is not
    /// modelled: a token is remembered for the proxy's life.
    async fn run_task(&self, call: Call) -> Response<Body> {
        let cluster = request_cluster(&call.request);
        let token = match optional_string(&call.request, "clientToken") {
            Ok(token) => token,
            Err(bad) => return bad.answer(),
        };
        // "Up to 64 characters are allowed. The valid characters are
        // characters in the range of 33-126, inclusive."
        if let Some(token) = &token
            && (token.is_empty()
                || token.len() > 64
                || !token.bytes().all(|b| (33..=126).contains(&b)))
        {
            return invalid_parameter(
                "clientToken must be 1 to 64 ASCII characters in the range 33-126",
            );
        }
        match call.request.get("count") {
            None | Some(Value::Null) => {}
            Some(count) => match count.as_i64() {
                Some(1..=MAX_RUN_COUNT) => {}
                Some(_) => return invalid_parameter("count must be between 1 and 10"),
                None => return serialization("count must be an integer"),
            },
        }
        let Some(token) = token else {
            return self.launch(&call, &cluster).await.0;
        };

        let _serial = self.run_task_lock.lock().await;
        let mut params = call.request.clone();
        params.remove("clientToken");
        let key = (cluster.clone(), token);
        let earlier = self.lock().tokens.get(&key).cloned();
        if let Some(earlier) = earlier {
            if earlier.params == params {
                return wire::json_ok(&earlier.response);
            }
            let resource_ids: Vec<Value> = earlier.response["tasks"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t.get("taskArn").cloned())
                .collect();
            let mut extra = Map::new();
            extra.insert("resourceIds".into(), Value::Array(resource_ids));
            return wire::aws_error_with(
                StatusCode::BAD_REQUEST,
                "ConflictException",
                "The clientToken is already in use with a RunTask request that has \
                 different parameters.",
                extra,
            );
        }
        let (resp, answer) = self.launch(&call, &cluster).await;
        if let Some(response) = answer {
            self.lock()
                .tokens
                .insert(key, TokenEntry { params, response });
        }
        resp
    }

    /// Forwards a RunTask and takes note of the tasks it launched. Returns
    /// the answer and, for a success, its body (for the token cache).
    async fn launch(&self, call: &Call, cluster: &str) -> (Response<Body>, Option<Value>) {
        let resp = match self.forward(call).await {
            Ok(resp) => resp,
            Err(error) => return (bad_gateway(&error), None),
        };
        let Some(mut body) = resp.json_object() else {
            return (relay(resp), None);
        };
        let now = now_secs();
        {
            let mut state = self.lock();
            let missing = state.settings.missing_after_launch;
            let tasks = body.get_mut("tasks").and_then(Value::as_array_mut);
            for task in tasks.into_iter().flatten().filter_map(Value::as_object_mut) {
                let Some(arn) = task
                    .get("taskArn")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                else {
                    continue;
                };
                let task_cluster = task
                    .get("clusterArn")
                    .and_then(Value::as_str)
                    .map_or(cluster, model::cluster_name);
                let overlay = TaskOverlay::launched(task_cluster, now, missing);
                overlay_task(task, &overlay, Phase::Running);
                state.insert_task(&arn, overlay);
            }
        }
        let answer = Value::Object(body.clone());
        (rewrite(resp, body), Some(answer))
    }

    /// DescribeTasks as AWS answers it: tasks it cannot find, and tasks of
    /// another cluster, are listed in `failures` with reason MISSING ("failures:
    /// Any failures associated with the call"; an unknown ARN gives
    /// `{"arn": ..., "reason": "MISSING"}`); at most 100 tasks per call; and
    /// during the configured window right after launch a task is MISSING too
    /// (eventual consistency, RunTask API reference).
    async fn describe_tasks(&self, call: Call) -> Response<Body> {
        let cluster = request_cluster(&call.request);
        let idents: Vec<String> = match call.request.get("tasks") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => {
                match items
                    .iter()
                    .map(|v| v.as_str().map(str::to_owned))
                    .collect()
                {
                    Some(idents) => idents,
                    None => return serialization("tasks must be a list of strings"),
                }
            }
            Some(_) => return serialization("tasks must be a list of strings"),
        };
        if idents.len() > MAX_DESCRIBE_TASKS {
            return invalid_parameter("Tasks cannot be more than 100 task IDs or ARNs.");
        }
        if idents.is_empty() {
            // moto answers "Tasks cannot be empty.", as AWS does.
            return match self.forward(&call).await {
                Ok(resp) => relay(resp),
                Err(error) => bad_gateway(&error),
            };
        }

        let mut hidden = Vec::new();
        let mut asked = Vec::new();
        {
            let mut state = self.lock();
            for ident in &idents {
                match state.find_task_mut(ident) {
                    Some(overlay)
                        if overlay.cluster == cluster && overlay.missing_polls_left > 0 =>
                    {
                        if !hidden.contains(ident) {
                            overlay.missing_polls_left -= 1;
                            hidden.push(ident.clone());
                        }
                    }
                    _ => asked.push(ident.clone()),
                }
            }
        }
        if asked.is_empty() {
            let failures: Vec<Value> = idents.iter().map(|i| model::missing(i)).collect();
            return wire::json_ok(&json!({ "tasks": [], "failures": failures }));
        }

        let mut body = call.request.clone();
        body.insert(
            "tasks".into(),
            Value::Array(asked.iter().cloned().map(Value::from).collect()),
        );
        let resp = match self
            .upstream
            .ecs(&call.headers, "DescribeTasks", &body)
            .await
        {
            Ok(resp) => resp,
            Err(error) => return bad_gateway(&error),
        };
        let Some(mut answer) = resp.json_object() else {
            return relay(resp);
        };
        let moto_tasks = match answer.remove("tasks") {
            Some(Value::Array(tasks)) => tasks,
            _ => Vec::new(),
        };
        let mut failures = match answer.remove("failures") {
            Some(Value::Array(failures)) => failures,
            _ => Vec::new(),
        };

        // Keep moto's tasks that are in the cluster and named exactly.
        let mut kept: Vec<Map<String, Value>> = Vec::new();
        for task in moto_tasks {
            let Value::Object(task) = task else { continue };
            let Some(arn) = task.get("taskArn").and_then(Value::as_str) else {
                continue;
            };
            let named = asked.iter().any(|ident| names_task(ident, arn));
            let seen = kept
                .iter()
                .any(|k| k.get("taskArn").and_then(Value::as_str) == Some(arn));
            if named && !seen && task_in_cluster(&task, &cluster) {
                kept.push(task);
            }
        }
        for ident in &idents {
            let found = kept.iter().any(|task| {
                task.get("taskArn")
                    .and_then(Value::as_str)
                    .is_some_and(|arn| names_task(ident, arn))
            });
            if hidden.contains(ident) || !found {
                failures.push(model::missing(ident));
            }
        }

        let now = now_secs();
        {
            let mut state = self.lock();
            for task in &mut kept {
                let arn = task
                    .get("taskArn")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                if !state.tasks.contains_key(&arn) {
                    state.insert_task(&arn, TaskOverlay::launched(cluster.as_str(), now, 0));
                }
                if let Some(overlay) = state.tasks.get_mut(&arn) {
                    let phase = overlay.phase(now, true);
                    overlay_task(task, overlay, phase);
                }
            }
        }
        answer.insert(
            "tasks".into(),
            Value::Array(kept.into_iter().map(Value::Object).collect()),
        );
        answer.insert("failures".into(), Value::Array(failures));
        rewrite(resp, answer)
    }

    /// Asks moto about the one task `ident` names, in `cluster` only.
    async fn lookup_task(
        &self,
        headers: &HeaderMap,
        cluster: &str,
        ident: &str,
    ) -> io::Result<Lookup> {
        let mut body = Map::new();
        body.insert("cluster".into(), Value::from(cluster));
        body.insert("tasks".into(), json!([ident]));
        let resp = self.upstream.ecs(headers, "DescribeTasks", &body).await?;
        let Some(answer) = resp.json_object() else {
            return Ok(Lookup::Refused(resp));
        };
        let found = answer
            .get("tasks")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_object)
            .find(|task| {
                task_in_cluster(task, cluster)
                    && task
                        .get("taskArn")
                        .and_then(Value::as_str)
                        .is_some_and(|arn| names_task(ident, arn))
            });
        Ok(found.map_or(Lookup::NotFound, |task| Lookup::Found(task.clone())))
    }

    /// StopTask as AWS answers it: `stopCode` UserInitiated ("The task was
    /// stopped with a call to StopTask"), the `reason` sent as
    /// `stoppedReason` ("the message appears in subsequent DescribeTasks API
    /// operations on this task"), the containers' exit code that of SIGTERM
    /// ("the equivalent of docker stop is issued to the containers"); an
    /// unknown task is `InvalidParameterException` "The referenced task was
    /// not found."; a task already stopped is returned as it is.
    ///
    /// moto is asked with a DescribeTasks first: its StopTask answers an
    /// unknown task with an HTML 500 and ignores the cluster's scope.
    async fn stop_task(&self, call: Call) -> Response<Body> {
        let cluster = request_cluster(&call.request);
        let ident = match optional_string(&call.request, "task") {
            Ok(Some(ident)) if !ident.is_empty() => ident,
            Ok(_) => return invalid_parameter("task must be specified"),
            Err(bad) => return bad.answer(),
        };
        let reason = match optional_string(&call.request, "reason") {
            Ok(reason) => reason,
            Err(bad) => return bad.answer(),
        };
        let task = match self.lookup_task(&call.headers, &cluster, &ident).await {
            Ok(Lookup::Found(task)) => task,
            Ok(Lookup::NotFound) => return invalid_parameter("The referenced task was not found."),
            Ok(Lookup::Refused(resp)) => return relay(resp),
            Err(error) => return bad_gateway(&error),
        };
        let arn = task
            .get("taskArn")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let moto_stopped = task.get("desiredStatus").and_then(Value::as_str) == Some("STOPPED");
        let already = self
            .lock()
            .tasks
            .get(&arn)
            .is_some_and(|overlay| overlay.stop.is_some());
        if already || moto_stopped {
            let mut task = task;
            self.overlay_without_poll(&arn, &cluster, &mut task);
            return wire::json_ok(&json!({ "task": task }));
        }

        let resp = match self.forward(&call).await {
            Ok(resp) => resp,
            Err(error) => return bad_gateway(&error),
        };
        let Some(mut answer) = resp.json_object() else {
            return relay(resp);
        };
        {
            let now = now_secs();
            let mut state = self.lock();
            let settings = state.settings;
            if !state.tasks.contains_key(&arn) {
                state.insert_task(&arn, TaskOverlay::launched(cluster.as_str(), now, 0));
            }
            if let Some(overlay) = state.tasks.get_mut(&arn)
                && overlay.stop.is_none()
            {
                let mut stop = StopInfo::new("UserInitiated", now, settings.stopping_polls);
                stop.reason = reason;
                stop.exit_code = Some(settings.stop_exit_code);
                overlay.stop = Some(stop);
            }
        }
        if let Some(Value::Object(task)) = answer.get_mut("task") {
            self.overlay_without_poll(&arn, &cluster, task);
        }
        rewrite(resp, answer)
    }

    /// Lays the overlay of `arn` over `task` without using up a poll.
    fn overlay_without_poll(&self, arn: &str, cluster: &str, task: &mut Map<String, Value>) {
        let now = now_secs();
        let mut state = self.lock();
        if !state.tasks.contains_key(arn) {
            state.insert_task(arn, TaskOverlay::launched(cluster, now, 0));
        }
        if let Some(overlay) = state.tasks.get_mut(arn) {
            let phase = overlay.phase(now, false);
            overlay_task(task, overlay, phase);
        }
    }

    /// ListTasks as AWS answers it: "desiredStatus ... The default status
    /// filter is RUNNING"; pages of `maxResults` (1-100, default 100) with a
    /// `nextToken` while more remain; only the named cluster's tasks (moto
    /// matches the cluster name as a substring of each task's cluster ARN).
    async fn list_tasks(&self, call: Call) -> Response<Body> {
        let cluster = request_cluster(&call.request);
        let max_results = match call.request.get("maxResults") {
            None | Some(Value::Null) => MAX_LIST_RESULTS,
            Some(Value::Number(n)) => match n.as_u64() {
                Some(n @ 1..=MAX_LIST_RESULTS) => n,
                _ => return invalid_parameter("maxResults must be between 1 and 100"),
            },
            Some(_) => return serialization("maxResults must be an integer"),
        };
        let token = match optional_string(&call.request, "nextToken") {
            Ok(token) => token,
            Err(bad) => return bad.answer(),
        };
        let mut body = call.request.clone();
        body.remove("maxResults");
        body.remove("nextToken");
        if body.get("desiredStatus").is_none_or(Value::is_null) {
            body.insert("desiredStatus".into(), Value::from("RUNNING"));
        }
        let resp = match self.upstream.ecs(&call.headers, "ListTasks", &body).await {
            Ok(resp) => resp,
            Err(error) => return bad_gateway(&error),
        };
        let Some(mut answer) = resp.json_object() else {
            return relay(resp);
        };
        let mut arns: Vec<String> = answer
            .get("taskArns")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter(|arn| parse_task_arn(arn).is_none_or(|parsed| parsed.cluster == cluster))
            .map(str::to_owned)
            .collect();
        arns.sort();
        arns.dedup();
        let Some((items, next)) = model::page(&arns, token.as_deref(), max_results as usize) else {
            return invalid_parameter("The nextToken is not valid.");
        };
        answer.insert(
            "taskArns".into(),
            Value::Array(items.into_iter().map(Value::from).collect()),
        );
        match next {
            Some(next) => answer.insert("nextToken".into(), Value::from(next)),
            None => answer.remove("nextToken"),
        };
        rewrite(resp, answer)
    }

    /// TagResource, UntagResource, ListTagsForResource: passed through, but
    /// an unknown task (moto: HTML 500) is `InvalidParameterException`, and
    /// ListTagsForResource always has `tags` (AWS sends `[]` for none).
    async fn tags(&self, call: Call) -> Response<Body> {
        let resp = match self.forward(&call).await {
            Ok(resp) => resp,
            Err(error) => return bad_gateway(&error),
        };
        let task_arn = call
            .request
            .get("resourceArn")
            .and_then(Value::as_str)
            .is_some_and(|arn| arn.contains(":task/"));
        if resp.is_internal_error() && task_arn {
            return invalid_parameter("The specified task could not be found.");
        }
        if call.operation == "ListTagsForResource"
            && let Some(mut answer) = resp.json_object()
        {
            if answer.get("tags").is_none_or(Value::is_null) {
                answer.insert("tags".into(), json!([]));
            }
            return rewrite(resp, answer);
        }
        relay(resp)
    }

    /// Stops a task for a test: asks moto's StopTask (so moto's
    /// `desiredStatus` and ListTasks agree), then lays `how` over it.
    pub(super) async fn stop_from_test(
        &self,
        task_arn: &str,
        how: TestStop,
    ) -> Result<(), ControlError> {
        let parsed = parse_task_arn(task_arn).ok_or_else(|| ControlError::InvalidTaskArn {
            task_arn: task_arn.to_owned(),
        })?;
        let cluster = parsed.cluster.to_owned();
        let headers = own_headers(parsed.region);
        let rejected = |operation, resp: UpstreamResponse| ControlError::UpstreamRejected {
            operation,
            status: resp.status.as_u16(),
            body: String::from_utf8_lossy(&resp.body).into_owned(),
        };
        let lookup = self
            .lookup_task(&headers, &cluster, task_arn)
            .await
            .map_err(|source| ControlError::UpstreamFailed {
                operation: "DescribeTasks",
                source,
            })?;
        match lookup {
            Lookup::Found(_) => {}
            Lookup::NotFound => {
                return Err(ControlError::TaskNotFound {
                    task_arn: task_arn.to_owned(),
                    cluster,
                });
            }
            Lookup::Refused(resp) => return Err(rejected("DescribeTasks", resp)),
        }
        let already_stopped = || ControlError::AlreadyStopped {
            task_arn: task_arn.to_owned(),
        };
        if self
            .lock()
            .tasks
            .get(task_arn)
            .is_some_and(|overlay| overlay.stop.is_some())
        {
            return Err(already_stopped());
        }

        let mut body = Map::new();
        body.insert("cluster".into(), Value::from(cluster.as_str()));
        body.insert("task".into(), Value::from(task_arn));
        body.insert("reason".into(), Value::from(how.reason.as_str()));
        let resp = self
            .upstream
            .ecs(&headers, "StopTask", &body)
            .await
            .map_err(|source| ControlError::UpstreamFailed {
                operation: "StopTask",
                source,
            })?;
        if !resp.status.is_success() {
            return Err(rejected("StopTask", resp));
        }

        let now = now_secs();
        let mut state = self.lock();
        let stopping_polls = state.settings.stopping_polls;
        if !state.tasks.contains_key(task_arn) {
            state.insert_task(task_arn, TaskOverlay::launched(cluster.as_str(), now, 0));
        }
        let Some(overlay) = state.tasks.get_mut(task_arn) else {
            return Err(already_stopped());
        };
        if overlay.stop.is_some() {
            return Err(already_stopped());
        }
        let mut stop = StopInfo::new(how.code.as_str(), now, stopping_polls);
        stop.never_started = how.code == "TaskFailedToStart";
        stop.reason = Some(how.reason);
        stop.exit_code = how.exit_code;
        stop.container_reason = how.container_reason;
        stop.container_stopped_first = true;
        overlay.stop = Some(stop);
        Ok(())
    }
}
