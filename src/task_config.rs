//! The job's `task { config { ... } }` block: its schema (upstream's shape,
//! unchanged) and the validated form StartTask works from.

use serde::Deserialize;
use thiserror::Error;

use crate::schema::{Object, Ty};

/// The task config schema sent to Nomad:
/// `task { launch_type, task_definition, network_configuration {
/// aws_vpc_configuration { assign_public_ip, security_groups, subnets } } }`.
pub fn schema() -> Object {
    let vpc = Object::new()
        .attr("assign_public_ip", Ty::String)
        .attr("security_groups", Ty::List(Box::new(Ty::String)))
        .attr("subnets", Ty::List(Box::new(Ty::String)));
    let network = Object::new().block("aws_vpc_configuration", vpc);
    let task = Object::new()
        .attr("launch_type", Ty::String)
        .attr("task_definition", Ty::String)
        .block("network_configuration", network);
    Object::new().block("task", task)
}

/// The decoded config block (every part optional, as in the schema).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawTaskConfig {
    /// The `task` block.
    pub task: Option<RawTask>,
}

/// `task { ... }`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawTask {
    /// `EC2`, `FARGATE` or `EXTERNAL`.
    pub launch_type: Option<String>,
    /// `family`, `family:revision` or an ARN.
    pub task_definition: Option<String>,
    /// `network_configuration { ... }`.
    pub network_configuration: Option<RawNetwork>,
}

/// `network_configuration { ... }`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawNetwork {
    /// `aws_vpc_configuration { ... }`.
    pub aws_vpc_configuration: Option<RawVpc>,
}

/// `aws_vpc_configuration { ... }`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawVpc {
    /// `ENABLED` or `DISABLED`.
    pub assign_public_ip: Option<String>,
    /// Security group IDs.
    #[serde(default)]
    pub security_groups: Vec<String>,
    /// Subnet IDs.
    #[serde(default)]
    pub subnets: Vec<String>,
}

/// A task config that cannot be run, naming the field.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid task config `{field}`: {reason}")]
pub struct TaskConfigError {
    /// Dotted path of the field.
    pub field: &'static str,
    /// What is wrong and what is expected.
    pub reason: String,
}

/// The launch types ECS accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LaunchType {
    /// EC2 container instances.
    Ec2,
    /// Fargate.
    Fargate,
    /// ECS Anywhere.
    External,
}

impl LaunchType {
    /// The API string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ec2 => "EC2",
            Self::Fargate => "FARGATE",
            Self::External => "EXTERNAL",
        }
    }
}

/// awsvpc networking for RunTask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VpcConfig {
    /// Subnets (at least one).
    pub subnets: Vec<String>,
    /// Security groups (may be empty: the VPC default applies).
    pub security_groups: Vec<String>,
    /// Some(true) for ENABLED, Some(false) for DISABLED.
    pub assign_public_ip: Option<bool>,
}

/// The validated task config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskConfig {
    /// The task definition to run.
    pub task_definition: String,
    /// None: the cluster's default capacity provider strategy.
    pub launch_type: Option<LaunchType>,
    /// None: the task definition's network mode needs no network config
    /// (bridge, host) — upstream always sent one, which made those impossible.
    pub vpc: Option<VpcConfig>,
}

impl TryFrom<RawTaskConfig> for TaskConfig {
    type Error = TaskConfigError;

    fn try_from(raw: RawTaskConfig) -> Result<Self, Self::Error> {
        let err = |field, reason: &str| TaskConfigError {
            field,
            reason: reason.to_string(),
        };
        let task = raw
            .task
            .ok_or_else(|| err("task", "the `task` block is required"))?;
        let task_definition = task
            .task_definition
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                err(
                    "task.task_definition",
                    "is required: a family, family:revision or task definition ARN",
                )
            })?;
        if task_definition.chars().any(char::is_whitespace) {
            return Err(err("task.task_definition", "must not contain whitespace"));
        }
        let launch_type = match task.launch_type.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(l) => Some(match l.to_ascii_uppercase().as_str() {
                "EC2" => LaunchType::Ec2,
                "FARGATE" => LaunchType::Fargate,
                "EXTERNAL" => LaunchType::External,
                _ => {
                    return Err(TaskConfigError {
                        field: "task.launch_type",
                        reason: format!("{l:?} is not one of EC2, FARGATE, EXTERNAL"),
                    });
                }
            }),
        };
        let vpc = match task
            .network_configuration
            .and_then(|n| n.aws_vpc_configuration)
        {
            None => None,
            Some(v) => {
                let field = "task.network_configuration.aws_vpc_configuration";
                if v.subnets.is_empty() {
                    return Err(TaskConfigError {
                        field,
                        reason: "`subnets` must list at least one subnet".into(),
                    });
                }
                for s in v.subnets.iter().chain(&v.security_groups) {
                    if s.trim().is_empty() {
                        return Err(TaskConfigError {
                            field,
                            reason: "subnet and security group IDs must not be empty".into(),
                        });
                    }
                }
                let assign_public_ip = match v.assign_public_ip.as_deref().map(str::trim) {
                    None | Some("") => None,
                    Some(p) => match p.to_ascii_uppercase().as_str() {
                        "ENABLED" => Some(true),
                        "DISABLED" => Some(false),
                        _ => {
                            return Err(TaskConfigError {
                                field: "task.network_configuration.aws_vpc_configuration.assign_public_ip",
                                reason: format!("{p:?} is not ENABLED or DISABLED"),
                            });
                        }
                    },
                };
                Some(VpcConfig {
                    subnets: v.subnets,
                    security_groups: v.security_groups,
                    assign_public_ip,
                })
            }
        };
        Ok(Self {
            task_definition,
            launch_type,
            vpc,
        })
    }
}
