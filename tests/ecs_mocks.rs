//! SDK-level tests of the `Ecs` wrapper with aws-smithy-mocks: the answers
//! the ECS emulator cannot be made to give (throttling, rejected credentials,
//! HTTP 500, placement failures, MISSING tasks and clusters), each pushed
//! through the real SDK client (serialization, retries, deserialization) so
//! that what is asserted is what the driver would see from AWS.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_sdk_ecs::Client;
use aws_sdk_ecs::config::retry::{RetryConfig, RetryPartition};
use aws_sdk_ecs::operation::describe_clusters::DescribeClustersOutput;
use aws_sdk_ecs::operation::describe_tasks::DescribeTasksOutput;
use aws_sdk_ecs::operation::run_task::RunTaskOutput;
use aws_sdk_ecs::types::{Cluster, Failure, Task};
use aws_smithy_async::test_util::{InstantSleep, instant_time_and_sleep};
use aws_smithy_mocks::{Rule, RuleMode, mock, mock_client};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::http::StatusCode;
use aws_smithy_types::body::SdkBody;
use nomad_driver_ecs::ecs::{ClusterState, Ecs, EcsError, RunOutcome, RunSpec, StopOutcome};

const CLUSTER: &str = "nomad";

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

/// An `Ecs` whose SDK client answers from `rules`, plus the sleep the SDK's
/// retry loop used (instant, but every requested delay is logged).
struct MockEcs {
    ecs: Ecs,
    sleeps: InstantSleep,
}

impl MockEcs {
    /// One attempt per call: what a call maps to once the SDK gives up.
    fn without_retries(mode: RuleMode, rules: &[&Rule]) -> Self {
        Self::with_retry_config(mode, rules, RetryConfig::disabled())
    }

    /// The retry configuration `Ecs::connect` gives the production client
    /// (adaptive, 4 attempts, 200 ms initial backoff, 5 s cap).
    fn with_production_retries(mode: RuleMode, rules: &[&Rule]) -> Self {
        Self::with_retry_config(mode, rules, nomad_driver_ecs::ecs::retry_config())
    }

    fn with_retry_config(mode: RuleMode, rules: &[&Rule], retry: RetryConfig) -> Self {
        // The SDK keeps the adaptive rate limiter and the retry quota in
        // process-wide state keyed by retry partition: one partition per
        // client keeps parallel tests from throttling each other.
        static CLIENTS: AtomicUsize = AtomicUsize::new(0);
        let partition = RetryPartition::new(format!(
            "ecs-mocks-{}",
            CLIENTS.fetch_add(1, Ordering::Relaxed)
        ));
        // Sleeps end at once and move the clock the rate limiter reads, so
        // backoff costs no wall time and the limiter still sees time pass.
        let (clock, sleeps) =
            instant_time_and_sleep(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        let sleep = sleeps.clone();
        let client = mock_client!(aws_sdk_ecs, mode, rules, move |conf| {
            conf.retry_config(retry.clone())
                .retry_partition(partition.clone())
                .time_source(clock.clone())
                .sleep_impl(sleep.clone())
        });
        Self {
            ecs: Ecs::from_client(client, "us-east-1", "https://ecs.mock", 1.0),
            sleeps,
        }
    }

    /// SDK calls the wrapper made for `operation` (attempts not counted).
    fn calls(&self, operation: &str) -> u64 {
        self.ecs
            .calls()
            .snapshot()
            .get(operation)
            .copied()
            .unwrap_or(0)
    }
}

/// An AWS JSON 1.1 error response, as ECS sends it.
fn aws_error(status: u16, code: &str, message: &str) -> HttpResponse {
    let body = format!(r#"{{"__type":"{code}","message":"{message}"}}"#);
    let mut resp = HttpResponse::new(
        StatusCode::try_from(status).expect("valid status"),
        SdkBody::from(body),
    );
    resp.headers_mut()
        .insert("content-type", "application/x-amz-json-1.1");
    resp
}

fn throttled() -> HttpResponse {
    aws_error(400, "ThrottlingException", "Rate exceeded")
}

fn task_arn(id: usize) -> String {
    format!("arn:aws:ecs:us-east-1:123456789012:task/{CLUSTER}/{id:032x}")
}

fn running(arn: &str) -> Task {
    Task::builder()
        .task_arn(arn)
        .last_status("RUNNING")
        .desired_status("RUNNING")
        .build()
}

fn cluster(status: &str) -> Cluster {
    Cluster::builder()
        .cluster_name(CLUSTER)
        .cluster_arn(format!(
            "arn:aws:ecs:us-east-1:123456789012:cluster/{CLUSTER}"
        ))
        .status(status)
        .build()
}

fn run_spec() -> RunSpec {
    RunSpec {
        cluster: CLUSTER.into(),
        task_definition: "web:3".into(),
        launch_type: None,
        vpc: None,
        client_token: "alloc-1-server-1".into(),
        started_by: "nomad-55653d9540c2d2086e1c6d43".into(),
        tags: vec![("nomad:driver".into(), "nomad-driver-ecs".into())],
    }
}

/// DescribeClusters answering `resp`, once, without retries.
async fn describe_cluster_answering(resp: fn() -> HttpResponse) -> Result<ClusterState, EcsError> {
    let rule = mock!(Client::describe_clusters).then_http_response(resp);
    let mock = MockEcs::without_retries(RuleMode::Sequential, &[&rule]);
    let result = mock.ecs.describe_cluster(CLUSTER).await;
    assert_eq!(rule.num_calls(), 1, "one attempt");
    result
}

// ---------------------------------------------------------------------------
// Error mapping
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_throttling_exception_is_throttled_and_retryable() {
    let err = describe_cluster_answering(throttled).await.unwrap_err();
    assert!(
        matches!(&err, EcsError::Throttled { operation: "DescribeClusters", message } if message == "Rate exceeded"),
        "{err:?}"
    );
    assert!(err.is_retryable());
}

#[tokio::test]
async fn access_denied_is_access_denied_and_not_retryable() {
    let err = describe_cluster_answering(|| {
        aws_error(
            400,
            "AccessDeniedException",
            "User is not authorized to perform: ecs:DescribeClusters",
        )
    })
    .await
    .unwrap_err();
    assert!(
        matches!(&err, EcsError::AccessDenied { operation: "DescribeClusters", code, .. } if code == "AccessDeniedException"),
        "{err:?}"
    );
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn an_unrecognized_client_is_bad_credentials() {
    let err = describe_cluster_answering(|| {
        aws_error(
            400,
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        )
    })
    .await
    .unwrap_err();
    assert!(
        matches!(&err, EcsError::BadCredentials { code, .. } if code == "UnrecognizedClientException"),
        "{err:?}"
    );
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn an_expired_token_is_bad_credentials() {
    let err = describe_cluster_answering(|| {
        aws_error(
            400,
            "ExpiredTokenException",
            "The security token included in the request is expired",
        )
    })
    .await
    .unwrap_err();
    assert!(
        matches!(&err, EcsError::BadCredentials { code, .. } if code == "ExpiredTokenException"),
        "{err:?}"
    );
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn cluster_not_found_is_a_service_error_carrying_its_code() {
    let err = describe_cluster_answering(|| {
        aws_error(400, "ClusterNotFoundException", "Cluster not found.")
    })
    .await
    .unwrap_err();
    assert!(
        matches!(&err, EcsError::Service { operation: "DescribeClusters", code, status: Some(400), .. } if code == "ClusterNotFoundException"),
        "{err:?}"
    );
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn an_http_500_server_exception_is_a_retryable_service_error() {
    let rule = mock!(Client::describe_tasks)
        .then_http_response(|| aws_error(500, "ServerException", "Service unavailable"));
    let mock = MockEcs::without_retries(RuleMode::Sequential, &[&rule]);
    let err = mock
        .ecs
        .describe_tasks(CLUSTER, &[task_arn(1)])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, EcsError::Service { operation: "DescribeTasks", code, status: Some(500), .. } if code == "ServerException"),
        "{err:?}"
    );
    assert!(err.is_retryable());
}

#[tokio::test]
async fn a_client_exception_on_run_task_is_not_retryable() {
    let rule = mock!(Client::run_task).then_http_response(|| {
        aws_error(400, "ClientException", "TaskDefinition not found: web:3")
    });
    let mock = MockEcs::without_retries(RuleMode::Sequential, &[&rule]);
    let err = mock.ecs.run_task(&run_spec()).await.unwrap_err();
    assert!(
        matches!(&err, EcsError::Service { operation: "RunTask", code, status: Some(400), .. } if code == "ClientException"),
        "{err:?}"
    );
    assert!(!err.is_retryable());
}

// ---------------------------------------------------------------------------
// Retries (the production retry configuration)
// ---------------------------------------------------------------------------

#[tokio::test]
async fn two_throttles_are_retried_and_the_third_attempt_succeeds() {
    let rule = mock!(Client::describe_clusters)
        .sequence()
        .http_response(throttled)
        .times(2)
        .output(|| {
            DescribeClustersOutput::builder()
                .clusters(cluster("ACTIVE"))
                .build()
        })
        .build();
    let mock = MockEcs::with_production_retries(RuleMode::Sequential, &[&rule]);

    let state = mock
        .ecs
        .describe_cluster(CLUSTER)
        .await
        .expect("retried to success");

    assert!(matches!(state, ClusterState::Active { .. }), "{state:?}");
    assert_eq!(rule.num_calls(), 3, "attempts the mock answered");
    assert_eq!(
        mock.calls("DescribeClusters"),
        1,
        "one call, three attempts"
    );
}

#[tokio::test]
async fn under_adaptive_retries_each_throttled_retry_waits_the_full_max_backoff() {
    // Adaptive mode charges a throttled retry 10 tokens of a client-side
    // bucket whose capacity is max(rate, 1), so at this driver's call rates
    // the delay is always clipped to max_backoff: the 200 ms initial backoff
    // never applies to throttles. If an SDK upgrade changes this, the retry
    // budget in `Ecs::connect` needs a second look.
    let rule = mock!(Client::describe_clusters)
        .sequence()
        .http_response(throttled)
        .times(2)
        .output(|| {
            DescribeClustersOutput::builder()
                .clusters(cluster("ACTIVE"))
                .build()
        })
        .build();
    let mock = MockEcs::with_production_retries(RuleMode::Sequential, &[&rule]);

    mock.ecs
        .describe_cluster(CLUSTER)
        .await
        .expect("retried to success");

    // The log also holds timers the SDK arms that are not retry delays.
    let sleeps = mock.sleeps.logs();
    let full_backoffs = sleeps
        .iter()
        .filter(|d| **d == Duration::from_secs(5))
        .count();
    assert_eq!(full_backoffs, 2, "{sleeps:?}");
    assert!(
        sleeps.iter().all(|d| *d <= Duration::from_secs(5)),
        "{sleeps:?}"
    );
}

#[tokio::test]
async fn throttling_that_outlasts_four_attempts_ends_as_throttled() {
    let rule = mock!(Client::describe_clusters)
        .sequence()
        .http_response(throttled)
        .repeatedly()
        .build();
    let mock = MockEcs::with_production_retries(RuleMode::Sequential, &[&rule]);

    let err = mock.ecs.describe_cluster(CLUSTER).await.unwrap_err();

    assert!(matches!(err, EcsError::Throttled { .. }), "{err:?}");
    assert!(err.is_retryable(), "the reconciler may try again next pass");
    assert_eq!(rule.num_calls(), 4, "max attempts, then no more");
    assert_eq!(mock.calls("DescribeClusters"), 1);
    // Every delay the SDK asked for, retry or not, fits inside the 30 s
    // operation timeout of `Ecs::connect`: the caller sees Throttled, which
    // it can classify, rather than a Timeout.
    let waited = mock.sleeps.total_duration();
    assert!(waited < Duration::from_secs(30), "{waited:?}");
}

#[tokio::test]
async fn a_client_exception_is_not_retried_by_the_sdk() {
    let rule = mock!(Client::run_task)
        .sequence()
        .http_response(|| aws_error(400, "ClientException", "bad task definition"))
        .repeatedly()
        .build();
    let mock = MockEcs::with_production_retries(RuleMode::Sequential, &[&rule]);

    let err = mock.ecs.run_task(&run_spec()).await.unwrap_err();

    assert!(!err.is_retryable(), "{err:?}");
    assert_eq!(rule.num_calls(), 1, "no second attempt");
}

// ---------------------------------------------------------------------------
// RunTask
// ---------------------------------------------------------------------------

#[tokio::test]
async fn run_task_answering_only_failures_is_a_failed_outcome_with_the_reason() {
    let rule = mock!(Client::run_task).then_output(|| {
        RunTaskOutput::builder()
            .failures(Failure::builder().reason("RESOURCE:MEMORY").build())
            .build()
    });
    let mock = MockEcs::without_retries(RuleMode::Sequential, &[&rule]);

    let outcome = mock
        .ecs
        .run_task(&run_spec())
        .await
        .expect("a placement failure is an answer");

    assert_eq!(outcome, RunOutcome::Failed(vec!["RESOURCE:MEMORY".into()]));
}

#[tokio::test]
async fn run_task_answering_a_task_is_started_with_its_arn() {
    let spec = run_spec();
    let token = spec.client_token.clone();
    let started_by = spec.started_by.clone();
    let rule = mock!(Client::run_task)
        // The idempotency token and the slot digest must reach ECS as stored.
        .match_requests(move |req| {
            req.client_token() == Some(token.as_str())
                && req.started_by() == Some(started_by.as_str())
                && req.count() == Some(1)
        })
        .then_output(|| {
            RunTaskOutput::builder()
                .tasks(
                    Task::builder()
                        .task_arn(task_arn(7))
                        .last_status("PROVISIONING")
                        .desired_status("RUNNING")
                        .build(),
                )
                .build()
        });
    let mock = MockEcs::without_retries(RuleMode::Sequential, &[&rule]);

    let outcome = mock.ecs.run_task(&spec).await.expect("started");

    let RunOutcome::Started(task) = outcome else {
        panic!("expected Started, got {outcome:?}");
    };
    assert_eq!(task.arn, task_arn(7));
    assert_eq!(task.last_status, "PROVISIONING");
}

// ---------------------------------------------------------------------------
// DescribeTasks
// ---------------------------------------------------------------------------

#[tokio::test]
async fn arns_reported_missing_or_left_out_of_the_answer_are_returned_as_missing() {
    let rule = mock!(Client::describe_tasks).then_output(|| {
        DescribeTasksOutput::builder()
            .tasks(running(&task_arn(1)))
            .failures(
                Failure::builder()
                    .arn(task_arn(2))
                    .reason("MISSING")
                    .build(),
            )
            // task 3: neither a task nor a failure.
            .build()
    });
    let mock = MockEcs::without_retries(RuleMode::Sequential, &[&rule]);

    let (found, missing) = mock
        .ecs
        .describe_tasks(CLUSTER, &[task_arn(1), task_arn(2), task_arn(3)])
        .await
        .expect("described");

    assert_eq!(
        found.iter().map(|t| t.arn.as_str()).collect::<Vec<_>>(),
        [task_arn(1)]
    );
    assert_eq!(missing, [task_arn(2), task_arn(3)]);
}

#[tokio::test]
async fn two_hundred_and_fifty_arns_are_described_in_exactly_three_calls() {
    let batches = Arc::new(Mutex::new(Vec::new()));
    let seen = batches.clone();
    let rule = mock!(Client::describe_tasks).then_compute_output(move |req| {
        seen.lock().expect("lock").push(req.tasks().len());
        DescribeTasksOutput::builder()
            .set_tasks(Some(req.tasks().iter().map(|arn| running(arn)).collect()))
            .build()
    });
    let mock = MockEcs::without_retries(RuleMode::MatchAny, &[&rule]);
    let arns: Vec<String> = (0..250).map(task_arn).collect();

    let (found, missing) = mock
        .ecs
        .describe_tasks(CLUSTER, &arns)
        .await
        .expect("described");

    assert_eq!(mock.calls("DescribeTasks"), 3);
    assert_eq!(rule.num_calls(), 3);
    assert_eq!(*batches.lock().expect("lock"), [100, 100, 50]);
    assert_eq!(found.len(), 250);
    assert!(missing.is_empty(), "{missing:?}");
}

// ---------------------------------------------------------------------------
// StopTask
// ---------------------------------------------------------------------------

#[tokio::test]
async fn stop_task_on_a_task_ecs_no_longer_knows_is_not_found() {
    let stop = mock!(Client::stop_task).then_http_response(|| {
        aws_error(
            400,
            "InvalidParameterException",
            "The referenced task was not found.",
        )
    });
    let describe = mock!(Client::describe_tasks)
        .match_requests(|req| req.tasks() == [task_arn(9)])
        .then_output(|| {
            DescribeTasksOutput::builder()
                .failures(
                    Failure::builder()
                        .arn(task_arn(9))
                        .reason("MISSING")
                        .build(),
                )
                .build()
        });
    let mock = MockEcs::without_retries(RuleMode::Sequential, &[&stop, &describe]);

    let outcome = mock
        .ecs
        .stop_task(CLUSTER, &task_arn(9), "stopped by Nomad")
        .await
        .expect("an unknown task is not an error");

    assert_eq!(outcome, StopOutcome::NotFound);
    assert_eq!(describe.num_calls(), 1, "confirmed through DescribeTasks");
}

#[tokio::test]
async fn stop_task_invalid_parameter_on_a_task_that_still_exists_stays_an_error() {
    let stop = mock!(Client::stop_task)
        .then_http_response(|| aws_error(400, "InvalidParameterException", "reason is too long"));
    let describe = mock!(Client::describe_tasks).then_output(|| {
        DescribeTasksOutput::builder()
            .tasks(running(&task_arn(9)))
            .build()
    });
    let mock = MockEcs::without_retries(RuleMode::Sequential, &[&stop, &describe]);

    let err = mock
        .ecs
        .stop_task(CLUSTER, &task_arn(9), "stopped by Nomad")
        .await
        .unwrap_err();

    assert!(
        matches!(&err, EcsError::Service { operation: "StopTask", code, .. } if code == "InvalidParameterException"),
        "{err:?}"
    );
}

// ---------------------------------------------------------------------------
// DescribeClusters
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_cluster_reported_missing_is_missing() {
    let rule = mock!(Client::describe_clusters).then_output(|| {
        DescribeClustersOutput::builder()
            .failures(
                Failure::builder()
                    .arn(format!(
                        "arn:aws:ecs:us-east-1:123456789012:cluster/{CLUSTER}"
                    ))
                    .reason("MISSING")
                    .build(),
            )
            .build()
    });
    let mock = MockEcs::without_retries(RuleMode::Sequential, &[&rule]);

    assert_eq!(
        mock.ecs.describe_cluster(CLUSTER).await.expect("answered"),
        ClusterState::Missing
    );
}

#[tokio::test]
async fn an_inactive_cluster_is_not_active_with_its_status() {
    let rule = mock!(Client::describe_clusters).then_output(|| {
        DescribeClustersOutput::builder()
            .clusters(cluster("INACTIVE"))
            .build()
    });
    let mock = MockEcs::without_retries(RuleMode::Sequential, &[&rule]);

    assert_eq!(
        mock.ecs.describe_cluster(CLUSTER).await.expect("answered"),
        ClusterState::NotActive {
            status: "INACTIVE".into()
        }
    );
}

#[tokio::test]
async fn an_active_cluster_is_active_with_its_arn() {
    let rule = mock!(Client::describe_clusters).then_output(|| {
        DescribeClustersOutput::builder()
            .clusters(cluster("ACTIVE"))
            .build()
    });
    let mock = MockEcs::without_retries(RuleMode::Sequential, &[&rule]);

    assert_eq!(
        mock.ecs.describe_cluster(CLUSTER).await.expect("answered"),
        ClusterState::Active {
            arn: format!("arn:aws:ecs:us-east-1:123456789012:cluster/{CLUSTER}")
        }
    );
}
