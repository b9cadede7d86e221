//! Nomad HCL job files for the dev tool: reads `job "name" { group "g" { task "t" { ... } } }`
//! and turns each task's `config { ... }` into the cty value, and so the cty-msgpack bytes, that a
//! Nomad client would send the driver in `TaskConfig.msgpack_driver_config`.
//!
//! The config block is decoded the way Nomad's hcldec does with the driver's schema (protocol doc
//! §3.2): the result is an object with **every** schema key present; an attribute is converted to
//! its schema type (cty's conversions: a number or bool where a string is wanted becomes its
//! text, a numeric string where a number is wanted becomes the number, an HCL list becomes a
//! `list(...)`), is null when absent, or takes its hclspec default; a block is its nested object
//! or null when absent; a block list is a list, empty when there are none. Keys the schema does
//! not declare are errors naming their path, as Nomad rejects them too. [`decode_body`] does this
//! for any [`Object`] schema (the dev tool also uses it for the agent's plugin block).
//!
//! Limits, on purpose: this is not Nomad's job parser. Only literal values are read (strings,
//! numbers, bools, null, lists and objects of those, heredocs without interpolation); variables,
//! functions, operators and `${...}` interpolation are refused with an error saying so, since the
//! dev tool has no Nomad client to interpolate them. Outside `config`, the keys the dev tool uses
//! are read (`type`, `namespace`, `datacenters`, `count`, `driver`, `kill_timeout`,
//! `kill_signal`, `env`, `resources`, `user`); other well-known Nomad keys are accepted and
//! ignored (ignored blocks are listed in [`Job::notes`]); anything else is an error.
//!
//! Numbers: hcl-rs reads non-integer literals as `f64`, whereas cty keeps 512 bits. A decimal
//! literal is carried as the shortest text that round-trips its `f64`, which is the literal
//! itself for every literal of 17 significant digits or fewer.
//!
//! ```
//! use nomad_driver_ecs::devstack::jobfile;
//!
//! let job = jobfile::parse(r#"
//!     job "hello" {
//!       type = "batch"
//!       group "app" {
//!         task "sleep" {
//!           driver = "ecs"
//!           config {
//!             task {
//!               task_definition = "hello:1"
//!             }
//!           }
//!         }
//!       }
//!     }
//! "#)?;
//! let task = &job.groups[0].tasks[0];
//! assert!(task.is_ecs());
//! let bytes = task.encoded_config().expect("an ecs task has a config");
//! # let _ = bytes;
//! # Ok::<(), jobfile::JobFileError>(())
//! ```

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hcl::eval::{Context, Evaluate as _};
use hcl::template::Element;
use hcl::{Block, Body, Expression, ObjectKey, Structure, Template, TemplateExpr};

use crate::cty::{self, Number, Value};
use crate::schema::{Node, Object, Ty};

/// The driver name whose tasks the dev tool runs.
pub const ECS_DRIVER: &str = "ecs";

/// Nomad's default `kill_timeout`.
pub const DEFAULT_KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// Nomad's default `resources { cpu }`, in MHz.
pub const DEFAULT_CPU_MHZ: i64 = 100;

/// Nomad's default `resources { memory }`, in MiB.
pub const DEFAULT_MEMORY_MB: i64 = 300;

/// A job file that cannot be run, naming where and why.
///
/// Paths read like `job "hello" > group "app" > task "web" > config.task.launch_type`, with
/// `[i]` for list elements. Messages name kinds (`string`, `list`), never values.
#[derive(Debug, thiserror::Error)]
pub enum JobFileError {
    /// The file could not be read.
    #[error("cannot read the job file {}", path.display())]
    ReadFailed {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The text is not valid HCL.
    #[error("the job file is not valid HCL")]
    ParseFailed {
        /// The parser's error, with line and column.
        #[source]
        source: hcl::Error,
    },
    /// A key that is not allowed where it is.
    #[error("unknown {what} `{path}`; {}", allowed_list(allowed))]
    UnknownKey {
        /// The key's path.
        path: String,
        /// `attribute` or `block`.
        what: &'static str,
        /// The keys allowed at that level.
        allowed: Vec<String>,
    },
    /// An attribute written where a block is expected, or the reverse.
    #[error("`{path}` must be written as {expected}")]
    WrongForm {
        /// Where.
        path: String,
        /// `a block: name { ... }` or `an attribute: name = value`.
        expected: &'static str,
    },
    /// A value that is not of (and cannot be converted to) the expected type.
    #[error("invalid value for `{path}`: expected {expected}, found {found}")]
    WrongType {
        /// Where.
        path: String,
        /// What is expected, e.g. `list(string)`.
        expected: String,
        /// What the file holds, e.g. `string`.
        found: String,
    },
    /// An expression that is not a literal value.
    #[error(
        "`{path}` is {found}; the dev tool evaluates literal values only (no variables, \
         functions, operators or `${{...}}` interpolation): write the value itself"
    )]
    NotLiteral {
        /// Where.
        path: String,
        /// What it is, e.g. `a ${...} template`.
        found: &'static str,
    },
    /// A required attribute or block is absent.
    #[error("missing required {what} `{path}`")]
    Missing {
        /// Where.
        path: String,
        /// `attribute` or `block`.
        what: &'static str,
    },
    /// A block or key given more than once where only one is allowed.
    #[error("`{path}` is given more than once")]
    Duplicate {
        /// Where.
        path: String,
    },
    /// A block with the wrong number of labels.
    #[error("block `{path}` takes {expected} label(s), found {found}")]
    Labels {
        /// Where.
        path: String,
        /// How many it takes.
        expected: usize,
        /// How many it has.
        found: usize,
    },
    /// A block list with too few or too many blocks.
    #[error("`{path}` has {count} block(s), expected {}", crate::schema::block_bounds(*min, *max))]
    BlockCount {
        /// Where.
        path: String,
        /// How many there are.
        count: usize,
        /// The schema's minimum.
        min: u64,
        /// The schema's maximum (0: no limit).
        max: u64,
    },
    /// A value of the right type that is still not acceptable.
    #[error("invalid `{path}`: {reason}")]
    Invalid {
        /// Where.
        path: String,
        /// What is wrong and what is expected.
        reason: String,
    },
    /// A schema default that is not a literal this module can read (a schema bug).
    #[error("the schema default {literal:?} of `{path}` is not a literal value")]
    BadDefault {
        /// Where.
        path: String,
        /// The default.
        literal: String,
    },
}

impl JobFileError {
    /// The path of the key at fault, when the error has one.
    #[must_use]
    pub fn path(&self) -> Option<&str> {
        match self {
            Self::ReadFailed { .. } | Self::ParseFailed { .. } => None,
            Self::UnknownKey { path, .. }
            | Self::WrongForm { path, .. }
            | Self::WrongType { path, .. }
            | Self::NotLiteral { path, .. }
            | Self::Missing { path, .. }
            | Self::Duplicate { path }
            | Self::Labels { path, .. }
            | Self::BlockCount { path, .. }
            | Self::Invalid { path, .. }
            | Self::BadDefault { path, .. } => Some(path),
        }
    }
}

fn allowed_list(allowed: &[String]) -> String {
    if allowed.is_empty() {
        return "nothing is allowed here".to_owned();
    }
    let quoted: Vec<String> = allowed.iter().map(|key| format!("`{key}`")).collect();
    format!("allowed here: {}", quoted.join(", "))
}

/// A job's `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobType {
    /// Long-running (the default).
    Service,
    /// Runs to completion.
    Batch,
    /// One long-running allocation per node.
    System,
    /// One run-to-completion allocation per node.
    Sysbatch,
}

impl JobType {
    /// Whether its tasks are expected to exit by themselves.
    #[must_use]
    pub fn runs_to_completion(self) -> bool {
        matches!(self, Self::Batch | Self::Sysbatch)
    }

    /// The HCL spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Service => "service",
            Self::Batch => "batch",
            Self::System => "system",
            Self::Sysbatch => "sysbatch",
        }
    }
}

impl fmt::Display for JobType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job read from a job file.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// The job ID (the `job` block's label).
    pub id: String,
    /// `type`, default `service`.
    pub job_type: JobType,
    /// `namespace`, default `default`.
    pub namespace: String,
    /// `datacenters`, default `["*"]`.
    pub datacenters: Vec<String>,
    /// The task groups, in file order.
    pub groups: Vec<Group>,
    /// What the dev tool ignores, one line each (e.g. a `restart` block).
    pub notes: Vec<String>,
}

impl Job {
    /// Every `(group, task)` whose driver is [`ECS_DRIVER`], in file order.
    pub fn ecs_tasks(&self) -> impl Iterator<Item = (&Group, &Task)> {
        self.groups.iter().flat_map(|group| {
            group
                .tasks
                .iter()
                .filter(|task| task.is_ecs())
                .map(move |task| (group, task))
        })
    }
}

/// A `group "name" { ... }` block.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// The label.
    pub name: String,
    /// `count`, default 1 (always 1 for system and sysbatch jobs).
    pub count: u32,
    /// The tasks, in file order.
    pub tasks: Vec<Task>,
}

/// A `task "name" { ... }` block.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// The label.
    pub name: String,
    /// `driver`.
    pub driver: String,
    /// For an ecs task, the `config` block decoded with the driver's task schema; `None` for
    /// tasks of other drivers (whose schema the dev tool does not know).
    pub config: Option<Value>,
    /// `kill_timeout`, default [`DEFAULT_KILL_TIMEOUT`].
    pub kill_timeout: Duration,
    /// `kill_signal`; `None` leaves the choice to the driver.
    pub kill_signal: Option<String>,
    /// `env { ... }`.
    pub env: BTreeMap<String, String>,
    /// `resources { ... }`.
    pub resources: Resources,
    /// `user`.
    pub user: Option<String>,
}

impl Task {
    /// Whether the driver is [`ECS_DRIVER`].
    #[must_use]
    pub fn is_ecs(&self) -> bool {
        self.driver == ECS_DRIVER
    }

    /// The config as the Nomad client encodes it (`msgpack_driver_config`), for ecs tasks.
    #[must_use]
    pub fn encoded_config(&self) -> Option<Vec<u8>> {
        self.config.as_ref().map(cty::encode)
    }
}

/// A task's `resources { cpu, memory, memory_max }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resources {
    /// MHz, default [`DEFAULT_CPU_MHZ`].
    pub cpu: i64,
    /// MiB, default [`DEFAULT_MEMORY_MB`].
    pub memory_mb: i64,
    /// MiB; 0 when not set.
    pub memory_max_mb: i64,
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            cpu: DEFAULT_CPU_MHZ,
            memory_mb: DEFAULT_MEMORY_MB,
            memory_max_mb: 0,
        }
    }
}

/// Reads and parses the job file at `path`.
///
/// # Errors
///
/// [`JobFileError::ReadFailed`], or any error of [`parse`].
pub fn load(path: &Path) -> Result<Job, JobFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| JobFileError::ReadFailed {
        path: path.to_owned(),
        source,
    })?;
    parse(&text)
}

/// Parses a job file's text: exactly one `job "id" { ... }` block.
///
/// # Errors
///
/// A [`JobFileError`] naming the path of the first problem: invalid HCL, an unknown or repeated
/// key, a value of the wrong type, a non-literal expression, a missing `driver`, a group without
/// tasks, a job without groups.
pub fn parse(text: &str) -> Result<Job, JobFileError> {
    let body = hcl::parse(text).map_err(|source| JobFileError::ParseFailed { source })?;
    let mut jobs = Vec::new();
    for structure in body.iter() {
        match structure {
            Structure::Block(block) if block.identifier() == "job" => jobs.push(block),
            Structure::Block(block) => {
                return Err(unknown(block.identifier(), "block", &["job"]));
            }
            Structure::Attribute(attr) => {
                return Err(unknown(attr.key(), "attribute", &["job"]));
            }
        }
    }
    match jobs.as_slice() {
        [] => Err(JobFileError::Missing {
            path: "job".to_owned(),
            what: "block",
        }),
        [job] => parse_job(job),
        [_, second, ..] => Err(JobFileError::Duplicate {
            path: format!("job {:?}", label_text(second, 0)),
        }),
    }
}

/// Decodes `body` with `schema` as Nomad's hcldec does and returns the cty value (an object with
/// every schema key present). `path` prefixes error paths (`""` at the root).
///
/// # Errors
///
/// A [`JobFileError`] naming the path when a key is not in the schema, is repeated or has the
/// wrong form (attribute for block or the reverse), a value is not a literal or not convertible
/// to its type, a required attribute or block is absent, a block list has a count outside its
/// bounds, or a block has labels.
pub fn decode_body(schema: &Object, body: &Body, path: &str) -> Result<Value, JobFileError> {
    let allowed = || {
        schema
            .fields
            .iter()
            .map(|(name, _)| (*name).to_owned())
            .collect::<Vec<_>>()
    };
    for structure in body.iter() {
        let (name, what) = match structure {
            Structure::Attribute(attr) => (attr.key(), "attribute"),
            Structure::Block(block) => (block.identifier(), "block"),
        };
        let Some((_, node)) = schema.fields.iter().find(|(field, _)| *field == name) else {
            return Err(JobFileError::UnknownKey {
                path: child(path, name),
                what,
                allowed: allowed(),
            });
        };
        match (node, structure) {
            (Node::Attr { .. }, Structure::Block(_)) => {
                return Err(JobFileError::WrongForm {
                    path: child(path, name),
                    expected: "an attribute: name = value",
                });
            }
            (Node::Block { .. } | Node::BlockList { .. }, Structure::Attribute(_)) => {
                return Err(JobFileError::WrongForm {
                    path: child(path, name),
                    expected: "a block: name { ... }",
                });
            }
            (_, Structure::Block(block)) => expect_labels(block, 0, &child(path, name))?,
            _ => {}
        }
    }
    let mut entries = Vec::with_capacity(schema.fields.len());
    for (name, node) in &schema.fields {
        let at = child(path, name);
        let value = match node {
            Node::Attr {
                ty,
                required,
                default,
            } => decode_attr(body, name, ty, *required, *default, &at)?,
            Node::Block {
                required,
                body: nested,
            } => {
                let blocks: Vec<&Block> = blocks_named(body, name).collect();
                match blocks.as_slice() {
                    [] if *required => {
                        return Err(JobFileError::Missing {
                            path: at,
                            what: "block",
                        });
                    }
                    [] => Value::Null,
                    [block] => decode_body(nested, block.body(), &at)?,
                    [..] => return Err(JobFileError::Duplicate { path: at }),
                }
            }
            Node::BlockList {
                min_items,
                max_items,
                body: nested,
            } => {
                let blocks: Vec<&Block> = blocks_named(body, name).collect();
                let count = u64::try_from(blocks.len()).unwrap_or(u64::MAX);
                if count < *min_items || (*max_items > 0 && count > *max_items) {
                    return Err(JobFileError::BlockCount {
                        path: at,
                        count: blocks.len(),
                        min: *min_items,
                        max: *max_items,
                    });
                }
                let items = blocks
                    .iter()
                    .enumerate()
                    .map(|(i, block)| decode_body(nested, block.body(), &index(&at, i)))
                    .collect::<Result<Vec<_>, _>>()?;
                Value::List(items)
            }
        };
        entries.push(((*name).to_owned(), value));
    }
    Ok(Value::Map(entries))
}

/// Decodes a task's `config` body with the driver's task schema ([`crate::task_config::schema`]).
///
/// # Errors
///
/// As [`decode_body`].
pub fn decode_task_config(body: &Body, path: &str) -> Result<Value, JobFileError> {
    decode_body(&crate::task_config::schema(), body, path)
}

fn decode_attr(
    body: &Body,
    name: &str,
    ty: &Ty,
    required: bool,
    default: Option<&str>,
    path: &str,
) -> Result<Value, JobFileError> {
    let value = match body.attributes().find(|attr| attr.key() == name) {
        Some(attr) => typed(&literal(attr.expr(), path)?, ty, path)?,
        None if required => {
            return Err(JobFileError::Missing {
                path: path.to_owned(),
                what: "attribute",
            });
        }
        None => Value::Null,
    };
    match (value, default) {
        // hcldec's Default spec: the default replaces a null primary, absent or written `null`.
        (Value::Null, Some(literal_text)) => {
            let bad = || JobFileError::BadDefault {
                path: path.to_owned(),
                literal: literal_text.to_owned(),
            };
            let expr: Expression = literal_text.parse().map_err(|_| bad())?;
            let lit = literal(&expr, path).map_err(|_| bad())?;
            typed(&lit, ty, path)
        }
        (value, _) => Ok(value),
    }
}

/// A literal HCL value, before conversion to a schema type.
#[derive(Debug, Clone, PartialEq)]
enum Lit {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Tuple(Vec<Lit>),
    Object(Vec<(String, Lit)>),
}

impl Lit {
    fn kind(&self) -> &'static str {
        match self {
            Lit::Null => "null",
            Lit::Bool(_) => "bool",
            Lit::Number(_) => "number",
            Lit::String(_) => "string",
            Lit::Tuple(_) => "list",
            Lit::Object(_) => "object",
        }
    }
}

fn not_literal(path: &str, found: &'static str) -> JobFileError {
    JobFileError::NotLiteral {
        path: path.to_owned(),
        found,
    }
}

/// Reads `expr` as a literal, refusing anything that needs evaluation.
fn literal(expr: &Expression, path: &str) -> Result<Lit, JobFileError> {
    Ok(match expr {
        Expression::Null => Lit::Null,
        Expression::Bool(flag) => Lit::Bool(*flag),
        Expression::Number(number) => Lit::Number(cty_number(number)),
        Expression::String(text) => Lit::String(text.clone()),
        Expression::Array(items) => Lit::Tuple(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| literal(item, &index(path, i)))
                .collect::<Result<_, _>>()?,
        ),
        Expression::Object(object) => {
            let mut seen = HashSet::new();
            let mut entries = Vec::with_capacity(object.len());
            for (key, value) in object {
                let key = match key {
                    ObjectKey::Identifier(ident) => ident.as_str().to_owned(),
                    ObjectKey::Expression(Expression::String(text)) => text.clone(),
                    ObjectKey::Expression(_) => {
                        return Err(not_literal(path, "an object with a computed key"));
                    }
                    // ObjectKey is non-exhaustive upstream.
                    _ => return Err(not_literal(path, "an object with a computed key")),
                };
                let at = map_key(path, &key);
                if !seen.insert(key.clone()) {
                    return Err(JobFileError::Duplicate { path: at });
                }
                let value = literal(value, &at)?;
                entries.push((key, value));
            }
            Lit::Object(entries)
        }
        Expression::TemplateExpr(template) => Lit::String(literal_template(template, path)?),
        Expression::Parenthesis(inner) => literal(inner, path)?,
        Expression::Variable(_) => return Err(not_literal(path, "a variable reference")),
        Expression::Traversal(_) => return Err(not_literal(path, "a reference")),
        Expression::FuncCall(_) => return Err(not_literal(path, "a function call")),
        Expression::Conditional(_) => return Err(not_literal(path, "a conditional expression")),
        Expression::Operation(_) => return Err(not_literal(path, "an operation")),
        Expression::ForExpr(_) => return Err(not_literal(path, "a `for` expression")),
        // Expression is non-exhaustive upstream.
        _ => return Err(not_literal(path, "an expression")),
    })
}

/// A heredoc or quoted template with no interpolation or directive, as its string.
fn literal_template(template: &TemplateExpr, path: &str) -> Result<String, JobFileError> {
    let parsed = Template::from_expr(template)
        .map_err(|_| not_literal(path, "a template the dev tool cannot read"))?;
    if parsed
        .elements()
        .iter()
        .any(|element| !matches!(element, Element::Literal(_)))
    {
        return Err(not_literal(path, "a `${...}` or `%{...}` template"));
    }
    // Evaluating an all-literal template only applies escapes and heredoc indentation.
    match template.evaluate(&Context::new()) {
        Ok(hcl::Value::String(text)) => Ok(text),
        _ => Err(not_literal(path, "a template the dev tool cannot read")),
    }
}

/// An HCL number as cty holds it (see the module docs on precision).
fn cty_number(number: &hcl::Number) -> Number {
    if let Some(int) = number.as_i64() {
        return Number::Int(int);
    }
    if let Some(uint) = number.as_u64() {
        return Number::UInt(uint);
    }
    let text = number.to_string();
    Number::from_decimal(&text).unwrap_or(Number::Text(text))
}

/// A cty number's decimal text, as cty's number-to-string conversion writes it.
fn number_text(number: &Number) -> String {
    match number {
        Number::Int(int) => int.to_string(),
        Number::UInt(uint) => uint.to_string(),
        // Rust's `Display` for f64 is the shortest round-trip form without an exponent.
        Number::Float(float) => format!("{float}"),
        Number::Text(text) => match Number::from_decimal(text) {
            Some(Number::Text(plain)) => plain,
            Some(exact) => number_text(&exact),
            None => text.clone(),
        },
    }
}

fn wrong_type(path: &str, expected: impl fmt::Display, found: &str) -> JobFileError {
    JobFileError::WrongType {
        path: path.to_owned(),
        expected: expected.to_string(),
        found: found.to_owned(),
    }
}

/// Converts a literal to `ty` with cty's conversion rules.
fn typed(lit: &Lit, ty: &Ty, path: &str) -> Result<Value, JobFileError> {
    Ok(match (ty, lit) {
        (_, Lit::Null) => Value::Null,
        (Ty::Any, _) => natural(lit),
        (Ty::String, Lit::String(text)) => Value::String(text.clone()),
        (Ty::String, Lit::Number(number)) => Value::String(number_text(number)),
        (Ty::String, Lit::Bool(flag)) => Value::String(flag.to_string()),
        (Ty::Number, Lit::Number(number)) => Value::Number(number.clone()),
        (Ty::Number, Lit::String(text)) => match Number::from_decimal(text) {
            Some(number) => Value::Number(number),
            None => return Err(wrong_type(path, ty, "a string that is not a number")),
        },
        (Ty::Bool, Lit::Bool(flag)) => Value::Bool(*flag),
        (Ty::Bool, Lit::String(text)) => match text.as_str() {
            "true" | "1" => Value::Bool(true),
            "false" | "0" => Value::Bool(false),
            _ => return Err(wrong_type(path, ty, "a string that is not true or false")),
        },
        (Ty::List(elem), Lit::Tuple(items)) => Value::List(typed_items(items, elem, path)?),
        (Ty::Set(elem), Lit::Tuple(items)) => {
            Value::List(set_order(typed_items(items, elem, path)?))
        }
        (Ty::Map(elem), Lit::Object(entries)) => Value::Map(
            entries
                .iter()
                .map(|(key, item)| Ok((key.clone(), typed(item, elem, &map_key(path, key))?)))
                .collect::<Result<_, JobFileError>>()?,
        ),
        (_, other) => return Err(wrong_type(path, ty, other.kind())),
    })
}

fn typed_items(items: &[Lit], elem: &Ty, path: &str) -> Result<Vec<Value>, JobFileError> {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| typed(item, elem, &index(path, i)))
        .collect()
}

/// A literal under `any`: its own type (tuples stay sequences, objects stay objects).
fn natural(lit: &Lit) -> Value {
    match lit {
        Lit::Null => Value::Null,
        Lit::Bool(flag) => Value::Bool(*flag),
        Lit::Number(number) => Value::Number(number.clone()),
        Lit::String(text) => Value::String(text.clone()),
        Lit::Tuple(items) => Value::List(items.iter().map(natural).collect()),
        Lit::Object(entries) => Value::Map(
            entries
                .iter()
                .map(|(key, item)| (key.clone(), natural(item)))
                .collect(),
        ),
    }
}

/// A set's elements deduplicated, and for primitive elements in cty's iteration order (strings by
/// bytes, numbers ascending, false before true). Other elements keep their first-seen order.
fn set_order(items: Vec<Value>) -> Vec<Value> {
    let mut unique: Vec<Value> = Vec::with_capacity(items.len());
    for item in items {
        if !unique.contains(&item) {
            unique.push(item);
        }
    }
    let rank = |value: &Value| -> Option<(u8, f64, String)> {
        match value {
            Value::Bool(flag) => Some((0, f64::from(u8::from(*flag)), String::new())),
            Value::Number(number) => number_f64(number).map(|float| (1, float, String::new())),
            Value::String(text) => Some((2, 0.0, text.clone())),
            _ => None,
        }
    };
    if unique.iter().all(|item| rank(item).is_some()) {
        unique.sort_by(|a, b| {
            let (a, b) = (rank(a), rank(b));
            a.partial_cmp(&b).unwrap_or(std::cmp::Ordering::Equal)
        });
    }
    unique
}

#[allow(clippy::cast_precision_loss)] // only for ordering set elements
fn number_f64(number: &Number) -> Option<f64> {
    match number {
        Number::Int(int) => Some(*int as f64),
        Number::UInt(uint) => Some(*uint as f64),
        Number::Float(float) => Some(*float),
        Number::Text(text) => text.parse().ok(),
    }
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

fn map_key(path: &str, key: &str) -> String {
    format!("{path}[{key:?}]")
}

fn blocks_named<'a>(body: &'a Body, name: &'a str) -> impl Iterator<Item = &'a Block> + 'a {
    body.blocks()
        .filter(move |block| block.identifier() == name)
}

fn label_text(block: &Block, i: usize) -> &str {
    block.labels().get(i).map_or("", |label| label.as_str())
}

fn expect_labels(block: &Block, expected: usize, path: &str) -> Result<(), JobFileError> {
    if block.labels().len() == expected {
        Ok(())
    } else {
        Err(JobFileError::Labels {
            path: path.to_owned(),
            expected,
            found: block.labels().len(),
        })
    }
}

fn unknown(key: &str, what: &'static str, allowed: &[&str]) -> JobFileError {
    JobFileError::UnknownKey {
        path: key.to_owned(),
        what,
        allowed: allowed.iter().map(|key| (*key).to_owned()).collect(),
    }
}

/// What one level of the job structure accepts besides what it reads.
struct Level {
    /// Attributes and blocks that are read.
    attrs: &'static [&'static str],
    blocks: &'static [&'static str],
    /// Nomad keys accepted without effect in the dev tool.
    ignored_attrs: &'static [&'static str],
    ignored_blocks: &'static [&'static str],
}

const JOB_LEVEL: Level = Level {
    attrs: &["type", "namespace", "datacenters"],
    blocks: &["group"],
    ignored_attrs: &[
        "all_at_once",
        "name",
        "node_pool",
        "priority",
        "region",
        "vault_token",
        "consul_token",
    ],
    ignored_blocks: &[
        "affinity",
        "constraint",
        "meta",
        "migrate",
        "multiregion",
        "parameterized",
        "periodic",
        "reschedule",
        "spread",
        "ui",
        "update",
        "vault",
        "consul",
    ],
};

const GROUP_LEVEL: Level = Level {
    attrs: &["count"],
    blocks: &["task"],
    ignored_attrs: &[
        "max_client_disconnect",
        "prevent_reschedule_on_lost",
        "shutdown_delay",
        "stop_after_client_disconnect",
    ],
    ignored_blocks: &[
        "affinity",
        "consul",
        "constraint",
        "disconnect",
        "ephemeral_disk",
        "meta",
        "migrate",
        "network",
        "reschedule",
        "restart",
        "scaling",
        "service",
        "spread",
        "update",
        "volume",
    ],
};

const TASK_LEVEL: Level = Level {
    attrs: &["driver", "kill_timeout", "kill_signal", "user"],
    blocks: &["config", "env", "resources"],
    ignored_attrs: &["kind", "leader", "shutdown_delay"],
    ignored_blocks: &[
        "action",
        "affinity",
        "artifact",
        "constraint",
        "consul",
        "csi_plugin",
        "dispatch_payload",
        "identity",
        "lifecycle",
        "logs",
        "meta",
        "restart",
        "scaling",
        "schedule",
        "service",
        "template",
        "vault",
        "volume_mount",
    ],
};

impl Level {
    /// Checks every key of `body` and notes the ignored blocks.
    fn check(&self, body: &Body, path: &str, notes: &mut Vec<String>) -> Result<(), JobFileError> {
        let mut seen_attrs = HashSet::new();
        let mut single_blocks = HashSet::new();
        for structure in body.iter() {
            match structure {
                Structure::Attribute(attr) => {
                    let key = attr.key();
                    if !seen_attrs.insert(key) {
                        return Err(JobFileError::Duplicate {
                            path: child(path, key),
                        });
                    }
                    if self.attrs.contains(&key) || self.ignored_attrs.contains(&key) {
                        continue;
                    }
                    if self.blocks.contains(&key) || self.ignored_blocks.contains(&key) {
                        return Err(JobFileError::WrongForm {
                            path: child(path, key),
                            expected: "a block: name { ... }",
                        });
                    }
                    return Err(self.unknown(path, key, "attribute"));
                }
                Structure::Block(block) => {
                    let key = block.identifier();
                    if self.ignored_blocks.contains(&key) {
                        notes.push(format!(
                            "{}: `{key}` is not emulated by the dev tool; ignored",
                            shown(path)
                        ));
                        continue;
                    }
                    if !self.blocks.contains(&key) {
                        if self.attrs.contains(&key) || self.ignored_attrs.contains(&key) {
                            return Err(JobFileError::WrongForm {
                                path: child(path, key),
                                expected: "an attribute: name = value",
                            });
                        }
                        return Err(self.unknown(path, key, "block"));
                    }
                    // `group` and `task` repeat with labels; the others are single, unlabelled.
                    if !matches!(key, "group" | "task") {
                        expect_labels(block, 0, &child(path, key))?;
                        if !single_blocks.insert(key) {
                            return Err(JobFileError::Duplicate {
                                path: child(path, key),
                            });
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn unknown(&self, path: &str, key: &str, what: &'static str) -> JobFileError {
        let mut allowed: Vec<String> = [
            self.attrs,
            self.blocks,
            self.ignored_attrs,
            self.ignored_blocks,
        ]
        .concat()
        .iter()
        .map(|key| (*key).to_owned())
        .collect();
        allowed.sort();
        JobFileError::UnknownKey {
            path: child(path, key),
            what,
            allowed,
        }
    }
}

fn shown(path: &str) -> &str {
    if path.is_empty() { "(top level)" } else { path }
}

/// The attribute `name` of `body` converted to `ty`; null when absent.
fn attr(body: &Body, name: &str, ty: &Ty, path: &str) -> Result<Value, JobFileError> {
    decode_attr(body, name, ty, false, None, &child(path, name))
}

fn attr_string(body: &Body, name: &str, path: &str) -> Result<Option<String>, JobFileError> {
    Ok(match attr(body, name, &Ty::String, path)? {
        Value::String(text) => Some(text),
        _ => None,
    })
}

fn attr_strings(body: &Body, name: &str, path: &str) -> Result<Option<Vec<String>>, JobFileError> {
    Ok(match attr(body, name, &Ty::list(Ty::String), path)? {
        Value::List(items) => Some(
            items
                .into_iter()
                .filter_map(|item| match item {
                    Value::String(text) => Some(text),
                    _ => None,
                })
                .collect(),
        ),
        _ => None,
    })
}

/// A whole number attribute within `range`, or `None` when absent.
fn attr_int(
    body: &Body,
    name: &str,
    range: std::ops::RangeInclusive<i64>,
    path: &str,
) -> Result<Option<i64>, JobFileError> {
    let at = child(path, name);
    match attr(body, name, &Ty::Number, path)? {
        Value::Number(Number::Int(int)) if range.contains(&int) => Ok(Some(int)),
        Value::Number(_) => Err(JobFileError::Invalid {
            path: at,
            reason: format!(
                "expected a whole number from {} to {}",
                range.start(),
                range.end()
            ),
        }),
        _ => Ok(None),
    }
}

fn single_block<'a>(body: &'a Body, name: &'a str) -> Option<&'a Block> {
    blocks_named(body, name).next()
}

fn parse_job(block: &Block) -> Result<Job, JobFileError> {
    expect_labels(block, 1, "job")?;
    let id = label_text(block, 0).to_owned();
    let path = format!("job {id:?}");
    let body = block.body();
    let mut notes = Vec::new();
    JOB_LEVEL.check(body, &path, &mut notes)?;
    let job_type = match attr_string(body, "type", &path)?.as_deref() {
        None | Some("service") => JobType::Service,
        Some("batch") => JobType::Batch,
        Some("system") => JobType::System,
        Some("sysbatch") => JobType::Sysbatch,
        Some(other) => {
            return Err(JobFileError::Invalid {
                path: child(&path, "type"),
                reason: format!("{other:?} is not one of service, batch, system, sysbatch"),
            });
        }
    };
    let namespace = attr_string(body, "namespace", &path)?.unwrap_or_else(|| "default".to_owned());
    let datacenters =
        attr_strings(body, "datacenters", &path)?.unwrap_or_else(|| vec!["*".to_owned()]);
    let mut groups: Vec<Group> = Vec::new();
    for group in blocks_named(body, "group") {
        let parsed = parse_group(group, job_type, &path, &mut notes)?;
        if groups.iter().any(|existing| existing.name == parsed.name) {
            return Err(JobFileError::Duplicate {
                path: format!("{path} > group {:?}", parsed.name),
            });
        }
        groups.push(parsed);
    }
    if groups.is_empty() {
        return Err(JobFileError::Missing {
            path: format!("{path} > group"),
            what: "block",
        });
    }
    Ok(Job {
        id,
        job_type,
        namespace,
        datacenters,
        groups,
        notes,
    })
}

fn parse_group(
    block: &Block,
    job_type: JobType,
    job_path: &str,
    notes: &mut Vec<String>,
) -> Result<Group, JobFileError> {
    expect_labels(block, 1, &format!("{job_path} > group"))?;
    let name = label_text(block, 0).to_owned();
    let path = format!("{job_path} > group {name:?}");
    let body = block.body();
    GROUP_LEVEL.check(body, &path, notes)?;
    let count = attr_int(body, "count", 0..=i64::from(u32::MAX), &path)?.unwrap_or(1);
    let count = match job_type {
        // One allocation per node, and the dev stack has one node.
        JobType::System | JobType::Sysbatch => 1,
        JobType::Service | JobType::Batch => u32::try_from(count).unwrap_or(u32::MAX),
    };
    let mut tasks: Vec<Task> = Vec::new();
    for task in blocks_named(body, "task") {
        let parsed = parse_task(task, &path, notes)?;
        if tasks.iter().any(|existing| existing.name == parsed.name) {
            return Err(JobFileError::Duplicate {
                path: format!("{path} > task {:?}", parsed.name),
            });
        }
        tasks.push(parsed);
    }
    if tasks.is_empty() {
        return Err(JobFileError::Missing {
            path: format!("{path} > task"),
            what: "block",
        });
    }
    Ok(Group { name, count, tasks })
}

fn parse_task(
    block: &Block,
    group_path: &str,
    notes: &mut Vec<String>,
) -> Result<Task, JobFileError> {
    expect_labels(block, 1, &format!("{group_path} > task"))?;
    let name = label_text(block, 0).to_owned();
    let path = format!("{group_path} > task {name:?}");
    let body = block.body();
    TASK_LEVEL.check(body, &path, notes)?;
    let driver = attr_string(body, "driver", &path)?.ok_or_else(|| JobFileError::Missing {
        path: child(&path, "driver"),
        what: "attribute",
    })?;
    let config = if driver == ECS_DRIVER {
        let empty = Body::default();
        let config_body = single_block(body, "config").map_or(&empty, Block::body);
        Some(decode_task_config(
            config_body,
            &format!("{path} > config"),
        )?)
    } else {
        None
    };
    let kill_timeout = match attr_string(body, "kill_timeout", &path)? {
        None => DEFAULT_KILL_TIMEOUT,
        Some(text) => {
            crate::config::duration::parse(&text).map_err(|reason| JobFileError::Invalid {
                path: child(&path, "kill_timeout"),
                reason,
            })?
        }
    };
    let kill_signal = attr_string(body, "kill_signal", &path)?;
    let user = attr_string(body, "user", &path)?;
    let env = match single_block(body, "env") {
        None => BTreeMap::new(),
        Some(env) => parse_env(env.body(), &format!("{path} > env"))?,
    };
    let resources = match single_block(body, "resources") {
        None => Resources::default(),
        Some(resources) => parse_resources(resources.body(), &format!("{path} > resources"))?,
    };
    Ok(Task {
        name,
        driver,
        config,
        kill_timeout,
        kill_signal,
        env,
        resources,
        user,
    })
}

fn parse_env(body: &Body, path: &str) -> Result<BTreeMap<String, String>, JobFileError> {
    let mut env = BTreeMap::new();
    for structure in body.iter() {
        match structure {
            Structure::Attribute(attribute) => {
                let at = child(path, attribute.key());
                let value = match typed(&literal(attribute.expr(), &at)?, &Ty::String, &at)? {
                    Value::String(text) => text,
                    _ => String::new(),
                };
                env.insert(attribute.key().to_owned(), value);
            }
            Structure::Block(block) => {
                return Err(JobFileError::WrongForm {
                    path: child(path, block.identifier()),
                    expected: "an attribute: NAME = \"value\"",
                });
            }
        }
    }
    Ok(env)
}

fn parse_resources(body: &Body, path: &str) -> Result<Resources, JobFileError> {
    const READ: &[&str] = &["cpu", "memory", "memory_max"];
    const IGNORED: &[&str] = &["cores", "secrets"];
    for structure in body.iter() {
        let (key, what) = match structure {
            Structure::Attribute(attribute) => (attribute.key(), "attribute"),
            Structure::Block(block) => (block.identifier(), "block"),
        };
        if !(READ.contains(&key) || IGNORED.contains(&key) || key == "device" || key == "numa") {
            let mut allowed: Vec<String> = [READ, IGNORED, &["device", "numa"]]
                .concat()
                .iter()
                .map(|key| (*key).to_owned())
                .collect();
            allowed.sort();
            return Err(JobFileError::UnknownKey {
                path: child(path, key),
                what,
                allowed,
            });
        }
    }
    let defaults = Resources::default();
    Ok(Resources {
        cpu: attr_int(body, "cpu", 1..=i64::from(i32::MAX), path)?.unwrap_or(defaults.cpu),
        memory_mb: attr_int(body, "memory", 1..=i64::from(i32::MAX), path)?
            .unwrap_or(defaults.memory_mb),
        memory_max_mb: attr_int(body, "memory_max", 0..=i64::from(i32::MAX), path)?
            .unwrap_or(defaults.memory_max_mb),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Value {
        Value::String(text.to_owned())
    }

    fn strings(items: &[&str]) -> Value {
        Value::List(items.iter().map(|item| s(item)).collect())
    }

    fn object(entries: &[(&str, Value)]) -> Value {
        Value::Map(
            entries
                .iter()
                .map(|(key, value)| ((*key).to_owned(), value.clone()))
                .collect(),
        )
    }

    /// The ecs task config as Nomad builds it for our schema, every key present.
    fn ecs_config(
        launch_type: Value,
        task_definition: &str,
        vpc: Option<(Value, Value, Value)>,
    ) -> Value {
        let network = match vpc {
            None => Value::Null,
            Some((assign_public_ip, security_groups, subnets)) => object(&[(
                "aws_vpc_configuration",
                object(&[
                    ("assign_public_ip", assign_public_ip),
                    ("security_groups", security_groups),
                    ("subnets", subnets),
                ]),
            )]),
        };
        object(&[(
            "task",
            object(&[
                ("launch_type", launch_type),
                ("task_definition", s(task_definition)),
                ("network_configuration", network),
            ]),
        )])
    }

    fn example(name: &str) -> Job {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(name);
        load(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
    }

    /// A job with one ecs task whose `config` body is `config`.
    fn job_with_config(config: &str) -> String {
        format!(
            r#"job "j" {{
                 group "g" {{
                   task "t" {{
                     driver = "ecs"
                     config {{
                       {config}
                     }}
                   }}
                 }}
               }}"#
        )
    }

    fn config_error(config: &str) -> JobFileError {
        parse(&job_with_config(config)).expect_err("the config is refused")
    }

    fn encoded(config: &str) -> Vec<u8> {
        let job = parse(&job_with_config(config)).expect("the config is accepted");
        job.groups[0].tasks[0].encoded_config().expect("ecs config")
    }

    #[test]
    fn the_batch_example_encodes_as_nomad_would() {
        let job = example("hello-batch.nomad.hcl");
        assert_eq!(job.id, "hello-batch");
        assert_eq!(job.job_type, JobType::Batch);
        let tasks: Vec<_> = job.ecs_tasks().collect();
        assert_eq!(tasks.len(), 1);
        let (group, task) = tasks[0];
        assert_eq!(group.count, 1);
        let expected = ecs_config(
            s("FARGATE"),
            "task-definition-from-emulator",
            Some((
                s("DISABLED"),
                strings(&["sg-from-emulator"]),
                strings(&["subnet-from-emulator"]),
            )),
        );
        assert_eq!(task.encoded_config(), Some(cty::encode(&expected)));
    }

    #[test]
    fn the_service_example_encodes_as_nomad_would() {
        let job = example("hello-service.nomad.hcl");
        assert_eq!(job.job_type, JobType::Service);
        let (_, task) = job.ecs_tasks().next().expect("an ecs task");
        let expected = ecs_config(
            s("FARGATE"),
            "task-definition-from-emulator",
            Some((
                Value::Null,
                strings(&["sg-from-emulator"]),
                strings(&["subnet-from-emulator"]),
            )),
        );
        assert_eq!(task.encoded_config(), Some(cty::encode(&expected)));
        assert!(task.kill_timeout >= Duration::from_secs(1));
    }

    #[test]
    fn an_absent_network_configuration_block_is_null() {
        let bytes = encoded(r#"task { task_definition = "web:3" }"#);
        let expected = ecs_config(Value::Null, "web:3", None);
        assert_eq!(bytes, cty::encode(&expected));
    }

    #[test]
    fn an_absent_config_block_gives_an_object_with_a_null_task() {
        let job =
            parse("job \"j\" {\n group \"g\" {\n task \"t\" { driver = \"ecs\" }\n }\n}").unwrap();
        let value = job.groups[0].tasks[0].config.clone();
        assert_eq!(value, Some(object(&[("task", Value::Null)])));
    }

    #[test]
    fn the_encoding_matches_the_driver_decoder() {
        let bytes = encoded(
            r#"task {
                 launch_type = "EC2"
                 task_definition = "web:3"
                 network_configuration {
                   aws_vpc_configuration {
                     subnets = ["subnet-1", "subnet-2"]
                   }
                 }
               }"#,
        );
        let value = cty::decode(&bytes).unwrap();
        let json = crate::task_config::schema().decode(&value).unwrap();
        let raw: crate::task_config::RawTaskConfig = serde_json::from_value(json).unwrap();
        let config = crate::task_config::TaskConfig::try_from(raw).unwrap();
        assert_eq!(config.task_definition, "web:3");
        assert_eq!(
            config.vpc.unwrap().subnets,
            vec!["subnet-1".to_owned(), "subnet-2".to_owned()]
        );
    }

    #[test]
    fn an_unknown_attribute_is_an_error_naming_its_path() {
        let error = config_error("task {\n task_definition = \"a:1\"\n cpu = 256\n}");
        assert!(
            matches!(
                &error,
                JobFileError::UnknownKey {
                    what: "attribute",
                    ..
                }
            ),
            "{error:?}"
        );
        assert_eq!(
            error.path(),
            Some(r#"job "j" > group "g" > task "t" > config.task.cpu"#)
        );
        let message = error.to_string();
        assert!(message.contains("`task_definition`"), "{message}");
    }

    #[test]
    fn an_unknown_block_is_an_error_naming_its_path() {
        let error = config_error("task {\n overrides { cpu = 1 }\n}");
        assert!(
            matches!(&error, JobFileError::UnknownKey { what: "block", .. }),
            "{error:?}"
        );
        assert_eq!(
            error.path(),
            Some(r#"job "j" > group "g" > task "t" > config.task.overrides"#)
        );
    }

    #[test]
    fn a_string_where_a_list_is_expected_is_a_type_error() {
        let error = config_error(
            "task {\n network_configuration {\n aws_vpc_configuration { subnets = \"x\" }\n }\n}",
        );
        match &error {
            JobFileError::WrongType {
                path,
                expected,
                found,
            } => {
                assert!(
                    path.ends_with(
                        "config.task.network_configuration.aws_vpc_configuration.subnets"
                    ),
                    "{path}"
                );
                assert_eq!(expected, "list(string)");
                assert_eq!(found, "string");
            }
            other => panic!("expected a type error, got {other:?}"),
        }
    }

    #[test]
    fn a_list_element_of_the_wrong_type_is_named_by_index() {
        let error = config_error(
            "task {\n network_configuration {\n aws_vpc_configuration { subnets = [\"a\", [\"b\"]] }\n }\n}",
        );
        assert!(error.path().unwrap().ends_with("subnets[1]"), "{error}");
    }

    #[test]
    fn numbers_and_bools_convert_to_strings_as_cty_does() {
        let bytes = encoded("task {\n task_definition = 12\n launch_type = true\n}");
        let expected = ecs_config(s("true"), "12", None);
        assert_eq!(bytes, cty::encode(&expected));
    }

    #[test]
    fn interpolation_is_refused_as_not_a_literal() {
        let error = config_error(r#"task { task_definition = "web:${NOMAD_ALLOC_INDEX}" }"#);
        assert!(
            matches!(&error, JobFileError::NotLiteral { .. }),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(message.contains("literal values only"), "{message}");
        assert!(message.ends_with("write the value itself"), "{message}");
    }

    #[test]
    fn variables_and_function_calls_are_refused() {
        for config in [
            r#"task { task_definition = var.family }"#,
            r#"task { task_definition = upper("a") }"#,
            r#"task { task_definition = "a" == "b" ? "c" : "d" }"#,
        ] {
            assert!(
                matches!(config_error(config), JobFileError::NotLiteral { .. }),
                "{config}"
            );
        }
    }

    #[test]
    fn an_escaped_dollar_brace_and_a_plain_heredoc_are_literals() {
        let bytes =
            encoded("task {\n task_definition = \"$${x}\"\n launch_type = <<EOT\nFARGATE\nEOT\n}");
        let expected = ecs_config(s("FARGATE\n"), "${x}", None);
        assert_eq!(bytes, cty::encode(&expected));
    }

    #[test]
    fn a_block_written_as_an_attribute_is_refused() {
        let error = config_error(r#"task = { task_definition = "a:1" }"#);
        assert!(
            matches!(&error, JobFileError::WrongForm { .. }),
            "{error:?}"
        );
    }

    #[test]
    fn a_repeated_single_block_is_refused() {
        let error = config_error("task { task_definition = \"a:1\" }\ntask {}");
        assert!(
            matches!(&error, JobFileError::Duplicate { .. }),
            "{error:?}"
        );
    }

    #[test]
    fn labels_on_a_config_block_are_refused() {
        let error = config_error(r#"task "x" { task_definition = "a:1" }"#);
        assert!(matches!(&error, JobFileError::Labels { .. }), "{error:?}");
    }

    #[test]
    fn schema_defaults_block_lists_and_other_types_follow_hcldec() {
        let schema = Object::new()
            .attr_default("enabled", Ty::Bool, "false")
            .attr_default("timeout", Ty::Number, "30")
            .attr_default("mode", Ty::String, "\"fast\"")
            .attr("ratio", Ty::Number)
            .attr("labels", Ty::map(Ty::String))
            .attr("tags", Ty::set(Ty::String))
            .attr("extra", Ty::Any)
            .block_list(
                "mount",
                Object::new()
                    .attr("source", Ty::String)
                    .attr("readonly", Ty::Bool),
            );
        let body = hcl::parse(
            r#"
            timeout = "45"
            ratio = 0.1
            labels = { b = 2, "a" = "x" }
            tags = ["z", "a", "z"]
            extra = { k = [1, "two"] }
            mount { source = "/a" }
            mount { readonly = "true" }
            "#,
        )
        .unwrap();
        let value = decode_body(&schema, &body, "").unwrap();
        let number = |int| Value::Number(Number::Int(int));
        let expected = object(&[
            ("enabled", Value::Bool(false)),
            ("timeout", number(45)),
            ("mode", s("fast")),
            ("ratio", Value::Number(Number::Text("0.1".to_owned()))),
            ("labels", object(&[("b", s("2")), ("a", s("x"))])),
            ("tags", strings(&["a", "z"])),
            (
                "extra",
                object(&[("k", Value::List(vec![number(1), s("two")]))]),
            ),
            (
                "mount",
                Value::List(vec![
                    object(&[("source", s("/a")), ("readonly", Value::Null)]),
                    object(&[("source", Value::Null), ("readonly", Value::Bool(true))]),
                ]),
            ),
        ]);
        assert_eq!(cty::encode(&value), cty::encode(&expected));
        // 0.1 is not exact in binary: cty sends its decimal text.
        assert!(
            cty::encode(&value)
                .windows(4)
                .any(|w| w == [0xa3, b'0', b'.', b'1'])
        );
    }

    #[test]
    fn the_protocol_doc_task_vector_is_reproduced() {
        // Protocol doc §5.1, test vector 2.
        let schema = Object::new()
            .required_attr("command", Ty::String)
            .attr("args", Ty::list(Ty::String))
            .attr("env_map", Ty::map(Ty::String))
            .attr_default("privileged", Ty::Bool, "false")
            .attr_default("timeout", Ty::Number, "30")
            .block_list(
                "mount",
                Object::new()
                    .attr("source", Ty::String)
                    .attr("readonly", Ty::Bool),
            );
        let body =
            hcl::parse("command = \"/bin/sleep\"\nargs = [\"10\"]\nmount { source = \"/a\" }\n")
                .unwrap();
        let hex = "86 a4 61 72 67 73 91 a2 31 30 a7 63 6f 6d 6d 61 6e 64 aa 2f 62 69 6e 2f 73 6c 65 65 70 \
                   a7 65 6e 76 5f 6d 61 70 c0 a5 6d 6f 75 6e 74 91 82 a8 72 65 61 64 6f 6e 6c 79 c0 a6 73 \
                   6f 75 72 63 65 a2 2f 61 aa 70 72 69 76 69 6c 65 67 65 64 c2 a7 74 69 6d 65 6f 75 74 1e";
        let expected: Vec<u8> = hex
            .split_whitespace()
            .map(|byte| u8::from_str_radix(byte, 16).unwrap())
            .collect();
        assert_eq!(
            cty::encode(&decode_body(&schema, &body, "").unwrap()),
            expected
        );
        let missing = decode_body(&schema, &Body::default(), "").unwrap_err();
        assert!(
            matches!(
                missing,
                JobFileError::Missing {
                    what: "attribute",
                    ..
                }
            ),
            "{missing:?}"
        );
    }

    #[test]
    fn job_structure_keys_are_read_ignored_or_refused() {
        let job = parse(
            r#"job "web" {
                 datacenters = ["dc1"]
                 namespace = "dev"
                 update { max_parallel = 1 }
                 group "g" {
                   count = 2
                   restart { attempts = 0 }
                   task "t" {
                     driver = "ecs"
                     kill_timeout = "20s"
                     kill_signal = "SIGTERM"
                     env {
                       GREETING = "hi"
                       N = 3
                     }
                     resources {
                       cpu = 256
                       memory = 512
                     }
                     config {
                       task { task_definition = "a:1" }
                     }
                   }
                   task "side" {
                     driver = "docker"
                     config { image = "redis" }
                   }
                 }
               }"#,
        )
        .unwrap();
        assert_eq!(job.job_type, JobType::Service);
        assert_eq!(job.namespace, "dev");
        assert_eq!(job.datacenters, vec!["dc1".to_owned()]);
        assert_eq!(job.notes.len(), 2, "{:?}", job.notes);
        assert!(job.notes[1].contains("`restart`"), "{:?}", job.notes);
        let group = &job.groups[0];
        assert_eq!(group.count, 2);
        let task = &group.tasks[0];
        assert_eq!(task.kill_timeout, Duration::from_secs(20));
        assert_eq!(task.kill_signal.as_deref(), Some("SIGTERM"));
        assert_eq!(task.env.get("N").map(String::as_str), Some("3"));
        assert_eq!(task.resources.cpu, 256);
        assert_eq!(task.resources.memory_mb, 512);
        assert!(!group.tasks[1].is_ecs());
        assert_eq!(
            group.tasks[1].config, None,
            "other drivers' config is not ours to read"
        );
        assert_eq!(job.ecs_tasks().count(), 1);

        let error = parse("job \"j\" {\n group \"g\" {\n task \"t\" {\n driver = \"ecs\"\n image = \"x\"\n }\n }\n}")
            .unwrap_err();
        assert_eq!(
            error.path(),
            Some(r#"job "j" > group "g" > task "t".image"#)
        );
        let error = parse(
            "job \"j\" {\n group \"g\" {\n count = -1\n task \"t\" { driver = \"ecs\" }\n }\n}",
        )
        .unwrap_err();
        assert!(matches!(error, JobFileError::Invalid { .. }), "{error:?}");
        let error =
            parse("job \"j\" {\n group \"g\" {\n task \"t\" {\n config {}\n }\n }\n}").unwrap_err();
        assert!(matches!(error, JobFileError::Missing { .. }), "{error:?}");
        let error = parse(r#"variable "x" {} "#).unwrap_err();
        assert!(
            matches!(error, JobFileError::UnknownKey { .. }),
            "{error:?}"
        );
        assert!(matches!(
            parse("job \"j\" {").unwrap_err(),
            JobFileError::ParseFailed { .. }
        ));
    }
}
