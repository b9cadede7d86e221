//! The ECS fidelity proxy in front of real moto, driven by aws-sdk-ecs (and
//! a raw HTTP client for what the SDK would never send): each test checks
//! one AWS behaviour the proxy restores, or one fault or count it provides.

use std::time::Duration;

use aws_sdk_ecs::Client;
use aws_sdk_ecs::config::retry::RetryConfig;
use aws_sdk_ecs::config::timeout::TimeoutConfig;
use aws_sdk_ecs::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ecs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ecs::operation::run_task::RunTaskError;
use aws_sdk_ecs::types::{
    AwsVpcConfiguration, DesiredStatus, LaunchType, NetworkConfiguration, Tag, Task, TaskStopCode,
};
use nomad_driver_ecs::devstack::ecs_proxy::{ControlError, EcsProxy, Fault};
use nomad_driver_ecs::devstack::emulator::{RunningEmulator, Seed, start_default};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// moto, the proxy in front of it, and an SDK client pointed at the proxy.
struct Stack {
    // Dropped after the proxy (fields drop in order).
    proxy: EcsProxy,
    emu: RunningEmulator,
    ecs: Client,
}

impl Stack {
    async fn start() -> Stack {
        let emu = start_default("nomad").await.expect("starting the emulator");
        let proxy = EcsProxy::start(emu.endpoint())
            .await
            .expect("starting the proxy");
        let ecs = client_for(&proxy.endpoint(), None);
        Stack { proxy, emu, ecs }
    }

    fn seed(&self) -> &Seed {
        self.emu.seed()
    }

    /// RunTask of the seeded task definition, as the driver sends it.
    fn run_task(&self) -> aws_sdk_ecs::operation::run_task::builders::RunTaskFluentBuilder {
        let seed = self.seed();
        let vpc = AwsVpcConfiguration::builder()
            .set_subnets(Some(seed.subnets.clone()))
            .set_security_groups(Some(seed.security_groups.clone()))
            .build()
            .expect("awsvpc configuration");
        self.ecs
            .run_task()
            .cluster(&seed.cluster)
            .task_definition(&seed.task_definition)
            .launch_type(LaunchType::Fargate)
            .network_configuration(
                NetworkConfiguration::builder()
                    .awsvpc_configuration(vpc)
                    .build(),
            )
    }

    /// Launches one task and returns its ARN.
    async fn launch(&self) -> String {
        let out = self.run_task().send().await.expect("RunTask");
        arn_of(&out.tasks()[0])
    }

    async fn describe(
        &self,
        arns: &[&str],
    ) -> aws_sdk_ecs::operation::describe_tasks::DescribeTasksOutput {
        self.ecs
            .describe_tasks()
            .cluster(&self.seed().cluster)
            .set_tasks(Some(arns.iter().map(|a| a.to_string()).collect()))
            .send()
            .await
            .expect("DescribeTasks")
    }

    async fn describe_one(&self, arn: &str) -> Task {
        let out = self.describe(&[arn]).await;
        assert_eq!(out.failures(), &[], "{out:?}");
        assert_eq!(out.tasks().len(), 1, "{out:?}");
        out.tasks()[0].clone()
    }

    async fn list(&self, status: Option<DesiredStatus>) -> Vec<String> {
        let out = self
            .ecs
            .list_tasks()
            .cluster(&self.seed().cluster)
            .set_desired_status(status)
            .send()
            .await
            .expect("ListTasks");
        out.task_arns().to_vec()
    }
}

/// An SDK client for `endpoint` with retries off (so each call is one
/// request) and an optional per-attempt timeout.
fn client_for(endpoint: &str, attempt_timeout: Option<Duration>) -> Client {
    let mut timeouts = TimeoutConfig::builder().operation_timeout(Duration::from_secs(60));
    if let Some(attempt) = attempt_timeout {
        timeouts = timeouts.operation_attempt_timeout(attempt);
    }
    let timeouts = timeouts.build();
    let config = aws_sdk_ecs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .endpoint_url(endpoint)
        .http_client(aws_smithy_http_client::Builder::new().build_http())
        .retry_config(RetryConfig::disabled())
        .timeout_config(timeouts)
        .build();
    Client::from_conf(config)
}

fn arn_of(task: &Task) -> String {
    task.task_arn().expect("taskArn").to_owned()
}

/// One raw HTTP/1.1 exchange with the proxy (`Connection: close`), for
/// requests the SDK would never send. Returns status, headers and body.
async fn raw_http(
    proxy: &EcsProxy,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, String) {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(proxy.local_addr()).await?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            proxy.local_addr(),
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .expect("raw exchange timed out")
        .expect("raw exchange");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

/// A raw awsJson ECS call with a SigV4-shaped header moto accepts.
async fn raw_ecs(
    proxy: &EcsProxy,
    operation: &str,
    body: &[u8],
) -> (u16, Vec<(String, String)>, String) {
    let target = format!("AmazonEC2ContainerServiceV20141113.{operation}");
    raw_http(
        proxy,
        "POST",
        "/",
        &[
            ("X-Amz-Target", &target),
            ("Content-Type", "application/x-amz-json-1.1"),
            (
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/ecs/aws4_request, \
                 SignedHeaders=host, Signature=0",
            ),
        ],
        body,
    )
    .await
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn run_task_retried_with_the_same_client_token_yields_one_task() {
    let stack = Stack::start().await;

    let first = stack
        .run_task()
        .client_token("alloc-1/web")
        .started_by("nomad")
        .send()
        .await
        .expect("first RunTask");
    let second = stack
        .run_task()
        .client_token("alloc-1/web")
        .started_by("nomad")
        .send()
        .await
        .expect("retried RunTask");

    assert_eq!(first.tasks().len(), 1);
    assert_eq!(arn_of(&first.tasks()[0]), arn_of(&second.tasks()[0]));
    assert_eq!(stack.list(None).await, vec![arn_of(&first.tasks()[0])]);
    assert_eq!(stack.proxy.calls("RunTask"), 2);
}

#[tokio::test]
async fn concurrent_run_tasks_with_one_client_token_launch_once() {
    let stack = Stack::start().await;

    let (a, b) = tokio::join!(
        stack.run_task().client_token("race").send(),
        stack.run_task().client_token("race").send(),
    );

    let (a, b) = (a.expect("first RunTask"), b.expect("second RunTask"));
    assert_eq!(arn_of(&a.tasks()[0]), arn_of(&b.tasks()[0]));
    assert_eq!(stack.list(None).await.len(), 1);
}

#[tokio::test]
async fn a_client_token_reused_with_other_parameters_is_a_conflict_naming_the_first_tasks() {
    let stack = Stack::start().await;
    let first = stack
        .run_task()
        .client_token("tok-1")
        .started_by("a")
        .send()
        .await
        .expect("first RunTask");

    let err = stack
        .run_task()
        .client_token("tok-1")
        .started_by("b")
        .send()
        .await
        .expect_err("same token, other startedBy");

    match err.into_service_error() {
        RunTaskError::ConflictException(conflict) => {
            assert_eq!(conflict.resource_ids(), &[arn_of(&first.tasks()[0])]);
        }
        other => panic!("expected ConflictException, got {other:?}"),
    }
    assert_eq!(stack.list(None).await.len(), 1, "no second task launched");
}

#[tokio::test]
async fn run_task_carries_client_token_started_by_and_tags_as_recorded() {
    let stack = Stack::start().await;
    stack
        .run_task()
        .client_token("tok-rec")
        .started_by("nomad-alloc")
        .tags(Tag::builder().key("nomad_alloc").value("a1").build())
        .send()
        .await
        .expect("RunTask");

    let sent = stack.proxy.last_request("RunTask").expect("recorded");
    assert_eq!(sent["clientToken"], "tok-rec");
    assert_eq!(sent["startedBy"], "nomad-alloc");
    assert_eq!(
        sent["tags"],
        json!([{ "key": "nomad_alloc", "value": "a1" }])
    );
    assert_eq!(stack.proxy.last_request("StopTask"), None);
}

#[tokio::test]
async fn describe_tasks_reports_an_unknown_arn_as_missing() {
    let stack = Stack::start().await;
    let arn = stack.launch().await;
    let unknown = "arn:aws:ecs:us-east-1:123456789012:task/nomad/00000000000000000000000000000000";

    let out = stack.describe(&[&arn, unknown]).await;

    assert_eq!(out.tasks().len(), 1);
    assert_eq!(arn_of(&out.tasks()[0]), arn);
    assert_eq!(out.failures().len(), 1, "{out:?}");
    assert_eq!(out.failures()[0].arn(), Some(unknown));
    assert_eq!(out.failures()[0].reason(), Some("MISSING"));
}

#[tokio::test]
async fn describe_tasks_reports_a_task_of_another_cluster_as_missing() {
    let stack = Stack::start().await;
    stack
        .ecs
        .create_cluster()
        .cluster_name("other")
        .send()
        .await
        .expect("CreateCluster other");
    let arn = stack.launch().await;

    let out = stack
        .ecs
        .describe_tasks()
        .cluster("other")
        .tasks(&arn)
        .send()
        .await
        .expect("DescribeTasks in other");

    assert_eq!(out.tasks(), &[], "moto alone would return the task");
    assert_eq!(out.failures()[0].arn(), Some(arn.as_str()));
    assert_eq!(out.failures()[0].reason(), Some("MISSING"));
}

#[tokio::test]
async fn describe_tasks_with_more_than_100_arns_is_invalid_parameter() {
    let stack = Stack::start().await;
    let arns: Vec<String> = (0..101).map(|i| format!("task-{i}")).collect();

    let err = stack
        .ecs
        .describe_tasks()
        .cluster(&stack.seed().cluster)
        .set_tasks(Some(arns))
        .send()
        .await
        .expect_err("101 ARNs");

    assert_eq!(err.code(), Some("InvalidParameterException"), "{err:?}");
}

#[tokio::test]
async fn a_running_task_has_timestamps_and_a_running_container_without_exit_code() {
    let stack = Stack::start().await;
    let arn = stack.launch().await;

    let task = stack.describe_one(&arn).await;

    assert_eq!(task.last_status(), Some("RUNNING"));
    assert!(task.created_at().is_some(), "{task:?}");
    assert!(task.started_at().is_some(), "{task:?}");
    assert_eq!(task.stopped_at(), None);
    assert_eq!(task.stop_code(), None);
    assert_eq!(task.stopped_reason(), None, "moto sends an empty string");
    let container = &task.containers()[0];
    assert_eq!(container.task_arn(), Some(arn.as_str()));
    assert_eq!(container.last_status(), Some("RUNNING"));
    assert_eq!(container.exit_code(), None);
}

#[tokio::test]
async fn exit_task_makes_the_task_stopped_with_the_containers_exit_code() {
    let stack = Stack::start().await;
    let arn = stack.launch().await;

    stack.proxy.exit_task(&arn, 3).await.expect("exit_task");
    let task = stack.describe_one(&arn).await;

    assert_eq!(task.last_status(), Some("STOPPED"));
    assert_eq!(task.desired_status(), Some("STOPPED"));
    assert_eq!(
        task.stop_code(),
        Some(&TaskStopCode::EssentialContainerExited)
    );
    assert_eq!(
        task.stopped_reason(),
        Some("Essential container in task exited")
    );
    assert!(
        task.stopping_at().is_some() && task.stopped_at().is_some(),
        "{task:?}"
    );
    let container = &task.containers()[0];
    assert_eq!(container.last_status(), Some("STOPPED"));
    assert_eq!(container.exit_code(), Some(3));
    assert_eq!(container.reason(), None);
    // moto itself holds the task as stopped, so ListTasks filters agree.
    assert_eq!(stack.list(None).await, Vec::<String>::new());
    assert_eq!(
        stack.list(Some(DesiredStatus::Stopped)).await,
        vec![arn.clone()]
    );
    // The test helper's own calls are not counted as the driver's.
    assert_eq!(stack.proxy.calls("StopTask"), 0);
    assert!(matches!(
        stack.proxy.exit_task(&arn, 1).await,
        Err(ControlError::AlreadyStopped { .. })
    ));
}

#[tokio::test]
async fn an_oom_killed_task_exits_137_with_the_out_of_memory_reason() {
    let stack = Stack::start().await;
    let arn = stack.launch().await;

    stack
        .proxy
        .oom_kill_task(&arn)
        .await
        .expect("oom_kill_task");
    let task = stack.describe_one(&arn).await;

    assert_eq!(
        task.stop_code(),
        Some(&TaskStopCode::EssentialContainerExited)
    );
    let container = &task.containers()[0];
    assert_eq!(container.exit_code(), Some(137));
    assert_eq!(
        container.reason(),
        Some("OutOfMemoryError: Container killed due to memory usage")
    );
}

#[tokio::test]
async fn a_task_that_failed_to_start_has_its_stop_code_and_reason_and_no_exit_code() {
    let stack = Stack::start().await;
    let arn = stack.launch().await;
    let reason = "CannotPullContainerError: pull image manifest has been retried 5 time(s)";

    stack
        .proxy
        .fail_task(&arn, "TaskFailedToStart", reason)
        .await
        .expect("fail_task");
    let task = stack.describe_one(&arn).await;

    assert_eq!(task.stop_code(), Some(&TaskStopCode::TaskFailedToStart));
    assert_eq!(task.stopped_reason(), Some(reason));
    assert_eq!(task.started_at(), None);
    assert_eq!(task.containers()[0].exit_code(), None);
    assert_eq!(task.containers()[0].reason(), Some(reason));
}

#[tokio::test]
async fn control_calls_on_an_unknown_or_malformed_task_are_errors() {
    let stack = Stack::start().await;
    let unknown = "arn:aws:ecs:us-east-1:123456789012:task/nomad/ffffffffffffffffffffffffffffffff";

    assert!(matches!(
        stack.proxy.exit_task(unknown, 0).await,
        Err(ControlError::TaskNotFound { .. })
    ));
    assert!(matches!(
        stack.proxy.oom_kill_task("not-an-arn").await,
        Err(ControlError::InvalidTaskArn { .. })
    ));
}

#[tokio::test]
async fn stop_task_yields_user_initiated_with_the_reason_and_sigterm_exit_code() {
    let stack = Stack::start().await;
    let arn = stack.launch().await;

    let out = stack
        .ecs
        .stop_task()
        .cluster(&stack.seed().cluster)
        .task(&arn)
        .reason("Nomad StopTask")
        .send()
        .await
        .expect("StopTask");
    let stopped = out.task().expect("task");
    assert_eq!(stopped.desired_status(), Some("STOPPED"));
    assert_eq!(stopped.stop_code(), Some(&TaskStopCode::UserInitiated));

    let task = stack.describe_one(&arn).await;
    assert_eq!(task.last_status(), Some("STOPPED"));
    assert_eq!(task.stop_code(), Some(&TaskStopCode::UserInitiated));
    assert_eq!(task.stopped_reason(), Some("Nomad StopTask"));
    assert_eq!(task.containers()[0].exit_code(), Some(143));
    assert_eq!(task.containers()[0].last_status(), Some("STOPPED"));
    assert_eq!(stack.proxy.calls("StopTask"), 1);
}

#[tokio::test]
async fn stop_task_reports_the_exit_code_a_test_chose() {
    let stack = Stack::start().await;
    let arn = stack.launch().await;
    stack.proxy.set_stop_exit_code(137);

    stack
        .ecs
        .stop_task()
        .cluster(&stack.seed().cluster)
        .task(&arn)
        .send()
        .await
        .expect("StopTask");

    let task = stack.describe_one(&arn).await;
    assert_eq!(task.containers()[0].exit_code(), Some(137));
}

#[tokio::test]
async fn stop_task_of_an_unknown_task_is_invalid_parameter() {
    let stack = Stack::start().await;

    let err = stack
        .ecs
        .stop_task()
        .cluster(&stack.seed().cluster)
        .task("arn:aws:ecs:us-east-1:123456789012:task/nomad/0123456789abcdef0123456789abcdef")
        .send()
        .await
        .expect_err("unknown task");

    assert_eq!(err.code(), Some("InvalidParameterException"), "{err:?}");
    assert_eq!(err.message(), Some("The referenced task was not found."));
}

#[tokio::test]
async fn stop_task_of_an_exited_task_returns_it_as_it_is() {
    let stack = Stack::start().await;
    let arn = stack.launch().await;
    stack.proxy.exit_task(&arn, 2).await.expect("exit_task");

    let out = stack
        .ecs
        .stop_task()
        .cluster(&stack.seed().cluster)
        .task(&arn)
        .reason("too late")
        .send()
        .await
        .expect("StopTask of a stopped task");

    let task = out.task().expect("task");
    assert_eq!(
        task.stop_code(),
        Some(&TaskStopCode::EssentialContainerExited)
    );
    assert_eq!(
        task.stopped_reason(),
        Some("Essential container in task exited")
    );
    assert_eq!(task.containers()[0].exit_code(), Some(2));
}

#[tokio::test]
async fn a_stopping_phase_shows_aws_states_before_stopped() {
    let stack = Stack::start().await;
    let arn = stack.launch().await;
    stack.proxy.set_stopping_polls(2);

    let out = stack
        .ecs
        .stop_task()
        .cluster(&stack.seed().cluster)
        .task(&arn)
        .send()
        .await
        .expect("StopTask");
    assert_eq!(out.task().and_then(Task::last_status), Some("RUNNING"));

    let mut seen = Vec::new();
    for _ in 0..3 {
        let task = stack.describe_one(&arn).await;
        assert_eq!(task.desired_status(), Some("STOPPED"));
        seen.push(task.last_status().unwrap_or_default().to_owned());
    }
    assert_eq!(seen, ["DEACTIVATING", "STOPPING", "STOPPED"]);
}

#[tokio::test]
async fn list_tasks_defaults_to_running_tasks() {
    let stack = Stack::start().await;
    let running = stack.launch().await;
    let exited = stack.launch().await;
    stack.proxy.exit_task(&exited, 0).await.expect("exit_task");

    assert_eq!(stack.list(None).await, vec![running]);
    assert_eq!(stack.list(Some(DesiredStatus::Stopped)).await, vec![exited]);
    assert_eq!(
        stack
            .proxy
            .last_request("ListTasks")
            .map(|r| r.get("desiredStatus").cloned()),
        Some(Some(json!("STOPPED")))
    );
}

#[tokio::test]
async fn list_tasks_pages_with_max_results_and_next_token() {
    let stack = Stack::start().await;
    let launched = stack
        .run_task()
        .count(5)
        .send()
        .await
        .expect("RunTask count 5");
    let mut expected: Vec<String> = launched.tasks().iter().map(arn_of).collect();
    expected.sort();

    let mut pages = Vec::new();
    let mut token = None;
    loop {
        let out = stack
            .ecs
            .list_tasks()
            .cluster(&stack.seed().cluster)
            .max_results(2)
            .set_next_token(token)
            .send()
            .await
            .expect("ListTasks page");
        pages.push(out.task_arns().to_vec());
        token = out.next_token().map(str::to_owned);
        if token.is_none() || pages.len() > 5 {
            break;
        }
    }

    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
    let mut all: Vec<String> = pages.concat();
    all.sort();
    assert_eq!(all, expected);
    let err = stack
        .ecs
        .list_tasks()
        .cluster(&stack.seed().cluster)
        .next_token("not-a-token")
        .send()
        .await
        .expect_err("foreign token");
    assert_eq!(err.code(), Some("InvalidParameterException"));
}

#[tokio::test]
async fn a_new_task_is_missing_for_the_configured_number_of_polls() {
    let stack = Stack::start().await;
    stack.proxy.set_missing_after_launch(2);
    let arn = stack.launch().await;

    for poll in 1..=2 {
        let out = stack.describe(&[&arn]).await;
        assert_eq!(out.tasks(), &[], "poll {poll}");
        assert_eq!(out.failures()[0].reason(), Some("MISSING"), "poll {poll}");
    }
    let task = stack.describe_one(&arn).await;
    assert_eq!(task.last_status(), Some("RUNNING"));
}

#[tokio::test]
async fn an_injected_throttle_reaches_the_sdk_as_throttling_exception_and_is_counted() {
    let stack = Stack::start().await;
    let arn = stack.launch().await;
    stack.proxy.reset_counts();
    stack
        .proxy
        .inject(Some("DescribeTasks"), Fault::Throttle, 1);

    let err = stack
        .ecs
        .describe_tasks()
        .cluster(&stack.seed().cluster)
        .tasks(&arn)
        .send()
        .await
        .expect_err("throttled");
    assert_eq!(err.code(), Some("ThrottlingException"), "{err:?}");
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(400));

    // The fault is used up: the next call goes through.
    stack.describe_one(&arn).await;
    assert_eq!(stack.proxy.calls("DescribeTasks"), 2);
    assert_eq!(
        stack.proxy.all_calls().into_iter().collect::<Vec<_>>(),
        [("DescribeTasks".to_owned(), 2)]
    );
}

#[tokio::test]
async fn injected_server_faults_have_the_aws_status_and_code() {
    let stack = Stack::start().await;
    stack.proxy.inject(None, Fault::ServerError, 1);
    stack.proxy.inject(None, Fault::ServiceUnavailable, 1);

    let first = stack.ecs.list_tasks().send().await.expect_err("500");
    assert_eq!(first.code(), Some("ServerException"));
    assert_eq!(first.raw_response().map(|r| r.status().as_u16()), Some(500));
    let second = stack.ecs.list_clusters().send().await.expect_err("503");
    assert_eq!(
        second.raw_response().map(|r| r.status().as_u16()),
        Some(503)
    );

    stack
        .ecs
        .list_clusters()
        .send()
        .await
        .expect("faults used up");
    stack.proxy.inject(None, Fault::Throttle, 5);
    stack.proxy.clear_faults();
    stack
        .ecs
        .list_clusters()
        .send()
        .await
        .expect("faults cleared");
}

#[tokio::test]
async fn a_dropped_connection_is_a_dispatch_failure() {
    let stack = Stack::start().await;
    stack
        .proxy
        .inject(Some("ListTasks"), Fault::DropConnection, 1);

    let err = stack
        .ecs
        .list_tasks()
        .cluster(&stack.seed().cluster)
        .send()
        .await
        .expect_err("dropped");

    assert!(matches!(err, SdkError::DispatchFailure(_)), "{err:?}");
    assert_eq!(stack.proxy.calls("ListTasks"), 1);
    stack.list(None).await;
}

#[tokio::test]
async fn latency_beyond_the_attempt_timeout_times_the_call_out() {
    let stack = Stack::start().await;
    let impatient = client_for(&stack.proxy.endpoint(), Some(Duration::from_millis(300)));
    stack.proxy.inject(
        Some("ListClusters"),
        Fault::Latency(Duration::from_secs(5)),
        1,
    );

    let err = impatient.list_clusters().send().await.expect_err("slow");

    assert!(matches!(err, SdkError::TimeoutError(_)), "{err:?}");
    impatient
        .list_clusters()
        .send()
        .await
        .expect("no more latency");
}

#[tokio::test]
async fn list_tags_of_a_task_without_tags_is_an_empty_list() {
    let stack = Stack::start().await;
    let arn = stack.launch().await;

    let (status, _, body) = raw_ecs(
        &stack.proxy,
        "ListTagsForResource",
        json!({ "resourceArn": arn }).to_string().as_bytes(),
    )
    .await;

    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(body["tags"], json!([]));
}

#[tokio::test]
async fn tagging_a_task_passes_through_and_an_unknown_task_is_invalid_parameter() {
    let stack = Stack::start().await;
    let arn = stack.launch().await;
    stack
        .ecs
        .tag_resource()
        .resource_arn(&arn)
        .tags(Tag::builder().key("k").value("v").build())
        .send()
        .await
        .expect("TagResource");
    let tags = stack
        .ecs
        .list_tags_for_resource()
        .resource_arn(&arn)
        .send()
        .await
        .expect("ListTagsForResource");
    assert_eq!(tags.tags().len(), 1);
    assert_eq!(tags.tags()[0].value(), Some("v"));

    let err = stack
        .ecs
        .tag_resource()
        .resource_arn("arn:aws:ecs:us-east-1:123456789012:task/nomad/nope")
        .tags(Tag::builder().key("k").value("v").build())
        .send()
        .await
        .expect_err("unknown task");
    assert_eq!(err.code(), Some("InvalidParameterException"), "{err:?}");
}

#[tokio::test]
async fn a_body_that_is_not_json_is_a_serialization_exception_and_still_counted() {
    let stack = Stack::start().await;

    let (status, headers, body) = raw_ecs(&stack.proxy, "DescribeTasks", b"{not json").await;

    assert_eq!(status, 400, "{body}");
    assert_eq!(
        header(&headers, "x-amzn-errortype"),
        Some("SerializationException")
    );
    let body: Value = serde_json::from_str(&body).expect("awsJson error body");
    assert_eq!(body["__type"], "SerializationException");
    assert_eq!(stack.proxy.calls("DescribeTasks"), 1);
    assert_eq!(stack.proxy.last_request("DescribeTasks"), None);
    let (status, _, _) = raw_ecs(&stack.proxy, "DescribeTasks", br#"{"tasks": "x"}"#).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn requests_for_other_apis_pass_through_unchanged() {
    let stack = Stack::start().await;
    let path = "/moto-api/state-manager/get-transition?model_name=ecs::task";

    let (status, _, body) = raw_http(&stack.proxy, "GET", path, &[], b"").await;
    let (direct_status, direct_body) = stack.emu.http_get(path).expect("direct GET");

    assert_eq!((status, direct_status), (200, 200));
    let via: Value = serde_json::from_str(&body).expect("JSON via proxy");
    let direct: Value = serde_json::from_str(&direct_body).expect("JSON direct");
    assert_eq!(via, direct);
    assert_eq!(stack.proxy.all_calls().len(), 0, "not an ECS call");
}

#[tokio::test]
async fn dropping_the_proxy_closes_its_port() {
    let stack = Stack::start().await;
    let addr = stack.proxy.local_addr();
    assert_eq!(
        stack.proxy.endpoint(),
        format!("http://127.0.0.1:{}", addr.port())
    );
    assert!(addr.ip().is_loopback());
    let Stack { proxy, emu, .. } = stack;

    drop(proxy);

    // The server task closes the listener the next time the runtime polls
    // it; a connect that raced it may land in the old backlog (Ok or reset).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let refused = loop {
        match tokio::net::TcpStream::connect(addr).await {
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => break true,
            _ if tokio::time::Instant::now() >= deadline => break false,
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    assert!(refused, "the proxy still listens on {addr} after the drop");
    drop(emu);
}
