//! ECS access: the aws-sdk client (standard credential chain, endpoint
//! override, rustls with ring, adaptive retries, a client-side token bucket
//! per API category), the few operations the driver needs, and the errors
//! every ECS call maps to, by type, never by matching message text.

pub mod budget;
pub mod model;

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_ecs::error::{ProvideErrorMetadata, SdkError};
use thiserror::Error;

use crate::config::Settings;
use budget::{Budget, Category};
pub use model::{CallCounts, ContainerState, EcsTask, RunOutcome, RunSpec, StopOutcome};

/// Where and how to reach ECS.
#[derive(Clone, Debug)]
pub struct Ecs {
    client: aws_sdk_ecs::Client,
    region: String,
    endpoint: String,
    budget: std::sync::Arc<Budget>,
    calls: std::sync::Arc<CallCounts>,
}

/// A failed ECS call, classified by what an operator or a retry can do.
#[derive(Debug, Error)]
pub enum EcsError {
    /// No region in the config, the environment or the profile.
    #[error("no AWS region: set `region` in the plugin block, NOMAD_ECS_REGION or AWS_REGION")]
    NoRegion,
    /// Connecting failed (refused, DNS, TLS).
    #[error("cannot reach the ECS endpoint {endpoint}: {cause}")]
    Unreachable {
        /// The endpoint we tried.
        endpoint: String,
        /// The transport's explanation.
        cause: String,
    },
    /// The call did not finish in time.
    #[error("ECS {operation} timed out (endpoint {endpoint})")]
    Timeout {
        /// The API.
        operation: &'static str,
        /// The endpoint we tried.
        endpoint: String,
    },
    /// The credential chain produced nothing usable.
    #[error("no usable AWS credentials: {cause}")]
    NoCredentials {
        /// The provider chain's explanation.
        cause: String,
    },
    /// AWS rejected the credentials.
    #[error("AWS rejected the credentials ({code}): {message}")]
    BadCredentials {
        /// The AWS error code.
        code: String,
        /// The AWS message.
        message: String,
    },
    /// The credentials are valid but lack a permission.
    #[error("not allowed to call ECS {operation} ({code}): {message}")]
    AccessDenied {
        /// The API.
        operation: &'static str,
        /// The AWS error code.
        code: String,
        /// The AWS message.
        message: String,
    },
    /// ECS throttled us after the SDK's retries.
    #[error("ECS throttled {operation}: {message}")]
    Throttled {
        /// The API.
        operation: &'static str,
        /// The AWS message.
        message: String,
    },
    /// Any other error ECS returned.
    #[error("ECS {operation} failed ({code}): {message}")]
    Service {
        /// The API.
        operation: &'static str,
        /// The AWS error code.
        code: String,
        /// The AWS message.
        message: String,
        /// HTTP status, when a response arrived.
        status: Option<u16>,
    },
    /// A response that could not be parsed (for example an HTML error page).
    #[error("ECS {operation} returned an unreadable response{}: {cause}", status.map(|s| format!(" (HTTP {s})")).unwrap_or_default())]
    BadResponse {
        /// The API.
        operation: &'static str,
        /// HTTP status.
        status: Option<u16>,
        /// The parser's explanation.
        cause: String,
    },
}

impl EcsError {
    /// Whether trying again later may succeed without anyone changing anything.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Unreachable { .. }
            | Self::Timeout { .. }
            | Self::Throttled { .. }
            | Self::BadResponse { .. } => true,
            Self::Service { status, .. } => status.is_some_and(|s| s >= 500),
            Self::NoRegion
            | Self::NoCredentials { .. }
            | Self::BadCredentials { .. }
            | Self::AccessDenied { .. } => false,
        }
    }
}

/// What DescribeClusters says about our cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterState {
    /// ACTIVE, with its ARN.
    Active {
        /// The cluster ARN.
        arn: String,
    },
    /// Reported in `failures` (reason MISSING) or not returned at all.
    Missing,
    /// Any status but ACTIVE (PROVISIONING, DEPROVISIONING, FAILED, INACTIVE).
    NotActive {
        /// The status ECS reported.
        status: String,
    },
}

impl Ecs {
    /// Build a client for `settings`: region from the config or the SDK's
    /// chain, endpoint override from the config (the SDK also honours
    /// `AWS_ENDPOINT_URL_ECS`), bounded timeouts and the standard retry mode.
    ///
    /// # Errors
    /// [`EcsError::NoRegion`] when no region can be found.
    pub async fn connect(settings: &Settings) -> Result<Self, EcsError> {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_attempt_timeout(Duration::from_secs(10))
                    .operation_timeout(Duration::from_secs(30))
                    .build(),
            )
            .retry_config(retry_config());
        if let Some(region) = &settings.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        let shared = loader.load().await;
        let region = shared
            .region()
            .map(ToString::to_string)
            .ok_or(EcsError::NoRegion)?;
        let mut conf = aws_sdk_ecs::config::Builder::from(&shared)
            .interceptor(crate::telemetry::ecs_interceptor());
        if let Some(endpoint) = &settings.endpoint {
            conf = conf.endpoint_url(endpoint);
        }
        let endpoint = settings
            .endpoint
            .clone()
            .or_else(|| shared.endpoint_url().map(ToString::to_string))
            .or_else(|| {
                std::env::var("AWS_ENDPOINT_URL_ECS")
                    .ok()
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or_else(|| format!("https://ecs.{region}.amazonaws.com"));
        Ok(Self::from_client(
            aws_sdk_ecs::Client::from_conf(conf.build()),
            &region,
            &endpoint,
            settings.api_budget,
        ))
    }

    /// Wrap an SDK client built elsewhere (tests: aws-smithy-mocks clients).
    pub fn from_client(
        client: aws_sdk_ecs::Client,
        region: &str,
        endpoint: &str,
        api_budget: f64,
    ) -> Self {
        Self {
            client,
            region: region.to_string(),
            endpoint: endpoint.to_string(),
            budget: std::sync::Arc::new(Budget::new(api_budget)),
            calls: std::sync::Arc::default(),
        }
    }

    /// The region calls go to.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The endpoint calls go to (for messages).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The SDK client.
    pub fn client(&self) -> &aws_sdk_ecs::Client {
        &self.client
    }

    /// Calls made so far, per operation.
    pub fn calls(&self) -> &CallCounts {
        &self.calls
    }

    /// The read bucket's sustained rate (calls per second), for pacing passes.
    pub fn read_rate(&self) -> f64 {
        self.budget.bucket(Category::ResourceRead).rate()
    }

    async fn admit(&self, category: Category, operation: &'static str) {
        let waited = self.budget.bucket(category).acquire().await;
        self.calls.count(operation);
        crate::telemetry::record_ecs_call(operation, waited);
        if waited > Duration::from_millis(100) {
            tracing::debug!(
                operation,
                waited_ms = waited.as_millis() as u64,
                "token bucket wait"
            );
        }
    }

    /// RunTask for one task, idempotent through the spec's client token.
    ///
    /// # Errors
    /// [`EcsError`] when the call fails; placement failures are an
    /// `Ok(RunOutcome::Failed)`.
    #[tracing::instrument(skip_all, fields(otel.name = "ECS.RunTask", otel.kind = "client", rpc.system = "aws-api", rpc.service = "ECS", cloud.region = %self.region, rpc.method = "RunTask", aws.ecs.cluster = %spec.cluster, aws.ecs.task.arn))]
    pub async fn run_task(&self, spec: &RunSpec) -> Result<RunOutcome, EcsError> {
        use aws_sdk_ecs::types::{
            AssignPublicIp, AwsVpcConfiguration, LaunchType, NetworkConfiguration, Tag,
        };
        self.admit(Category::ResourceModify, "RunTask").await;
        let mut req = self
            .client
            .run_task()
            .cluster(&spec.cluster)
            .task_definition(&spec.task_definition)
            .count(1)
            .client_token(&spec.client_token)
            .started_by(&spec.started_by);
        if let Some(lt) = spec.launch_type {
            req = req.launch_type(LaunchType::from(lt.as_str()));
        }
        if let Some(vpc) = &spec.vpc {
            let mut v = AwsVpcConfiguration::builder().set_subnets(Some(vpc.subnets.clone()));
            if !vpc.security_groups.is_empty() {
                v = v.set_security_groups(Some(vpc.security_groups.clone()));
            }
            if let Some(p) = vpc.assign_public_ip {
                v = v.assign_public_ip(if p {
                    AssignPublicIp::Enabled
                } else {
                    AssignPublicIp::Disabled
                });
            }
            let v = v.build().map_err(|e| EcsError::Service {
                operation: "RunTask",
                code: "ClientValidation".into(),
                message: e.to_string(),
                status: None,
            })?;
            req = req.network_configuration(
                NetworkConfiguration::builder()
                    .awsvpc_configuration(v)
                    .build(),
            );
        }
        for (k, v) in &spec.tags {
            req = req.tags(Tag::builder().key(k).value(v).build());
        }
        let out = req.send().await.map_err(|e| self.classify("RunTask", e))?;
        if let Some(task) = out.tasks().first() {
            tracing::Span::current().record("aws.ecs.task.arn", task.task_arn().unwrap_or(""));
            return Ok(RunOutcome::Started(model::task_from_sdk(task)));
        }
        let reasons = out
            .failures()
            .iter()
            .map(|f| {
                let mut s = f.reason().unwrap_or("unknown reason").to_string();
                if let Some(d) = f.detail() {
                    s.push_str(": ");
                    s.push_str(d);
                }
                s
            })
            .collect::<Vec<_>>();
        Ok(RunOutcome::Failed(if reasons.is_empty() {
            vec!["ECS returned neither a task nor a failure".into()]
        } else {
            reasons
        }))
    }

    /// DescribeTasks with tags, 100 ARNs a call. Returns the tasks found and
    /// the ARNs ECS reported MISSING (or did not return).
    ///
    /// # Errors
    /// [`EcsError`] for the first failing batch.
    #[tracing::instrument(skip_all, fields(otel.name = "ECS.DescribeTasks", otel.kind = "client", rpc.system = "aws-api", rpc.service = "ECS", cloud.region = %self.region, rpc.method = "DescribeTasks", aws.ecs.cluster = cluster, tasks = arns.len()))]
    pub async fn describe_tasks(
        &self,
        cluster: &str,
        arns: &[String],
    ) -> Result<(Vec<EcsTask>, Vec<String>), EcsError> {
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for chunk in arns.chunks(100) {
            self.admit(Category::ResourceRead, "DescribeTasks").await;
            let out = self
                .client
                .describe_tasks()
                .cluster(cluster)
                .set_tasks(Some(chunk.to_vec()))
                .include(aws_sdk_ecs::types::TaskField::Tags)
                .send()
                .await
                .map_err(|e| self.classify("DescribeTasks", e))?;
            let tasks: Vec<EcsTask> = out.tasks().iter().map(model::task_from_sdk).collect();
            for arn in chunk {
                if !tasks.iter().any(|t| &t.arn == arn) {
                    missing.push(arn.clone());
                }
            }
            found.extend(tasks);
        }
        Ok((found, missing))
    }

    /// StopTask with a reason. An unknown task is `StopOutcome::NotFound`.
    ///
    /// # Errors
    /// [`EcsError`] when the call fails for another reason.
    #[tracing::instrument(skip_all, fields(otel.name = "ECS.StopTask", otel.kind = "client", rpc.system = "aws-api", rpc.service = "ECS", cloud.region = %self.region, rpc.method = "StopTask", aws.ecs.cluster = cluster, aws.ecs.task.arn = arn))]
    pub async fn stop_task(
        &self,
        cluster: &str,
        arn: &str,
        reason: &str,
    ) -> Result<StopOutcome, EcsError> {
        self.admit(Category::ResourceModify, "StopTask").await;
        match self
            .client
            .stop_task()
            .cluster(cluster)
            .task(arn)
            .reason(reason)
            .send()
            .await
        {
            Ok(out) => Ok(out.task().map_or(StopOutcome::NotFound, |t| {
                StopOutcome::Stopping(model::task_from_sdk(t))
            })),
            Err(e) => {
                let err = self.classify("StopTask", e);
                // ECS answers an unknown task with the generic
                // InvalidParameterException; confirm through DescribeTasks.
                if matches!(&err, EcsError::Service { code, .. } if code == "InvalidParameterException")
                {
                    let (_, missing) = self.describe_tasks(cluster, &[arn.to_string()]).await?;
                    if !missing.is_empty() {
                        return Ok(StopOutcome::NotFound);
                    }
                }
                Err(err)
            }
        }
    }

    /// ARNs of the tasks with this `startedBy`, running ones first, then
    /// stopped ones.
    ///
    /// # Errors
    /// [`EcsError`] when a call fails.
    #[tracing::instrument(skip_all, fields(otel.name = "ECS.ListTasks", otel.kind = "client", rpc.system = "aws-api", rpc.service = "ECS", cloud.region = %self.region, rpc.method = "ListTasks", aws.ecs.cluster = cluster, started_by))]
    pub async fn list_started_by(
        &self,
        cluster: &str,
        started_by: &str,
    ) -> Result<Vec<String>, EcsError> {
        let mut arns = Vec::new();
        for status in [
            aws_sdk_ecs::types::DesiredStatus::Running,
            aws_sdk_ecs::types::DesiredStatus::Stopped,
        ] {
            let mut token: Option<String> = None;
            loop {
                self.admit(Category::ResourceRead, "ListTasks").await;
                let out = self
                    .client
                    .list_tasks()
                    .cluster(cluster)
                    .started_by(started_by)
                    .desired_status(status.clone())
                    .set_next_token(token.clone())
                    .send()
                    .await
                    .map_err(|e| self.classify("ListTasks", e))?;
                arns.extend(out.task_arns().iter().cloned());
                token = out.next_token().map(ToString::to_string);
                if token.is_none() {
                    break;
                }
            }
        }
        arns.dedup();
        Ok(arns)
    }

    /// ARNs of every RUNNING task in the cluster (for the orphan sweep),
    /// page by page.
    ///
    /// # Errors
    /// [`EcsError`] when a call fails.
    #[tracing::instrument(skip_all, fields(otel.name = "ECS.ListTasks", otel.kind = "client", rpc.system = "aws-api", rpc.service = "ECS", cloud.region = %self.region, rpc.method = "ListTasks", aws.ecs.cluster = cluster))]
    pub async fn list_running(&self, cluster: &str) -> Result<Vec<String>, EcsError> {
        let mut arns = Vec::new();
        let mut token: Option<String> = None;
        loop {
            self.admit(Category::ResourceRead, "ListTasks").await;
            let out = self
                .client
                .list_tasks()
                .cluster(cluster)
                .desired_status(aws_sdk_ecs::types::DesiredStatus::Running)
                .set_next_token(token.clone())
                .send()
                .await
                .map_err(|e| self.classify("ListTasks", e))?;
            arns.extend(out.task_arns().iter().cloned());
            token = out.next_token().map(ToString::to_string);
            if token.is_none() {
                return Ok(arns);
            }
        }
    }

    /// TagResource on a task (the ownership record).
    ///
    /// # Errors
    /// [`EcsError`] when the call fails.
    #[tracing::instrument(skip_all, fields(otel.name = "ECS.TagResource", otel.kind = "client", rpc.system = "aws-api", rpc.service = "ECS", cloud.region = %self.region, rpc.method = "TagResource", aws.ecs.task.arn = arn))]
    pub async fn tag_task(&self, arn: &str, tags: &[(String, String)]) -> Result<(), EcsError> {
        use aws_sdk_ecs::types::Tag;
        self.admit(Category::TagModify, "TagResource").await;
        let mut req = self.client.tag_resource().resource_arn(arn);
        for (k, v) in tags {
            req = req.tags(Tag::builder().key(k).value(v).build());
        }
        req.send()
            .await
            .map_err(|e| self.classify("TagResource", e))?;
        Ok(())
    }

    /// DescribeClusters for one cluster.
    ///
    /// # Errors
    /// [`EcsError`] for any failure of the call itself.
    #[tracing::instrument(skip_all, fields(otel.name = "ECS.DescribeClusters", otel.kind = "client", rpc.system = "aws-api", rpc.service = "ECS", cloud.region = %self.region, aws.ecs.cluster = cluster, rpc.method = "DescribeClusters"))]
    pub async fn describe_cluster(&self, cluster: &str) -> Result<ClusterState, EcsError> {
        self.admit(Category::ClusterRead, "DescribeClusters").await;
        let out = self
            .client
            .describe_clusters()
            .clusters(cluster)
            .send()
            .await
            .map_err(|e| self.classify("DescribeClusters", e))?;
        let found = out
            .clusters()
            .iter()
            .find(|c| c.cluster_name() == Some(cluster) || c.cluster_arn() == Some(cluster));
        Ok(match found {
            Some(c) if c.status() == Some("ACTIVE") => ClusterState::Active {
                arn: c.cluster_arn().unwrap_or(cluster).to_string(),
            },
            Some(c) => ClusterState::NotActive {
                status: c.status().unwrap_or("UNKNOWN").to_string(),
            },
            None => ClusterState::Missing,
        })
    }

    /// Map an SDK error to [`EcsError`].
    pub fn classify<E, R>(&self, operation: &'static str, err: SdkError<E, R>) -> EcsError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + HttpStatus + Send + Sync + 'static,
    {
        crate::telemetry::record_ecs_error(operation, classify(operation, &self.endpoint, err))
    }
}

/// The SDK retry policy of every ECS client: adaptive mode, 4 attempts,
/// backoff from 200 ms up to 5 s.
pub fn retry_config() -> RetryConfig {
    RetryConfig::adaptive()
        .with_max_attempts(4)
        .with_initial_backoff(Duration::from_millis(200))
        .with_max_backoff(Duration::from_secs(5))
}

/// Access to a raw response's HTTP status, for the SDK's response types.
pub trait HttpStatus {
    /// The status code.
    fn status_code(&self) -> u16;
}

impl HttpStatus for aws_smithy_runtime_api::http::Response {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

/// Map an SDK error to [`EcsError`] by its type and AWS error code.
pub fn classify<E, R>(operation: &'static str, endpoint: &str, err: SdkError<E, R>) -> EcsError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + HttpStatus + Send + Sync + 'static,
{
    if let Some(cause) = credentials_cause(&err) {
        return EcsError::NoCredentials { cause };
    }
    let text = chain(Some(&err as &dyn std::error::Error));
    match err {
        SdkError::TimeoutError(_) => EcsError::Timeout {
            operation,
            endpoint: endpoint.to_string(),
        },
        SdkError::DispatchFailure(df) => {
            if df.is_timeout() {
                EcsError::Timeout {
                    operation,
                    endpoint: endpoint.to_string(),
                }
            } else {
                EcsError::Unreachable {
                    endpoint: endpoint.to_string(),
                    cause: chain(df.as_connector_error().map(|c| c as &dyn std::error::Error)),
                }
            }
        }
        SdkError::ResponseError(re) => EcsError::BadResponse {
            operation,
            status: Some(re.raw().status_code()),
            cause: text,
        },
        SdkError::ServiceError(se) => {
            let status = se.raw().status_code();
            let e = se.err();
            let code = e.code().unwrap_or("Unknown").to_string();
            let message = e.message().unwrap_or("").to_string();
            match code.as_str() {
                "UnrecognizedClientException"
                | "InvalidSignatureException"
                | "SignatureDoesNotMatch"
                | "InvalidClientTokenId"
                | "ExpiredTokenException"
                | "ExpiredToken"
                | "IncompleteSignature"
                | "MissingAuthenticationToken" => EcsError::BadCredentials { code, message },
                "AccessDeniedException" | "AccessDenied" => EcsError::AccessDenied {
                    operation,
                    code,
                    message,
                },
                "ThrottlingException"
                | "Throttling"
                | "TooManyRequestsException"
                | "RequestLimitExceeded" => EcsError::Throttled { operation, message },
                _ => EcsError::Service {
                    operation,
                    code,
                    message,
                    status: Some(status),
                },
            }
        }
        other => EcsError::Service {
            operation,
            code: "Unknown".into(),
            message: {
                drop(other);
                text
            },
            status: None,
        },
    }
}

/// When the failure is the credential chain's, its explanation.
fn credentials_cause<E, R>(err: &SdkError<E, R>) -> Option<String>
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = src {
        if let Some(c) = e.downcast_ref::<aws_credential_types::provider::error::CredentialsError>()
        {
            return Some(chain(Some(c as &dyn std::error::Error)));
        }
        src = e.source();
    }
    None
}

/// An error and its sources, joined with ": ", without repeats.
fn chain(err: Option<&dyn std::error::Error>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = err;
    while let Some(e) = cur {
        let s = e.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = e.source();
    }
    if parts.is_empty() {
        "unknown error".into()
    } else {
        parts.join(": ")
    }
}
