//! Reconcile-pass benchmark: one full pass (store listing, batched
//! DescribeTasks, plan, apply) over 1, 100 and 1,000 running tasks held in a
//! `MemoryStore`, against an aws-smithy-mocks ECS client that answers every
//! requested ARN as RUNNING. The SDK client is real (request serialization,
//! signing, response handling); only the network is missing, so the time per
//! pass is the driver's and the SDK's CPU cost, not AWS latency.
//!
//! A plain table comes first (calls per pass by operation, time per pass,
//! the full-pass period the reconciler would pick), then criterion's figures.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_ecs::Client;
use aws_sdk_ecs::operation::describe_tasks::DescribeTasksOutput;
use aws_sdk_ecs::types::{Container, Tag, Task};
use aws_smithy_mocks::{RuleMode, mock, mock_client};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use nomad_driver_ecs::config::Settings;
use nomad_driver_ecs::ecs::Ecs;
use nomad_driver_ecs::reconcile::plan::Policy;
use nomad_driver_ecs::reconcile::{Handle, Reconciler, TAG_ALLOC_ID, TAG_DRIVER, TAG_TASK_ID};
use nomad_driver_ecs::store::{Desired, MemoryStore, RunParams, Slot, Store, TaskRecord};

const SIZES: [usize; 3] = [1, 100, 1_000];
const CLUSTER: &str = "bench";
const ARN_PREFIX: &str = "arn:aws:ecs:us-east-1:123456789012:task/bench/";

/// The client-side token-bucket share the bench's ECS client gets. At the
/// largest configurable share (1.0: burst 100, 20 DescribeTasks/s) criterion's
/// back-to-back passes would drain the read bucket within a few iterations
/// and then measure its refill (ceil(N/100)/20 s a pass), not the pass. The
/// bucket is built directly here, bypassing the config's (0, 1] check.
const BENCH_API_BUDGET: f64 = 1.0e6;

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

fn alloc_id(i: usize) -> String {
    format!("{i:08x}-7e57-4a11-9b00-00000000be9c")
}

fn task_id(i: usize) -> String {
    format!("{}/server/{i:08x}", alloc_id(i))
}

fn task_arn(i: usize) -> String {
    format!("{ARN_PREFIX}{i:032x}")
}

fn index_of(arn: &str) -> usize {
    arn.strip_prefix(ARN_PREFIX)
        .and_then(|hex| usize::from_str_radix(hex, 16).ok())
        .expect("an ARN this bench made")
}

/// A task whose RunTask succeeded and that ECS has not been asked about yet.
fn started_task(i: usize) -> TaskRecord {
    TaskRecord {
        task_id: task_id(i),
        alloc_id: alloc_id(i),
        task_name: "server".into(),
        slot: Slot {
            namespace: "default".into(),
            job: "bench".into(),
            group: "api".into(),
            alloc_index: u32::try_from(i).expect("small index"),
            task: "server".into(),
        },
        desired: Desired::Running,
        client_token: format!("{}-server-1", alloc_id(i)),
        cluster: CLUSTER.into(),
        region: "us-east-1".into(),
        task_definition: "bench:1".into(),
        arn: Some(task_arn(i)),
        observed: None,
        exit: None,
        created_ms: 1_700_000_000_000,
        updated_ms: 1_700_000_000_000,
        started_ms: Some(1_700_000_001_000),
        run: RunParams {
            launch_type: Some("FARGATE".into()),
            subnets: vec!["subnet-0bench".into()],
            security_groups: vec!["sg-0bench".into()],
            assign_public_ip: Some(false),
        },
        run_requested_ms: Some(1_700_000_000_100),
        run_attempts: 1,
        start_error: None,
        stop_requested_ms: None,
        last_error: None,
    }
}

/// What DescribeTasks (with tags) returns for one of our running tasks.
fn running_in_ecs(arn: &str) -> Task {
    let i = index_of(arn);
    Task::builder()
        .task_arn(arn)
        .last_status("RUNNING")
        .desired_status("RUNNING")
        .started_by(format!("nomad-{i:024x}"))
        .containers(
            Container::builder()
                .name("server")
                .last_status("RUNNING")
                .build(),
        )
        .tags(
            Tag::builder()
                .key(TAG_DRIVER)
                .value("nomad-driver-ecs")
                .build(),
        )
        .tags(Tag::builder().key(TAG_ALLOC_ID).value(alloc_id(i)).build())
        .tags(Tag::builder().key(TAG_TASK_ID).value(task_id(i)).build())
        .build()
}

/// An ECS client whose DescribeTasks reports every requested ARN RUNNING;
/// any other operation panics (the bench expects none).
fn mocked_ecs() -> Ecs {
    let describe = mock!(Client::describe_tasks).then_compute_output(|req| {
        DescribeTasksOutput::builder()
            .set_tasks(Some(
                req.tasks().iter().map(|a| running_in_ecs(a)).collect(),
            ))
            .build()
    });
    let client = mock_client!(aws_sdk_ecs, RuleMode::MatchAny, &[&describe]);
    Ecs::from_client(client, "us-east-1", "https://ecs.mock", BENCH_API_BUDGET)
}

/// A reconciler over `n` started tasks, after one warm-up pass that records
/// their RUNNING observations (so measured passes only observe).
struct Bench {
    rt: tokio::runtime::Runtime,
    reconciler: Reconciler,
    handle: Handle,
    ecs: Ecs,
    warm_up: PassFigures,
}

/// What one pass cost.
struct PassFigures {
    calls: BTreeMap<&'static str, u64>,
    steps: usize,
    took: Duration,
}

impl Bench {
    fn new(n: usize) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("tokio runtime");
        let store = Arc::new(MemoryStore::new());
        for i in 0..n {
            store.put(&started_task(i)).expect("put");
        }
        let ecs = mocked_ecs();
        let settings = Settings {
            enabled: true,
            cluster: CLUSTER.into(),
            ..Settings::default()
        };
        let (reconciler, handle) =
            Reconciler::new(store, ecs.clone(), settings, Policy::default(), None);
        let mut bench = Self {
            rt,
            reconciler,
            handle,
            ecs,
            warm_up: PassFigures {
                calls: BTreeMap::new(),
                steps: 0,
                took: Duration::ZERO,
            },
        };
        bench.warm_up = bench.measured_pass();
        bench
    }

    fn pass(&mut self) -> Vec<(String, bool)> {
        self.rt.block_on(self.reconciler.pass(None))
    }

    fn measured_pass(&mut self) -> PassFigures {
        let before = self.ecs.calls().snapshot();
        let started = Instant::now();
        let touched = self.pass();
        let took = started.elapsed();
        black_box(touched);
        let calls = self
            .ecs
            .calls()
            .snapshot()
            .into_iter()
            .map(|(op, total)| (op, total - before.get(op).copied().unwrap_or(0)))
            .filter(|(_, n)| *n > 0)
            .collect();
        PassFigures {
            calls,
            steps: self.handle.last_full_pass().steps,
            took,
        }
    }
}

/// The full-pass period `Reconciler::period` picks for `tasks` (the method is
/// private; this restates its formula): the configured interval, stretched so
/// a pass's DescribeTasks use at most half of the read rate, which is
/// 20/s × api_budget.
fn derived_period(tasks: usize, settings: &Settings) -> Duration {
    let calls = tasks.div_ceil(100) as f64;
    let rate = 20.0 * settings.api_budget;
    settings
        .reconcile_interval
        .max(Duration::from_secs_f64(calls / (rate * 0.5).max(0.01)))
}

fn format_calls(calls: &BTreeMap<&'static str, u64>) -> String {
    if calls.is_empty() {
        return "none".into();
    }
    calls
        .iter()
        .map(|(op, n)| format!("{op} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn micros(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

// ---------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn print_table(_: &mut Criterion) {
    const PASSES: usize = 21;
    let defaults = Settings::default();
    println!();
    println!("reconcile: one full pass over N running tasks (MemoryStore, mocked ECS)");
    println!(
        "  ECS client token bucket: share {BENCH_API_BUDGET:e}, so it never waits \
         (at share 1.0 back-to-back passes would measure its 20/s refill)"
    );
    println!(
        "  period: derived from Reconciler::period's formula with the default settings \
         (reconcile_interval {:?}, api_budget {}), not read from the reconciler",
        defaults.reconcile_interval, defaults.api_budget
    );
    println!();
    println!(
        "  {:>5} | {:<20} | {:>5} | {:>10} | {:<20} | {:>5} | {:>10} | {:>10} | {:>7} | {:>9}",
        "N",
        "warm-up pass calls",
        "steps",
        "warm-up",
        "steady pass calls",
        "steps",
        "steady",
        "of it ECS",
        "period",
        "RSS"
    );
    for n in SIZES {
        let mut bench = Bench::new(n);
        let rss_before = rss_kib();
        let mut steady = Vec::new();
        for _ in 0..PASSES {
            steady.push(bench.measured_pass());
        }
        let expected: BTreeMap<&'static str, u64> =
            [("DescribeTasks", n.div_ceil(100) as u64)].into();
        for pass in &steady {
            assert_eq!(pass.calls, expected, "N = {n}: calls of a steady pass");
            assert_eq!(pass.steps, 0, "N = {n}: a settled pass has nothing to do");
        }
        // The same DescribeTasks batches on their own: the SDK client and
        // the mock's answer, without the store and the plan.
        let arns: Vec<String> = (0..n).map(task_arn).collect();
        let ecs_only = median(
            (0..PASSES)
                .map(|_| {
                    let started = Instant::now();
                    let answer = bench
                        .rt
                        .block_on(bench.ecs.describe_tasks(CLUSTER, &arns))
                        .expect("mock answers");
                    let took = started.elapsed();
                    black_box(answer);
                    took
                })
                .collect(),
        );
        println!(
            "  {:>5} | {:<20} | {:>5} | {:>10} | {:<20} | {:>5} | {:>10} | {:>10} | {:>7} | {:>9}",
            n,
            format_calls(&bench.warm_up.calls),
            bench.warm_up.steps,
            micros(bench.warm_up.took),
            format_calls(&steady[0].calls),
            steady[0].steps,
            micros(median(steady.iter().map(|p| p.took).collect())),
            micros(ecs_only),
            format!("{:?}", derived_period(n, &defaults)),
            format!("{} KiB", rss_kib().max(rss_before)),
        );
    }
    let stretch_from = (1..)
        .find(|n| derived_period(*n, &defaults) > defaults.reconcile_interval)
        .unwrap_or(0);
    println!(
        "  steady and \"of it ECS\": medians of {PASSES} passes; the warm-up pass records \
         the N observations (one store write each)"
    );
    println!(
        "  RSS: the bench process's resident set after the N-task passes (from /proc/self/statm)"
    );
    println!(
        "  derived: the period first exceeds {:?} at N = {stretch_from}",
        defaults.reconcile_interval
    );
    println!();
}

// ---------------------------------------------------------------------------
// Criterion
// ---------------------------------------------------------------------------

fn bench_pass(c: &mut Criterion) {
    let mut group = c.benchmark_group("reconcile_full_pass");
    for n in SIZES {
        let mut bench = Bench::new(n);
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| black_box(bench.pass()));
        });
    }
    group.finish();
}

criterion_group!(benches, print_table, bench_pass);
criterion_main!(benches);

/// Resident set size of this process in KiB (0 where /proc is absent).
fn rss_kib() -> u64 {
    let page_kib = 4;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * page_kib)
}
