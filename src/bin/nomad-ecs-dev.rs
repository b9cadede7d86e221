//! nomad-ecs-dev: runs a Nomad job file's `ecs` tasks end to end on the local emulated stack.
//!
//! ```text
//! nomad-ecs-dev run JOB_FILE [--exit-code N] [--run-for DURATION] [--plugin PATH]
//!                            [--timeout DURATION] [--verbose]
//! nomad-ecs-dev drain JOB_FILE [--node-loss] [--run-for DURATION] [--plugin PATH]
//!                              [--timeout DURATION] [--verbose]
//! ```
//!
//! `run` starts the ECS emulator (moto, on loopback) with the fidelity proxy in front of it,
//! loads the real plugin binary under the emulated Nomad client (the agent's load sequence), and
//! then does what a Nomad client does with the job: for each allocation (`count` per group) it
//! starts each `driver = "ecs"` task with a `TaskConfig` whose `msgpack_driver_config` is the
//! task's `config {}` block encoded as Nomad encodes it, prints the TaskEvents stream as it
//! arrives, lets the task run for `--run-for`, ends it, waits for its exit result and destroys
//! it. Then it shuts the plugin down gracefully and stops the proxy and the emulator.
//!
//! How a task ends: in a batch (or sysbatch) job, or when `--exit-code` is given, the essential
//! container exits with `--exit-code` (default 0) through the proxy, as if the program had
//! finished; in a service (or system) job it is stopped with StopTask, as Nomad does on
//! `nomad job stop`. The tool exits 0 when every task ended as asked (the exit code asked for,
//! or a clean stop), 1 otherwise or on any failure, and 2 for bad arguments.
//!
//! `drain` shows the takeover of current Nomad (1.10 and later, where the driver asks the Nomad
//! HTTP API; design.md, "Takeover") on a job with one `ecs` task in one allocation. Besides the
//! emulator and the proxy it starts the emulated Nomad HTTP API and two emulated client nodes,
//! `node-a` and `node-b`: two plugin processes, each loaded by its own emulated Nomad client with
//! its own state directory and `nomad_address` pointing at that API. The task starts on node-a;
//! then node-a is drained: the API marks the allocation as migrating to a replacement on node-b,
//! node-a's client stops it (StopTask with the task's kill signal), and the driver hands the ECS
//! task off (a clean exit; the ECS task keeps running); node-b's client starts the replacement
//! and the driver adopts the same ECS task (no RunTask). With `--node-loss`, node-a's plugin is
//! SIGKILLed instead and the API marks the allocation lost; node-b adopts the task the same way;
//! then node-a comes back (a new plugin on its state directory, RecoverTask, then StopTask for
//! the lost allocation) and lets go of the task without stopping it. Either way the job is then
//! stopped (`nomad job stop`: StopTask on node-b) and must exit cleanly. The tool checks what it
//! prints: it fails if the ARN changed, RunTask ran more than once, or the ECS task was stopped
//! before the job stop.
//!
//! Values in `config` the tool fills in from the seeded emulator: `"task-definition-from-emulator"`,
//! `"subnet-from-emulator"` (all seeded subnets) and `"sg-from-emulator"` (the seeded security
//! groups). Everything it starts lives in temporary directories and child processes that end with
//! it, so it can run any number of times in a row; the whole run is bounded by `--timeout`. The
//! plugin never sees the user's own `NOMAD_ADDR` or `NOMAD_TOKEN`: nothing leaves loopback.
//!
//! Progress goes to stdout, one line per step; errors and (with `--verbose`) the plugin's own
//! log lines go to stderr.

use std::collections::BTreeMap;
use std::hash::{BuildHasher as _, Hasher as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context as _, bail};
use nomad_driver_ecs::cty::Value;
use nomad_driver_ecs::devstack::ecs_proxy::EcsProxy;
use nomad_driver_ecs::devstack::emulator::{self, RunningEmulator, Seed};
use nomad_driver_ecs::devstack::host::{
    DriverInstance, LaunchOptions, NomadClientHost, Recording, StreamEnd, WaitError,
};
use nomad_driver_ecs::devstack::jobfile::{self, Group, Job, JobFileError, Task};
use nomad_driver_ecs::devstack::nomad_api::{AllocState, NomadApiServer};
use nomad_driver_ecs::driver::handle::DriverState;
use nomad_driver_ecs::proto::drivers as pb;

/// The ECS cluster the emulator is seeded with.
const CLUSTER: &str = "nomad";
/// The plugin binary's file name, as in a Nomad `plugin_dir`.
const PLUGIN_NAME: &str = "nomad-driver-ecs";
/// Default `--run-for`.
const DEFAULT_RUN_FOR: Duration = Duration::from_secs(3);
/// Default `--timeout`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on each plugin RPC and on the plugin's start.
const RPC_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the driver may take to report healthy, an ECS task to reach RUNNING, or WaitTask
/// to answer after the task ended.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// Most ECS tasks one run starts (allocations times ecs tasks per group).
const MAX_TASKS: usize = 16;
/// Plugin log lines shown on failure.
const LOG_TAIL_LINES: usize = 20;

/// Placeholder for the seeded task definition.
const TASK_DEFINITION_PLACEHOLDER: &str = "task-definition-from-emulator";
/// Placeholder for the seeded subnets.
const SUBNET_PLACEHOLDER: &str = "subnet-from-emulator";
/// Placeholder for the seeded security groups.
const SECURITY_GROUP_PLACEHOLDER: &str = "sg-from-emulator";

const USAGE: &str = "\
usage: nomad-ecs-dev run JOB_FILE [options]
       nomad-ecs-dev drain JOB_FILE [--node-loss] [options]

run     runs the job file's `driver = \"ecs\"` tasks with the real plugin under an
        emulated Nomad client, against a local ECS emulator (moto).
drain   a takeover on current Nomad (1.10+): the job's one ecs task starts on node-a,
        node-a is drained, and the replacement allocation on node-b adopts the running
        ECS task (same ARN, no second RunTask); then the job is stopped.
Nothing leaves loopback.

options:
  --exit-code N        (run) make the essential container exit with code N after --run-for
                       (the default for batch jobs, with N = 0)
  --node-loss          (drain) node-a's plugin is SIGKILLed and the node marked lost instead
                       of drained; node-a then comes back and lets go of the ECS task
  --run-for DURATION   how long each task runs before it is ended (run) or moved (drain)
                       (default 3s)
  --plugin PATH        the plugin binary (default: nomad-driver-ecs next to this program)
  --timeout DURATION   bound on the whole run (default 120s)
  --verbose            copy the plugin's log lines to stderr
  -h, --help           this text

run: service jobs are stopped with StopTask after --run-for unless --exit-code is given.
drain: the job needs exactly one ecs task in one allocation (count = 1).
Exit status: 0 when every task ended as asked, 1 otherwise, 2 for bad arguments.";

/// The command line.
#[derive(Debug, Clone, PartialEq)]
struct Args {
    job_file: PathBuf,
    exit_code: Option<i32>,
    run_for: Duration,
    plugin: Option<PathBuf>,
    timeout: Duration,
    verbose: bool,
    /// `drain --node-loss`.
    node_loss: bool,
}

/// What the command line asks for.
#[derive(Debug, PartialEq)]
enum Command {
    Run(Args),
    Drain(Args),
    Help,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Command, String> {
    let duration = |flag: &str, text: Option<String>| -> Result<Duration, String> {
        let text = text.ok_or_else(|| format!("{flag} needs a value, e.g. 3s"))?;
        nomad_driver_ecs::config::duration::parse(&text).map_err(|e| format!("{flag}: {e}"))
    };
    let drain = match args.next().as_deref() {
        Some("run") => false,
        Some("drain") => true,
        Some("-h" | "--help" | "help") => return Ok(Command::Help),
        Some(other) => {
            return Err(format!(
                "unknown command {other:?}; the commands are `run` and `drain`"
            ));
        }
        None => return Err("no command given".to_owned()),
    };
    let mut job_file = None;
    let mut parsed = Args {
        job_file: PathBuf::new(),
        exit_code: None,
        run_for: DEFAULT_RUN_FOR,
        plugin: None,
        timeout: DEFAULT_TIMEOUT,
        verbose: false,
        node_loss: false,
    };
    while let Some(arg) = args.next() {
        // Accept `--flag=value` as well as `--flag value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_owned(), Some(value.to_owned()))
            }
            _ => (arg.clone(), None),
        };
        let mut value = || inline.clone().or_else(|| args.next());
        match flag.as_str() {
            "--exit-code" => {
                let text = value().ok_or("--exit-code needs a value, e.g. 3")?;
                let code: i32 = text
                    .parse()
                    .map_err(|_| format!("--exit-code: {text:?} is not a whole number"))?;
                if !(0..=255).contains(&code) {
                    return Err(format!(
                        "--exit-code: {code} is not an exit code (0 to 255)"
                    ));
                }
                parsed.exit_code = Some(code);
            }
            "--run-for" => parsed.run_for = duration("--run-for", value())?,
            "--timeout" => parsed.timeout = duration("--timeout", value())?,
            "--plugin" => {
                parsed.plugin = Some(PathBuf::from(value().ok_or("--plugin needs a path")?));
            }
            "--verbose" | "-v" => parsed.verbose = true,
            "--node-loss" if inline.is_some() => {
                return Err("--node-loss takes no value".to_owned());
            }
            "--node-loss" => parsed.node_loss = true,
            "-h" | "--help" => return Ok(Command::Help),
            _ if flag.starts_with('-') => return Err(format!("unknown option {flag:?}")),
            _ if job_file.is_none() => job_file = Some(PathBuf::from(arg)),
            _ => return Err(format!("unexpected argument {arg:?}: give one job file")),
        }
    }
    if parsed.timeout.is_zero() {
        return Err("--timeout must be more than 0s".to_owned());
    }
    if drain && parsed.exit_code.is_some() {
        return Err(
            "--exit-code is for `run`; `drain` ends the job with a job stop (StopTask)".to_owned(),
        );
    }
    if !drain && parsed.node_loss {
        return Err("--node-loss is for `drain`".to_owned());
    }
    parsed.job_file = job_file.ok_or("no job file given")?;
    Ok(if drain {
        Command::Drain(parsed)
    } else {
        Command::Run(parsed)
    })
}

fn main() -> ExitCode {
    let (args, drain) = match parse_args(std::env::args().skip(1)) {
        Ok(Command::Run(args)) => (args, false),
        Ok(Command::Drain(args)) => (args, true),
        Ok(Command::Help) => {
            say(USAGE);
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("nomad-ecs-dev: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("nomad-ecs-dev: error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let phase = Phase::default();
    let outcome = runtime.block_on(async {
        let work = async {
            if drain {
                takeover(&args, &phase).await
            } else {
                run(&args, &phase).await
            }
        };
        tokio::select! {
            result = tokio::time::timeout(args.timeout, work) => match result {
                Ok(result) => result,
                Err(_) => Err(anyhow::anyhow!(
                    "gave up after {:?} while {}; everything it started has been stopped \
                     (a longer --timeout may help on a slow machine)",
                    args.timeout,
                    phase.get()
                )),
            },
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!(
                "interrupted while {}; everything it started has been stopped",
                phase.get()
            )),
        }
    });
    // Whatever is left (a dropped run's emulator or plugin) has been stopped by its Drop.
    runtime.shutdown_timeout(Duration::from_secs(2));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("nomad-ecs-dev: error: {error:#}");
            ExitCode::from(1)
        }
    }
}

/// What the run is doing, for the timeout and interrupt messages.
#[derive(Default)]
struct Phase(Mutex<String>);

impl Phase {
    fn set(&self, what: impl Into<String>) {
        if let Ok(mut phase) = self.0.lock() {
            *phase = what.into();
        }
    }

    fn get(&self) -> String {
        self.0
            .lock()
            .map(|phase| phase.clone())
            .unwrap_or_else(|_| "running".to_owned())
    }
}

/// One progress line on stdout. A closed stdout (`| head`) is not an error: the run goes on.
fn say(line: impl AsRef<str>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout().lock(), "{}", line.as_ref());
}

/// How each task is ended after `--run-for`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The essential container exits with this code.
    Exit(i32),
    /// Nomad stops the task (StopTask).
    Stop,
}

async fn run(args: &Args, phase: &Phase) -> anyhow::Result<()> {
    let job = load_job(phase, &args.job_file)?;
    let ending = match (args.exit_code, job.job_type.runs_to_completion()) {
        (Some(code), _) => Ending::Exit(code),
        (None, true) => Ending::Exit(0),
        (None, false) => Ending::Stop,
    };
    let planned = plan(&job)?;
    let plugin = plugin_binary(args.plugin.as_deref())?;
    say(format!(
        "==> job {:?} ({}) from {}: {} ecs task(s) in {} allocation(s)",
        job.id,
        job.job_type,
        args.job_file.display(),
        planned.len(),
        allocation_count(&planned),
    ));
    say_notes(&job);

    let (emu, seed) = start_emulator(phase).await?;
    let result = with_emulator(args, phase, &job, &planned, ending, &plugin, &emu, &seed).await;
    stop_emulator(phase, emu).await;
    result?;
    say(format!("==> done: job {:?} behaved as asked", job.id));
    Ok(())
}

/// Reads and decodes the job file.
fn load_job(phase: &Phase, path: &Path) -> anyhow::Result<Job> {
    phase.set("reading the job file");
    jobfile::load(path).map_err(|error| match error {
        // That message names the file already.
        JobFileError::ReadFailed { .. } => anyhow::Error::new(error),
        other => anyhow::Error::new(other).context(format!("job file {}", path.display())),
    })
}

/// The job file's notes, and the tasks the tool leaves out.
fn say_notes(job: &Job) {
    for note in &job.notes {
        say(format!("    note: {note}"));
    }
    for (group, task) in job
        .groups
        .iter()
        .flat_map(|group| group.tasks.iter().map(move |task| (group, task)))
        .filter(|(_, task)| !task.is_ecs())
    {
        say(format!(
            "    note: skipping task {:?} of group {:?} (driver {:?}): the dev tool runs ecs tasks only",
            task.name, group.name, task.driver
        ));
    }
}

/// Starts and seeds the ECS emulator.
async fn start_emulator(phase: &Phase) -> anyhow::Result<(RunningEmulator, Seed)> {
    phase.set("starting the ECS emulator");
    say("==> starting the ECS emulator (moto) on loopback");
    let emu = emulator::start_default(CLUSTER)
        .await
        .context("starting the ECS emulator")?;
    let seed = emu.seed().clone();
    say(format!(
        "    ECS at {} (cluster {:?}, task definition {}, subnets {}, security groups {})",
        emu.endpoint(),
        seed.cluster,
        seed.task_definition,
        seed.subnets.join(","),
        seed.security_groups.join(","),
    ));
    Ok((emu, seed))
}

async fn stop_emulator(phase: &Phase, emu: RunningEmulator) {
    phase.set("stopping the ECS emulator");
    // Its Drop blocks for up to a few seconds while moto stops.
    let stopped = tokio::task::spawn_blocking(move || drop(emu)).await;
    if stopped.is_ok() {
        say("==> stopped the ECS emulator");
    }
}

/// One task to start: the group's allocation index and the task.
struct Planned<'a> {
    group: &'a Group,
    index: u32,
    task: &'a Task,
}

fn plan(job: &Job) -> anyhow::Result<Vec<Planned<'_>>> {
    let mut planned = Vec::new();
    for group in &job.groups {
        for index in 0..group.count {
            for task in group.tasks.iter().filter(|task| task.is_ecs()) {
                planned.push(Planned { group, index, task });
                if planned.len() > MAX_TASKS {
                    bail!(
                        "job {:?} would start more than {MAX_TASKS} ECS tasks; lower the groups' `count`",
                        job.id
                    );
                }
            }
        }
    }
    if planned.is_empty() {
        bail!(
            "job {:?} has no task with driver = \"ecs\" to run (or every such group has count = 0)",
            job.id
        );
    }
    Ok(planned)
}

fn allocation_count(planned: &[Planned<'_>]) -> usize {
    let mut allocs: Vec<(&str, u32)> = planned
        .iter()
        .map(|p| (p.group.name.as_str(), p.index))
        .collect();
    allocs.dedup();
    allocs.len()
}

/// The plugin binary: `--plugin`, else `nomad-driver-ecs` next to this program.
fn plugin_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(path) => path.to_owned(),
        None => std::env::current_exe()
            .context("finding this program's own path")?
            .parent()
            .map(|dir| dir.join(PLUGIN_NAME))
            .context("this program's path has no directory")?,
    };
    if !path.is_file() {
        bail!(
            "the plugin binary {} does not exist; build it with `cargo build --bins` or pass --plugin PATH",
            path.display()
        );
    }
    Ok(path)
}

#[allow(clippy::too_many_arguments)] // the run's parts, passed down once
async fn with_emulator(
    args: &Args,
    phase: &Phase,
    job: &Job,
    planned: &[Planned<'_>],
    ending: Ending,
    plugin: &Path,
    emu: &RunningEmulator,
    seed: &Seed,
) -> anyhow::Result<()> {
    let proxy = EcsProxy::start(emu.endpoint())
        .await
        .context("starting the ECS fidelity proxy")?;
    say(format!("    ECS fidelity proxy at {}", proxy.endpoint()));
    let state = tempfile::Builder::new()
        .prefix("nomad-ecs-dev-")
        .tempdir()
        .context("creating the driver's temporary state directory")?;

    phase.set("loading the plugin");
    say(format!(
        "==> loading the plugin {} under the emulated Nomad client",
        plugin.display()
    ));
    let state_dir = state.path().join("state");
    let agent_config = agent_config(&proxy.endpoint(), &seed.region, &state_dir, None)?;
    let host = NomadClientHost::new(launch_options(plugin, state.path())?, agent_config)
        .rpc_timeout(RPC_TIMEOUT);
    let loaded = host
        .load()
        .await
        .context("the Nomad client's plugin load sequence")?;
    say(format!(
        "    plugin {} {} (driver API {})",
        loaded.facts.plugin_info.name,
        loaded.facts.plugin_info.plugin_version,
        loaded.facts.api_version
    ));
    let mut instance = loaded.instance;
    let logs = instance.process().stderr().clone();
    let log_copier = args
        .verbose
        .then(|| tokio::spawn(copy_logs(logs.clone(), "plugin".to_owned())));

    let result = async {
        wait_healthy(&mut instance, phase, "").await?;
        let printer = EventPrinter::start(instance.events().clone(), "");
        let driven = drive(args, phase, job, planned, ending, &instance, &proxy, seed).await;
        printer.stop().await;
        driven
    }
    .await;

    phase.set("shutting the plugin down");
    let shutdown = instance.shutdown().await;
    if shutdown.kill.exited_gracefully() {
        say("==> plugin shut down gracefully (Driver.Shutdown, then go-plugin's kill)");
    } else {
        say(format!(
            "==> plugin did not exit by itself; it was {:?}",
            shutdown.kill.path
        ));
    }
    if let Some(copier) = log_copier {
        copier.abort();
    }
    if result.is_err() && !args.verbose {
        print_log_tail("plugin", &logs);
    }
    drop(proxy);
    say("==> stopped the ECS proxy");
    drop(state);
    result
}

/// Prints the last warnings and errors of a plugin's log to stderr, after a failure.
fn print_log_tail(label: &str, logs: &Recording<String>) {
    let lines: Vec<String> = logs
        .snapshot()
        .into_iter()
        .filter(|line| line.contains(r#""@level":"warn""#) || line.contains(r#""@level":"error""#))
        .collect();
    if !lines.is_empty() {
        eprintln!(
            "nomad-ecs-dev: the {label}'s last warnings and errors (all of its log: --verbose):"
        );
        for line in &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..] {
            eprintln!("  {line}");
        }
    }
}

/// The agent's `plugin "nomad-driver-ecs" { config { ... } }` block, encoded as Nomad does:
/// the HCL body decoded with the plugin's own config schema. `nomad_address` is the Nomad HTTP
/// API the driver asks about drains and lost nodes; without it the driver runs without one.
fn agent_config(
    endpoint: &str,
    region: &str,
    state_dir: &Path,
    nomad_address: Option<&str>,
) -> anyhow::Result<Vec<u8>> {
    let state_dir = state_dir
        .to_str()
        .context("the temporary state directory's path is not UTF-8")?;
    let mut body = hcl::Body::builder()
        .add_attribute(("enabled", true))
        .add_attribute(("cluster", CLUSTER))
        .add_attribute(("region", region))
        .add_attribute(("endpoint", endpoint))
        .add_attribute(("state_dir", state_dir))
        .add_attribute(("fingerprint_interval", "1s"))
        .add_attribute(("reconcile_interval", "1s"));
    if let Some(address) = nomad_address {
        body = body.add_attribute(("nomad_address", address));
    }
    let body = body.build();
    let value = jobfile::decode_body(&nomad_driver_ecs::config::schema(), &body, "plugin.config")
        .context("encoding the agent's plugin block")?;
    Ok(nomad_driver_ecs::cty::encode(&value))
}

/// How the client launches the plugin: static dummy credentials, empty AWS config files in
/// `scratch`, no instance-metadata lookups, and none of the user's Nomad API settings (the
/// driver would otherwise default to their `NOMAD_ADDR` and `NOMAD_TOKEN`), so nothing leaves
/// loopback and the user's own AWS and Nomad settings play no part.
fn launch_options(plugin: &Path, scratch: &Path) -> anyhow::Result<LaunchOptions> {
    let aws_config = scratch.join("aws-config");
    let aws_credentials = scratch.join("aws-credentials");
    for file in [&aws_config, &aws_credentials] {
        std::fs::write(file, "")
            .with_context(|| format!("creating the empty AWS file {}", file.display()))?;
    }
    Ok(LaunchOptions::new(plugin)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_SESSION_TOKEN", "")
        .env("AWS_PROFILE", "")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", aws_config.to_string_lossy())
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            aws_credentials.to_string_lossy(),
        )
        .env("NOMAD_ECS_CONFIG_FILE", "")
        .env("NOMAD_ADDR", "")
        .env("NOMAD_TOKEN", "")
        .env("NOMAD_CACERT", "")
        .env("NOMAD_CLIENT_CERT", "")
        .env("NOMAD_CLIENT_KEY", "")
        .env("NOMAD_TLS_SERVER_NAME", "")
        .start_timeout(RPC_TIMEOUT))
}

/// Copies a plugin's log lines to stderr, each after `label`.
async fn copy_logs(logs: Recording<String>, label: String) {
    for index in 0.. {
        match logs.wait_for_index(index, Duration::from_secs(3600)).await {
            Ok(line) => eprintln!("{label}: {line}"),
            Err(WaitError::Timeout { .. }) => {}
            Err(WaitError::Ended { .. }) => return,
        }
    }
}

/// Waits until the driver fingerprints healthy, as Nomad does before placing tasks on it.
/// `node` names the emulated client node in the progress line (empty: there is one).
async fn wait_healthy(
    instance: &mut DriverInstance,
    phase: &Phase,
    node: &str,
) -> anyhow::Result<()> {
    phase.set(format!(
        "waiting for the driver{} to fingerprint healthy",
        on_node(node)
    ));
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    let mut last = String::from("no fingerprint yet");
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            bail!("the driver did not report healthy within {STEP_TIMEOUT:?}: {last}");
        }
        let fingerprint = match instance.next_fingerprint(left).await {
            Ok(fingerprint) => fingerprint,
            Err(WaitError::Timeout { .. }) => continue,
            Err(WaitError::Ended { end, .. }) => {
                bail!(
                    "the driver's Fingerprint stream ended ({}); last: {last}",
                    describe_end(&end)
                )
            }
        };
        let health = pb::fingerprint_response::HealthState::try_from(fingerprint.health)
            .unwrap_or(pb::fingerprint_response::HealthState::Undetected);
        last = format!("{health:?}: {}", fingerprint.health_description);
        if health == pb::fingerprint_response::HealthState::Healthy {
            let cluster = fingerprint
                .attributes
                .get("driver.ecs.cluster")
                .and_then(|attribute| attribute.value.as_ref())
                .map(|value| format!(" for ECS cluster {}", attribute_text(value)))
                .unwrap_or_default();
            say(format!(
                "    {}driver fingerprint: healthy{cluster}",
                node_prefix(node)
            ));
            return Ok(());
        }
    }
}

fn attribute_text(value: &nomad_driver_ecs::proto::structs::attribute::Value) -> String {
    use nomad_driver_ecs::proto::structs::attribute::Value as V;
    match value {
        V::StringVal(text) => text.clone(),
        other => format!("{other:?}"),
    }
}

fn describe_end(end: &StreamEnd) -> String {
    format!("{end:?}")
}

/// `"node-a: "` before a progress line about one node; nothing when there is one node.
fn node_prefix(node: &str) -> String {
    if node.is_empty() {
        String::new()
    } else {
        format!("{node}: ")
    }
}

/// `" on node-a"`; nothing when there is one node.
fn on_node(node: &str) -> String {
    if node.is_empty() {
        String::new()
    } else {
        format!(" on {node}")
    }
}

/// Prints TaskEvents messages as they arrive.
struct EventPrinter {
    events: Recording<pb::DriverTaskEvent>,
    node: &'static str,
    printed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl EventPrinter {
    /// Prints `events` as they arrive, after `node`'s name (empty: there is one node).
    fn start(events: Recording<pb::DriverTaskEvent>, node: &'static str) -> Self {
        let printed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let task = tokio::spawn({
            let events = events.clone();
            let printed = printed.clone();
            async move {
                loop {
                    let next = printed.load(std::sync::atomic::Ordering::SeqCst);
                    match events.wait_for_index(next, Duration::from_secs(3600)).await {
                        Ok(event) => {
                            print_event(&event, node);
                            printed.store(next + 1, std::sync::atomic::Ordering::SeqCst);
                        }
                        Err(WaitError::Timeout { .. }) => {}
                        Err(WaitError::Ended { .. }) => return,
                    }
                }
            }
        });
        Self {
            events,
            node,
            printed,
            task,
        }
    }

    /// Stops printing, after printing whatever has arrived.
    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
        let printed = self.printed.load(std::sync::atomic::Ordering::SeqCst);
        for event in self.events.snapshot().iter().skip(printed) {
            print_event(event, self.node);
        }
    }
}

fn print_event(event: &pb::DriverTaskEvent, node: &str) {
    // Annotations the message already shows (the ARN, usually) would only repeat it.
    let annotations: BTreeMap<_, _> = event
        .annotations
        .iter()
        .filter(|(_, value)| !event.message.contains(value.as_str()))
        .collect();
    let annotations = if annotations.is_empty() {
        String::new()
    } else {
        let pairs: Vec<String> = annotations
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        format!(" ({})", pairs.join(", "))
    };
    say(format!(
        "    {}task event [{}]: {}{annotations}",
        node_prefix(node),
        event.task_name,
        event.message
    ));
}

/// A started task.
struct Started<'a> {
    planned: &'a Planned<'a>,
    task_id: String,
    arn: String,
}

#[allow(clippy::too_many_arguments)] // the run's parts, passed down once
async fn drive(
    args: &Args,
    phase: &Phase,
    job: &Job,
    planned: &[Planned<'_>],
    ending: Ending,
    instance: &DriverInstance,
    proxy: &EcsProxy,
    seed: &Seed,
) -> anyhow::Result<()> {
    let ecs = ecs_client(&proxy.endpoint(), &seed.region);
    let node_id = uuid_like();
    let mut alloc_ids: BTreeMap<(&str, u32), String> = BTreeMap::new();
    let mut started = Vec::new();
    for p in planned {
        let alloc_id = alloc_ids
            .entry((p.group.name.as_str(), p.index))
            .or_insert_with(uuid_like)
            .clone();
        let task_id = new_task_id(&alloc_id, p.task);
        phase.set(format!("starting task {task_id}"));
        say(format!(
            "==> placing alloc {alloc_id} ({}.{}[{}]) task {:?}",
            job.id, p.group.name, p.index, p.task.name
        ));
        let config = filled_config(p, seed)?;
        let task_config = task_config(job, p, &alloc_id, &task_id, &node_id, DEV_NODE, config);
        let (_, arn) = start_task(instance, task_config).await?;
        say(format!("    Nomad task ID: {task_id}"));
        say(format!("    ECS task ARN: {arn}"));
        wait_running(&ecs, &arn).await?;
        started.push(Started {
            planned: p,
            task_id,
            arn,
        });
    }

    phase.set(format!("letting the task(s) run for {:?}", args.run_for));
    say(format!("==> letting it run for {:?}", args.run_for));
    tokio::time::sleep(args.run_for).await;

    let mut failures = Vec::new();
    for task in &started {
        let name = &task.planned.task.name;
        match ending {
            Ending::Exit(code) => {
                phase.set(format!("making the container of {} exit", task.task_id));
                proxy
                    .exit_task(&task.arn, code)
                    .await
                    .with_context(|| format!("making the container of {} exit", task.arn))?;
                say(format!(
                    "==> container exited with code {code} (task {name:?}, alloc {})",
                    short_alloc(&task.task_id)
                ));
            }
            Ending::Stop => {
                phase.set(format!("stopping task {}", task.task_id));
                say(format!(
                    "==> stopping task {name:?} ({}, alloc {})",
                    describe_stop(task.planned.task),
                    short_alloc(&task.task_id)
                ));
                stop_task(instance, &task.task_id, task.planned.task).await?;
            }
        }
        phase.set(format!("waiting for task {} to exit", task.task_id));
        let exit = wait_exit(instance, &task.task_id, task.planned.task).await?;
        say(format!("==> exit result: {}", exit.describe()));
        if let Some(status) = ecs_status(&ecs, &task.arn).await {
            say(format!("    ECS status: {status}"));
        }
        match ending {
            Ending::Exit(code) if exit.code != code || exit.oom_killed => failures.push(format!(
                "task {name:?} exited with code {} (oom={}), expected code {code}",
                exit.code, exit.oom_killed
            )),
            Ending::Stop if !exit.is_clean() => failures.push(format!(
                "task {name:?} did not stop cleanly: {}",
                exit.describe()
            )),
            _ => {}
        }

        phase.set(format!("destroying task {}", task.task_id));
        destroy_task(instance, &task.task_id).await?;
        say(format!("==> destroyed task {}", task.task_id));
    }
    if !failures.is_empty() {
        bail!("the job did not behave as asked: {}", failures.join("; "));
    }
    Ok(())
}

/// The node name the single node of `run` reports in its TaskConfig.
const DEV_NODE: &str = "nomad-ecs-dev";

/// A Nomad task ID, `<alloc ID>/<task name>/<8 hex digits>`, as the client makes them.
fn new_task_id(alloc_id: &str, task: &Task) -> String {
    format!("{alloc_id}/{}/{:08x}", task.name, random_u64() as u32)
}

/// The task's `config` block with the placeholders filled in from the seed, printing each.
fn filled_config(planned: &Planned<'_>, seed: &Seed) -> anyhow::Result<Value> {
    let mut config = planned
        .task
        .config
        .clone()
        .context("an ecs task without a decoded config")?;
    for (placeholder, filled) in fill_placeholders(&mut config, seed) {
        say(format!("    {placeholder:?} -> {filled}"));
    }
    Ok(config)
}

/// StartTask; the handle and the ECS task ARN in its `driver_state`.
async fn start_task(
    instance: &DriverInstance,
    config: pb::TaskConfig,
) -> anyhow::Result<(pb::TaskHandle, String)> {
    let task_id = config.id.clone();
    let handle = instance
        .driver()
        .start_task(pb::StartTaskRequest { task: Some(config) })
        .await
        .map_err(|status| status_error("StartTask", &task_id, &status))?
        .into_inner()
        .handle
        .context("StartTask answered without a task handle")?;
    let arn = DriverState::decode(&handle.driver_state)
        .map(|state| state.arn)
        .context("reading the task handle's driver_state")?;
    Ok((handle, arn))
}

/// How the client stops `task`: "StopTask, signal SIGTERM, kill_timeout 15s".
fn describe_stop(task: &Task) -> String {
    format!(
        "StopTask, signal {}, kill_timeout {:?}",
        task.kill_signal.as_deref().unwrap_or("driver default"),
        task.kill_timeout
    )
}

/// StopTask with the task's `kill_signal` and `kill_timeout`, as the client sends it.
async fn stop_task(instance: &DriverInstance, task_id: &str, task: &Task) -> anyhow::Result<()> {
    instance
        .driver()
        .stop_task(pb::StopTaskRequest {
            task_id: task_id.to_owned(),
            timeout: Some(proto_duration(task.kill_timeout)),
            signal: task.kill_signal.clone().unwrap_or_default(),
        })
        .await
        .map_err(|status| status_error("StopTask", task_id, &status))?;
    Ok(())
}

/// WaitTask's answer.
struct ExitResult {
    code: i32,
    oom_killed: bool,
    err: String,
}

impl ExitResult {
    /// "code=0 oom=false err=none".
    fn describe(&self) -> String {
        let err = if self.err.is_empty() {
            "none".to_owned()
        } else {
            format!("{:?}", self.err)
        };
        format!("code={} oom={} err={err}", self.code, self.oom_killed)
    }

    /// A clean stop: code 0, no OOM kill, no error.
    fn is_clean(&self) -> bool {
        self.code == 0 && !self.oom_killed && self.err.is_empty()
    }
}

/// WaitTask, bounded by the step timeout plus the task's `kill_timeout`.
async fn wait_exit(
    instance: &DriverInstance,
    task_id: &str,
    task: &Task,
) -> anyhow::Result<ExitResult> {
    let exit = tokio::time::timeout(
        STEP_TIMEOUT + task.kill_timeout,
        instance.driver().wait_task(pb::WaitTaskRequest {
            task_id: task_id.to_owned(),
        }),
    )
    .await
    .map_err(|_| anyhow::anyhow!("WaitTask for {task_id} did not answer in time"))?
    .map_err(|status| status_error("WaitTask", task_id, &status))?
    .into_inner();
    let result = exit.result.unwrap_or_default();
    Ok(ExitResult {
        code: result.exit_code,
        oom_killed: result.oom_killed,
        err: exit.err,
    })
}

/// DestroyTask with `force`, as the client sends it once the task is dead.
async fn destroy_task(instance: &DriverInstance, task_id: &str) -> anyhow::Result<()> {
    instance
        .driver()
        .destroy_task(pb::DestroyTaskRequest {
            task_id: task_id.to_owned(),
            force: true,
        })
        .await
        .map_err(|status| status_error("DestroyTask", task_id, &status))?;
    Ok(())
}

/// Node names of `drain`, as `nomad node status` would list them.
const NODE_A: &str = "node-a";
const NODE_B: &str = "node-b";

/// `drain`: a takeover on current Nomad, on a job with one ecs task in one allocation.
async fn takeover(args: &Args, phase: &Phase) -> anyhow::Result<()> {
    let job = load_job(phase, &args.job_file)?;
    let planned = plan(&job)?;
    let [only] = planned.as_slice() else {
        bail!(
            "`drain` moves one allocation with one ecs task; job {:?} has {} ecs task(s) in {} \
             allocation(s) (give the group `count = 1` and one ecs task)",
            job.id,
            planned.len(),
            allocation_count(&planned)
        );
    };
    let plugin = plugin_binary(args.plugin.as_deref())?;
    say(format!(
        "==> job {:?} ({}) from {}: {} on current Nomad (1.10+: the driver asks the Nomad API)",
        job.id,
        job.job_type,
        args.job_file.display(),
        if args.node_loss {
            "node loss"
        } else {
            "a drain"
        },
    ));
    say_notes(&job);

    let (emu, seed) = start_emulator(phase).await?;
    let result = takeover_with_emulator(args, phase, &job, only, &plugin, &emu, &seed).await;
    stop_emulator(phase, emu).await;
    let summary = result?;
    say(format!("==> done: {summary}"));
    Ok(())
}

/// One emulated Nomad client node of `drain`: its own emulated client (the agent's load
/// sequence) and plugin process, with its own state directory.
struct Node {
    name: &'static str,
    id: String,
    host: NomadClientHost,
    state_dir: PathBuf,
    verbose: bool,
    plugin: Option<NodePlugin>,
    /// The log of every plugin process the node ran, for the tail shown on failure.
    logs: Vec<Recording<String>>,
}

/// A node's running plugin and what follows its output.
struct NodePlugin {
    instance: DriverInstance,
    printer: EventPrinter,
    copier: Option<tokio::task::JoinHandle<()>>,
}

impl Node {
    fn new(
        name: &'static str,
        dir: &Path,
        plugin: &Path,
        proxy: &EcsProxy,
        api: &NomadApiServer,
        seed: &Seed,
        verbose: bool,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating {name}'s directory {}", dir.display()))?;
        let state_dir = dir.join("state");
        let config = agent_config(
            &proxy.endpoint(),
            &seed.region,
            &state_dir,
            Some(&api.address()),
        )?;
        let host =
            NomadClientHost::new(launch_options(plugin, dir)?, config).rpc_timeout(RPC_TIMEOUT);
        Ok(Self {
            name,
            id: uuid_like(),
            host,
            state_dir,
            verbose,
            plugin: None,
            logs: Vec::new(),
        })
    }

    /// Loads the plugin as the node's Nomad client does and waits until it fingerprints healthy.
    async fn start(&mut self, phase: &Phase) -> anyhow::Result<()> {
        phase.set(format!("loading the plugin on {}", self.name));
        let loaded =
            self.host.load().await.with_context(|| {
                format!("{}: the Nomad client's plugin load sequence", self.name)
            })?;
        let mut instance = loaded.instance;
        let logs = instance.process().stderr().clone();
        self.logs.push(logs.clone());
        say(format!(
            "    {}: plugin {} {} (driver API {}), pid {}, state dir {}",
            self.name,
            loaded.facts.plugin_info.name,
            loaded.facts.plugin_info.plugin_version,
            loaded.facts.api_version,
            instance.process().pid(),
            self.state_dir.display()
        ));
        let copier = self
            .verbose
            .then(|| tokio::spawn(copy_logs(logs, format!("{} plugin", self.name))));
        if let Err(error) = wait_healthy(&mut instance, phase, self.name).await {
            if let Some(copier) = copier {
                copier.abort();
            }
            instance.kill().await;
            return Err(error);
        }
        let printer = EventPrinter::start(instance.events().clone(), self.name);
        self.plugin = Some(NodePlugin {
            instance,
            printer,
            copier,
        });
        Ok(())
    }

    fn instance(&self) -> anyhow::Result<&DriverInstance> {
        self.plugin
            .as_ref()
            .map(|plugin| &plugin.instance)
            .with_context(|| format!("{}'s plugin is not running", self.name))
    }

    /// Waits for the driver's task event saying it let go of `task_id`'s ECS task.
    async fn let_go(&self, task_id: &str) -> anyhow::Result<String> {
        let event = self
            .instance()?
            .events()
            .wait_for(
                |event| event.task_id == task_id && event.message.starts_with("letting go of"),
                STEP_TIMEOUT,
            )
            .await
            .map_err(|error| {
                anyhow::anyhow!(
                    "{} never let go of the ECS task of {task_id} ({error:?}): it still thinks \
                     it owns a task another allocation runs",
                    self.name
                )
            })?;
        Ok(event.message)
    }

    /// The node dies: its plugin is SIGKILLed, as when the machine goes dark.
    async fn crash(&mut self) -> anyhow::Result<u32> {
        let NodePlugin {
            mut instance,
            printer,
            copier,
        } = self
            .plugin
            .take()
            .with_context(|| format!("{}'s plugin is not running", self.name))?;
        let pid = instance.process().pid();
        instance.process_mut().sigkill();
        if instance
            .process_mut()
            .wait_exit(STEP_TIMEOUT)
            .await
            .is_none()
        {
            bail!("{}'s plugin (pid {pid}) did not die of SIGKILL", self.name);
        }
        instance.kill().await;
        printer.stop().await;
        if let Some(copier) = copier {
            copier.abort();
        }
        Ok(pid)
    }

    /// Shuts the plugin down as the client does when the agent stops; says how it went.
    async fn shut_down(&mut self) {
        let Some(NodePlugin {
            instance,
            printer,
            copier,
        }) = self.plugin.take()
        else {
            return;
        };
        let shutdown = instance.shutdown().await;
        printer.stop().await;
        if let Some(copier) = copier {
            copier.abort();
        }
        if shutdown.kill.exited_gracefully() {
            say(format!("==> {}: plugin shut down gracefully", self.name));
        } else {
            say(format!(
                "==> {}: plugin did not exit by itself; it was {:?}",
                self.name, shutdown.kill.path
            ));
        }
    }

    fn print_log_tails(&self) {
        for logs in &self.logs {
            print_log_tail(&format!("{} plugin", self.name), logs);
        }
    }
}

async fn takeover_with_emulator(
    args: &Args,
    phase: &Phase,
    job: &Job,
    planned: &Planned<'_>,
    plugin: &Path,
    emu: &RunningEmulator,
    seed: &Seed,
) -> anyhow::Result<String> {
    let proxy = EcsProxy::start(emu.endpoint())
        .await
        .context("starting the ECS fidelity proxy")?;
    say(format!("    ECS fidelity proxy at {}", proxy.endpoint()));
    phase.set("starting the emulated Nomad API");
    let api = NomadApiServer::start()
        .await
        .context("starting the emulated Nomad HTTP API")?;
    say(format!(
        "==> emulated Nomad HTTP API (the servers' view of allocations and jobs) at {}",
        api.address()
    ));
    let scratch = tempfile::Builder::new()
        .prefix("nomad-ecs-dev-drain-")
        .tempdir()
        .context("creating the nodes' temporary directories")?;
    let mut a = Node::new(
        NODE_A,
        &scratch.path().join(NODE_A),
        plugin,
        &proxy,
        &api,
        seed,
        args.verbose,
    )?;
    let mut b = Node::new(
        NODE_B,
        &scratch.path().join(NODE_B),
        plugin,
        &proxy,
        &api,
        seed,
        args.verbose,
    )?;
    say(format!(
        "==> loading the plugin {} on two emulated Nomad client nodes, each with nomad_address = {}",
        plugin.display(),
        api.address()
    ));

    let result = async {
        a.start(phase).await?;
        b.start(phase).await?;
        move_task(
            args, phase, job, planned, &mut a, &mut b, &proxy, &api, seed,
        )
        .await
    }
    .await;

    phase.set("shutting the plugins down");
    a.shut_down().await;
    b.shut_down().await;
    if result.is_err() && !args.verbose {
        a.print_log_tails();
        b.print_log_tails();
    }
    drop(api);
    say("==> stopped the emulated Nomad API");
    drop(proxy);
    say("==> stopped the ECS proxy");
    drop(scratch);
    result
}

/// Checks, `when`, that the ECS task still runs, that nothing has asked ECS to stop it, and
/// that no second ECS task was started.
async fn expect_still_running(
    ecs: &aws_sdk_ecs::Client,
    proxy: &EcsProxy,
    arn: &str,
    when: &str,
) -> anyhow::Result<()> {
    let status = ecs_status(ecs, arn)
        .await
        .unwrap_or_else(|| "unknown (DescribeTasks failed)".to_owned());
    if status != "RUNNING" {
        bail!("the ECS task stopped running during the takeover ({when}): ECS status {status}");
    }
    let runs = proxy.calls("RunTask");
    if runs != 1 {
        bail!("RunTask has run {runs} times ({when}); a takeover keeps the one ECS task");
    }
    let stops = proxy.calls("StopTask");
    if stops != 0 {
        bail!(
            "ECS StopTask was called {stops} time(s) during the takeover ({when}); the task must \
             keep running"
        );
    }
    Ok(())
}

/// The allocation the ECS task's `nomad:alloc-id` tag names.
async fn ecs_owner(ecs: &aws_sdk_ecs::Client, arn: &str) -> Option<String> {
    let out = ecs
        .describe_tasks()
        .cluster(CLUSTER)
        .tasks(arn)
        .include(aws_sdk_ecs::types::TaskField::Tags)
        .send()
        .await
        .ok()?;
    out.tasks()
        .first()?
        .tags()
        .iter()
        .find(|tag| tag.key() == Some(nomad_driver_ecs::reconcile::TAG_ALLOC_ID))
        .and_then(|tag| tag.value())
        .map(str::to_owned)
}

/// The scenario: place on node-a, drain it (or lose it), adopt on node-b, stop the job.
/// Returns the closing summary.
#[allow(clippy::too_many_arguments)] // the run's parts, passed down once
async fn move_task(
    args: &Args,
    phase: &Phase,
    job: &Job,
    planned: &Planned<'_>,
    a: &mut Node,
    b: &mut Node,
    proxy: &EcsProxy,
    api: &NomadApiServer,
    seed: &Seed,
) -> anyhow::Result<String> {
    let ecs = ecs_client(&proxy.endpoint(), &seed.region);
    let task = planned.task;
    let name = &task.name;

    // The scheduler places the allocation on node-a; node-a's client starts the task.
    let alloc_a = uuid_like();
    let task_a = new_task_id(&alloc_a, task);
    api.put_alloc(AllocState::running(&alloc_a, &job.id));
    phase.set(format!("starting task {task_a} on {}", a.name));
    say(format!(
        "==> placing alloc {alloc_a} ({}.{}[{}]) task {name:?} on {}",
        job.id, planned.group.name, planned.index, a.name
    ));
    let config = filled_config(planned, seed)?;
    let (handle_a, arn) = start_task(
        a.instance()?,
        task_config(
            job,
            planned,
            &alloc_a,
            &task_a,
            &a.id,
            a.name,
            config.clone(),
        ),
    )
    .await?;
    say(format!("    Nomad task ID: {task_a}"));
    say(format!("    ECS task ARN: {arn}"));
    wait_running(&ecs, &arn).await?;
    let runs = proxy.calls("RunTask");
    if runs != 1 {
        bail!("starting one task took {runs} RunTask calls, expected 1");
    }

    phase.set(format!("letting the task run for {:?}", args.run_for));
    say(format!(
        "==> letting it run for {:?} on {}",
        args.run_for, a.name
    ));
    tokio::time::sleep(args.run_for).await;

    let alloc_b = uuid_like();
    let task_b = new_task_id(&alloc_b, task);
    if args.node_loss {
        phase.set(format!("killing {}'s plugin", a.name));
        let pid = a.crash().await?;
        say(format!(
            "==> {} goes dark: its plugin (pid {pid}) is SIGKILLed, nobody stops anything",
            a.name
        ));
        api.lose_node(&alloc_a, &alloc_b);
        say(format!(
            "==> the servers mark {} down: allocation {alloc_a} is lost; its replacement {alloc_b} \
             is placed on {}",
            a.name, b.name
        ));
        expect_still_running(&ecs, proxy, &arn, "after node-a died").await?;
        say("    ECS task still RUNNING");
    } else {
        api.drain(&alloc_a, Some(&alloc_b));
        say(format!(
            "==> draining {}: allocation {alloc_a} migrates to {alloc_b} on {}",
            a.name, b.name
        ));
        phase.set(format!("stopping task {task_a} on {}", a.name));
        say(format!(
            "    {}: the client stops the migrating allocation ({})",
            a.name,
            describe_stop(task)
        ));
        stop_task(a.instance()?, &task_a, task).await?;
        phase.set(format!("waiting for task {task_a} to exit on {}", a.name));
        let exit = wait_exit(a.instance()?, &task_a, task).await?;
        say(format!(
            "    {}: exit result: {} (Nomad sees the allocation complete)",
            a.name,
            exit.describe()
        ));
        if !exit.is_clean() {
            bail!(
                "the hand-off on {} did not exit cleanly: {}",
                a.name,
                exit.describe()
            );
        }
        expect_still_running(&ecs, proxy, &arn, "after node-a's StopTask").await?;
        say(format!(
            "    {}: handed off (ECS task still RUNNING)",
            a.name
        ));
        destroy_task(a.instance()?, &task_a).await?;
        say(format!(
            "    {}: destroyed task {task_a}; the driver watches the ECS task until the replacement adopts it",
            a.name
        ));
    }

    // Node-b's client starts the replacement allocation; the driver adopts instead of RunTask.
    phase.set(format!("starting task {task_b} on {}", b.name));
    say(format!(
        "==> placing replacement alloc {alloc_b} ({}.{}[{}]) task {name:?} on {}",
        job.id, planned.group.name, planned.index, b.name
    ));
    let (_, arn_b) = start_task(
        b.instance()?,
        task_config(job, planned, &alloc_b, &task_b, &b.id, b.name, config),
    )
    .await?;
    say(format!("    Nomad task ID: {task_b}"));
    let runs = proxy.calls("RunTask");
    if arn_b != arn {
        bail!(
            "{} did not adopt the running ECS task: it got {arn_b}, {} had {arn} \
             (RunTask calls = {runs})",
            b.name,
            a.name
        );
    }
    if runs != 1 {
        bail!(
            "{} reported the same ARN but RunTask ran {runs} times; a takeover runs it once",
            b.name
        );
    }
    say(format!(
        "    {}: adopted ECS task ARN {arn_b} (same ARN, no new RunTask: RunTask calls = {runs})",
        b.name
    ));
    let owner = ecs_owner(&ecs, &arn).await.unwrap_or_default();
    if owner != alloc_b {
        bail!(
            "after the adoption the ECS task's {} tag names {owner:?}, not the replacement {alloc_b}",
            nomad_driver_ecs::reconcile::TAG_ALLOC_ID
        );
    }
    say(format!(
        "    ECS tag {} = {owner}",
        nomad_driver_ecs::reconcile::TAG_ALLOC_ID
    ));
    expect_still_running(&ecs, proxy, &arn, "after node-b's adoption").await?;

    if args.node_loss {
        phase.set(format!("restarting {}'s plugin", a.name));
        say(format!(
            "==> {} returns: a new plugin on its state dir {}",
            a.name,
            a.state_dir.display()
        ));
        a.start(phase).await?;
        say(format!(
            "    {}: the client restores allocation {alloc_a} (RecoverTask with its handle)",
            a.name
        ));
        a.instance()?
            .driver()
            .recover_task(pb::RecoverTaskRequest {
                task_id: task_a.clone(),
                handle: Some(handle_a),
            })
            .await
            .map_err(|status| status_error("RecoverTask", &task_a, &status))?;
        say(format!(
            "    {}: the servers say allocation {alloc_a} is lost; the client stops it ({})",
            a.name,
            describe_stop(task)
        ));
        phase.set(format!("stopping task {task_a} on {}", a.name));
        stop_task(a.instance()?, &task_a, task).await?;
        let exit = wait_exit(a.instance()?, &task_a, task).await?;
        say(format!("    {}: exit result: {}", a.name, exit.describe()));
        if !exit.is_clean() {
            bail!(
                "the returning {}'s StopTask did not exit cleanly: {}",
                a.name,
                exit.describe()
            );
        }
        phase.set(format!("waiting for {} to let go of the ECS task", a.name));
        a.let_go(&task_a).await?;
        expect_still_running(&ecs, proxy, &arn, "after node-a returned").await?;
        say(format!(
            "    {} returned: another allocation owns the ECS task; let go without stopping it",
            a.name
        ));
        destroy_task(a.instance()?, &task_a).await?;
    } else {
        phase.set(format!("waiting for {} to let go of the ECS task", a.name));
        a.let_go(&task_a).await?;
        expect_still_running(&ecs, proxy, &arn, "after node-a let go").await?;
        say(format!(
            "    {}: let go of the handed-off ECS task without stopping it (allocation {alloc_b} owns it now)",
            a.name
        ));
    }

    // `nomad job stop`: the servers stop the job; node-b's client stops its allocation.
    api.stop_job(&job.id);
    phase.set(format!("stopping task {task_b} on {}", b.name));
    say(format!(
        "==> stopping job {:?} (nomad job stop): task {name:?} on {} ({}, alloc {})",
        job.id,
        b.name,
        describe_stop(task),
        short_alloc(&task_b)
    ));
    stop_task(b.instance()?, &task_b, task).await?;
    phase.set(format!("waiting for task {task_b} to exit on {}", b.name));
    let exit = wait_exit(b.instance()?, &task_b, task).await?;
    say(format!("==> exit result: {}", exit.describe()));
    let status = ecs_status(&ecs, &arn).await.unwrap_or_default();
    say(format!("    ECS status: {status}"));
    if !exit.is_clean() {
        bail!(
            "the job stop did not end the task cleanly: {}",
            exit.describe()
        );
    }
    if !status.starts_with("STOPPED") {
        bail!("after the job stop the ECS task is {status:?}, not STOPPED");
    }
    phase.set(format!("destroying task {task_b}"));
    destroy_task(b.instance()?, &task_b).await?;
    say(format!("==> destroyed task {task_b}"));
    Ok(format!(
        "one ECS task ran through the {}: {} -> {} on the same ARN, RunTask calls = {}, and \
         it stopped cleanly with the job",
        if args.node_loss { "node loss" } else { "drain" },
        a.name,
        b.name,
        proxy.calls("RunTask")
    ))
}

/// The first block of the allocation ID in a task ID, as Nomad's CLI shortens IDs.
fn short_alloc(task_id: &str) -> &str {
    task_id.split(['-', '/']).next().unwrap_or(task_id)
}

fn status_error(rpc: &str, task_id: &str, status: &tonic::Status) -> anyhow::Error {
    anyhow::anyhow!(
        "{rpc} for {task_id} failed: {:?}: {}",
        status.code(),
        status.message()
    )
}

fn proto_duration(duration: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(duration.subsec_nanos()).unwrap_or(0),
    }
}

/// Nomad's TaskConfig for one task of one allocation.
fn task_config(
    job: &Job,
    planned: &Planned<'_>,
    alloc_id: &str,
    task_id: &str,
    node_id: &str,
    node_name: &str,
    config: Value,
) -> pb::TaskConfig {
    let task = planned.task;
    let mut env: std::collections::HashMap<String, String> = task.env.clone().into_iter().collect();
    for (key, value) in [
        ("NOMAD_ALLOC_ID", alloc_id.to_owned()),
        ("NOMAD_ALLOC_INDEX", planned.index.to_string()),
        (
            "NOMAD_ALLOC_NAME",
            format!("{}.{}[{}]", job.id, planned.group.name, planned.index),
        ),
        ("NOMAD_JOB_ID", job.id.clone()),
        ("NOMAD_JOB_NAME", job.id.clone()),
        ("NOMAD_GROUP_NAME", planned.group.name.clone()),
        ("NOMAD_TASK_NAME", task.name.clone()),
        ("NOMAD_NAMESPACE", job.namespace.clone()),
        ("NOMAD_DC", "dc1".to_owned()),
        ("NOMAD_CPU_LIMIT", task.resources.cpu.to_string()),
        ("NOMAD_MEMORY_LIMIT", task.resources.memory_mb.to_string()),
    ] {
        env.insert(key.to_owned(), value);
    }
    let memory_limit_mb = task.resources.memory_mb.max(task.resources.memory_max_mb);
    let alloc_dir = std::env::temp_dir()
        .join("nomad-ecs-dev-alloc")
        .join(alloc_id)
        .to_string_lossy()
        .into_owned();
    pb::TaskConfig {
        id: task_id.to_owned(),
        name: task.name.clone(),
        msgpack_driver_config: nomad_driver_ecs::cty::encode(&config),
        env,
        resources: Some(pb::Resources {
            allocated_resources: Some(pb::AllocatedTaskResources {
                cpu: Some(pb::AllocatedCpuResources {
                    cpu_shares: task.resources.cpu,
                }),
                memory: Some(pb::AllocatedMemoryResources {
                    memory_mb: task.resources.memory_mb,
                    memory_max_mb: task.resources.memory_max_mb,
                }),
                ..Default::default()
            }),
            linux_resources: Some(pb::LinuxResources {
                cpu_shares: task.resources.cpu,
                memory_limit_bytes: memory_limit_mb.saturating_mul(1024 * 1024),
                ..Default::default()
            }),
            ..Default::default()
        }),
        user: task.user.clone().unwrap_or_default(),
        // The driver never touches the allocation directory; logs are not collected.
        alloc_dir,
        stdout_path: "/dev/null".to_owned(),
        stderr_path: "/dev/null".to_owned(),
        task_group_name: planned.group.name.clone(),
        job_name: job.id.clone(),
        alloc_id: alloc_id.to_owned(),
        job_id: job.id.clone(),
        namespace: job.namespace.clone(),
        node_name: node_name.to_owned(),
        node_id: node_id.to_owned(),
        ..Default::default()
    }
}

/// Replaces the placeholder strings in a task config with the seeded emulator's values and
/// returns what was replaced. In a list, a placeholder stands for all the seeded values.
fn fill_placeholders(value: &mut Value, seed: &Seed) -> Vec<(String, String)> {
    let replacements = |text: &str| -> Option<Vec<String>> {
        match text {
            TASK_DEFINITION_PLACEHOLDER => Some(vec![seed.task_definition.clone()]),
            SUBNET_PLACEHOLDER => Some(seed.subnets.clone()),
            SECURITY_GROUP_PLACEHOLDER => Some(seed.security_groups.clone()),
            _ => None,
        }
    };
    let mut filled = Vec::new();
    fill(value, &replacements, &mut filled);
    filled.dedup();
    filled
}

fn fill(
    value: &mut Value,
    replacements: &dyn Fn(&str) -> Option<Vec<String>>,
    filled: &mut Vec<(String, String)>,
) {
    match value {
        Value::String(text) => {
            if let Some(with) = replacements(text)
                && let Some(first) = with.first()
            {
                filled.push((text.clone(), first.clone()));
                *text = first.clone();
            }
        }
        Value::List(items) => {
            let mut out = Vec::with_capacity(items.len());
            for mut item in std::mem::take(items) {
                match &item {
                    Value::String(text) if replacements(text).is_some() => {
                        let with = replacements(text).unwrap_or_default();
                        filled.push((text.clone(), with.join(",")));
                        out.extend(with.into_iter().map(Value::String));
                    }
                    _ => {
                        fill(&mut item, replacements, filled);
                        out.push(item);
                    }
                }
            }
            *items = out;
        }
        Value::Map(entries) => {
            for (_, item) in entries {
                fill(item, replacements, filled);
            }
        }
        _ => {}
    }
}

fn ecs_client(endpoint: &str, region: &str) -> aws_sdk_ecs::Client {
    let config = aws_sdk_ecs::Config::builder()
        .behavior_version(aws_sdk_ecs::config::BehaviorVersion::latest())
        .region(aws_sdk_ecs::config::Region::new(region.to_owned()))
        .credentials_provider(aws_sdk_ecs::config::Credentials::new(
            "test",
            "test",
            None,
            None,
            "nomad-ecs-dev",
        ))
        .endpoint_url(endpoint)
        .http_client(aws_smithy_http_client::Builder::new().build_http())
        .build();
    aws_sdk_ecs::Client::from_conf(config)
}

/// The task's ECS `lastStatus`, with the stop code and container exit code once stopped.
async fn ecs_status(ecs: &aws_sdk_ecs::Client, arn: &str) -> Option<String> {
    let out = ecs
        .describe_tasks()
        .cluster(CLUSTER)
        .tasks(arn)
        .send()
        .await
        .ok()?;
    let task = out.tasks().first()?;
    let status = task.last_status()?.to_owned();
    let mut details = Vec::new();
    if let Some(code) = task.stop_code() {
        details.push(format!("stop code {}", code.as_str()));
    }
    if let Some(exit) = task
        .containers()
        .iter()
        .find_map(aws_sdk_ecs::types::Container::exit_code)
    {
        details.push(format!("container exit code {exit}"));
    }
    Some(if details.is_empty() {
        status
    } else {
        format!("{status} ({})", details.join(", "))
    })
}

/// Waits until ECS reports the task RUNNING, printing each status it passes through.
async fn wait_running(ecs: &aws_sdk_ecs::Client, arn: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    let mut last = String::new();
    loop {
        let status = ecs_status(ecs, arn).await.unwrap_or_default();
        if status != last && !status.is_empty() {
            say(format!("    ECS status: {status}"));
            last = status;
        }
        if last == "RUNNING" {
            return Ok(());
        }
        if last.starts_with("STOPPED") || last.starts_with("DEPROVISIONING") {
            bail!("ECS task {arn} stopped before it ran: {last}");
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "ECS task {arn} did not reach RUNNING within {STEP_TIMEOUT:?} (last status: {last:?})"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// 64 random bits from the standard library's randomly keyed hasher.
fn random_u64() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos())
            .unwrap_or_default(),
    );
    hasher.finish()
}

/// A random, version-4-shaped UUID, as Nomad's allocation and node IDs look.
fn uuid_like() -> String {
    let (high, low) = (random_u64(), random_u64());
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        high >> 32,
        (high >> 16) & 0xffff,
        high & 0xfff,
        low >> 52,
        low & 0xffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Command, String> {
        parse_args(list.iter().map(|arg| (*arg).to_owned()))
    }

    #[test]
    fn run_takes_a_job_file_and_options_in_either_form() {
        let Ok(Command::Run(parsed)) = args(&[
            "run",
            "--exit-code=3",
            "job.hcl",
            "--run-for",
            "500ms",
            "--timeout",
            "1m",
        ]) else {
            panic!("parsed");
        };
        assert_eq!(parsed.job_file, PathBuf::from("job.hcl"));
        assert_eq!(parsed.exit_code, Some(3));
        assert_eq!(parsed.run_for, Duration::from_millis(500));
        assert_eq!(parsed.timeout, Duration::from_secs(60));
    }

    #[test]
    fn bad_arguments_are_refused_with_a_reason() {
        assert!(args(&[]).unwrap_err().contains("no command"));
        assert!(args(&["run"]).unwrap_err().contains("no job file"));
        assert!(
            args(&["run", "j", "--exit-code", "x"])
                .unwrap_err()
                .contains("whole number")
        );
        assert!(
            args(&["run", "j", "--exit-code", "300"])
                .unwrap_err()
                .contains("0 to 255")
        );
        assert!(
            args(&["run", "j", "--run-for", "soon"])
                .unwrap_err()
                .contains("--run-for")
        );
        assert!(
            args(&["run", "j", "--nope"])
                .unwrap_err()
                .contains("--nope")
        );
        assert_eq!(args(&["--help"]), Ok(Command::Help));
    }

    #[test]
    fn drain_takes_a_job_file_and_node_loss_and_refuses_what_only_run_takes() {
        let Ok(Command::Drain(parsed)) = args(&["drain", "job.hcl", "--node-loss", "--run-for=1s"])
        else {
            panic!("parsed");
        };
        assert_eq!(parsed.job_file, PathBuf::from("job.hcl"));
        assert!(parsed.node_loss);
        assert_eq!(parsed.run_for, Duration::from_secs(1));
        let Ok(Command::Drain(plain)) = args(&["drain", "job.hcl"]) else {
            panic!("parsed");
        };
        assert!(!plain.node_loss, "a drain unless --node-loss is given");
        assert!(
            args(&["drain", "j", "--exit-code", "3"])
                .unwrap_err()
                .contains("--exit-code is for `run`")
        );
        assert!(
            args(&["run", "j", "--node-loss"])
                .unwrap_err()
                .contains("--node-loss is for `drain`")
        );
        assert!(
            args(&["drain", "j", "--node-loss=yes"])
                .unwrap_err()
                .contains("takes no value")
        );
        assert!(args(&["drain"]).unwrap_err().contains("no job file"));
    }

    #[test]
    fn placeholders_are_filled_from_the_seed_and_lists_take_every_value() {
        let seed = Seed {
            endpoint: "http://127.0.0.1:1".into(),
            region: "us-east-1".into(),
            cluster: CLUSTER.into(),
            cluster_arn: "arn".into(),
            task_definition: "nomad-ecs:1".into(),
            task_definition_arn: "arn:td".into(),
            subnets: vec!["subnet-a".into(), "subnet-b".into()],
            security_groups: vec!["sg-1".into()],
        };
        let s = |text: &str| Value::String(text.to_owned());
        let mut value = Value::Map(vec![
            ("task_definition".into(), s(TASK_DEFINITION_PLACEHOLDER)),
            (
                "subnets".into(),
                Value::List(vec![s(SUBNET_PLACEHOLDER), s("subnet-mine")]),
            ),
            (
                "security_groups".into(),
                Value::List(vec![s(SECURITY_GROUP_PLACEHOLDER)]),
            ),
            ("other".into(), s("kept")),
        ]);
        let filled = fill_placeholders(&mut value, &seed);
        assert_eq!(filled.len(), 3, "{filled:?}");
        let expected = Value::Map(vec![
            ("task_definition".into(), s("nomad-ecs:1")),
            (
                "subnets".into(),
                Value::List(vec![s("subnet-a"), s("subnet-b"), s("subnet-mine")]),
            ),
            ("security_groups".into(), Value::List(vec![s("sg-1")])),
            ("other".into(), s("kept")),
        ]);
        assert_eq!(value, expected);
    }

    #[test]
    fn uuid_like_ids_are_uuid_shaped_and_differ() {
        let (a, b) = (uuid_like(), uuid_like());
        assert_ne!(a, b);
        let lengths: Vec<usize> = a.split('-').map(str::len).collect();
        assert_eq!(lengths, vec![8, 4, 4, 4, 12], "{a}");
    }
}
