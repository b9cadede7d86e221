//! The dev tool's main command end to end: `nomad-ecs-dev run` on the example job files, with
//! the real plugin under the emulated Nomad client and moto behind the fidelity proxy; and
//! `nomad-ecs-dev drain`, the takeover on two emulated client nodes and the emulated Nomad API.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Bound on one run of the tool; its own `--timeout` (below) fires first.
const DEADLINE: Duration = Duration::from_secs(200);

/// What one run of the tool printed, and how it ended.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Fails the test with the whole output unless stdout has `needle`.
    fn expect_stdout(&self, needle: &str) -> &Self {
        assert!(
            self.stdout.contains(needle),
            "stdout lacks {needle:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// The rest of the first stdout line that starts with `prefix` (after leading spaces).
    fn after(&self, prefix: &str) -> &str {
        self.stdout
            .lines()
            .find_map(|line| line.trim_start().strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no line starting with {prefix:?} in\n{}", self.stdout))
    }

    /// The index of the first stdout line starting with `prefix`.
    fn line_index(&self, prefix: &str) -> usize {
        self.stdout
            .lines()
            .position(|line| line.trim_start().starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting with {prefix:?} in\n{}", self.stdout))
    }
}

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

/// Runs `nomad-ecs-dev` with `args`, killing it if it outlives [`DEADLINE`].
fn nomad_ecs_dev(args: &[&str]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nomad-ecs-dev"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nomad-ecs-dev");
    let reader = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = reader(Box::new(child.stdout.take().expect("stdout")));
    let stderr = reader(Box::new(child.stderr.take().expect("stderr")));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for nomad-ecs-dev") {
            break status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "nomad-ecs-dev {args:?} ran longer than {DEADLINE:?}\n--- stdout\n{}",
                stdout.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Run {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

#[test]
fn the_batch_example_runs_in_ecs_and_reports_the_containers_exit_code() {
    let job = example("hello-batch.nomad.hcl");
    let run = nomad_ecs_dev(&[
        "run",
        job.to_str().unwrap(),
        "--exit-code",
        "3",
        "--run-for",
        "1s",
        "--timeout",
        "150s",
    ]);
    run.expect_stdout("==> placing alloc ")
        .expect_stdout("    ECS task ARN: arn:aws:ecs:")
        .expect_stdout("    ECS status: RUNNING")
        .expect_stdout("    task event [hello]: ")
        .expect_stdout("==> container exited with code 3")
        .expect_stdout(
            "==> exit result: code=3 oom=false err=\"Essential container in task exited\"",
        )
        .expect_stdout("==> destroyed task ")
        .expect_stdout("==> plugin shut down gracefully")
        .expect_stdout("==> done: job \"hello-batch\" behaved as asked");
    assert!(
        run.line_index("ECS task ARN:") < run.line_index("==> exit result:"),
        "{}",
        run.stdout
    );
    assert!(
        !run.stdout.contains("-from-emulator\n")
            && run.stdout.contains("\"subnet-from-emulator\" -> subnet-"),
        "placeholders are filled from the seed:\n{}",
        run.stdout
    );
    assert!(
        run.status.success(),
        "exit code 3 was asked for, so the run succeeds: {:?}\n{}",
        run.status,
        run.stderr
    );
}

#[test]
fn the_service_example_runs_until_stopped_and_stops_cleanly() {
    let job = example("hello-service.nomad.hcl");
    let run = nomad_ecs_dev(&[
        "run",
        job.to_str().unwrap(),
        "--run-for",
        "1s",
        "--timeout",
        "150s",
    ]);
    run.expect_stdout("    ECS task ARN: arn:aws:ecs:")
        .expect_stdout(
            "==> stopping task \"server\" (StopTask, signal SIGTERM, kill_timeout 15s, alloc ",
        )
        .expect_stdout("==> exit result: code=0 oom=false err=none")
        .expect_stdout("    ECS status: STOPPED (stop code UserInitiated")
        .expect_stdout("==> done: job \"hello-service\" behaved as asked");
    assert!(
        !run.stdout.contains("==> container exited"),
        "a service is stopped, not exited:\n{}",
        run.stdout
    );
    assert!(run.status.success(), "{:?}\n{}", run.status, run.stderr);
}

#[test]
fn a_job_file_with_a_wrong_type_fails_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("bad.nomad.hcl");
    std::fs::write(
        &job,
        r#"job "bad" {
  group "g" {
    task "t" {
      driver = "ecs"
      config {
        task {
          network_configuration {
            aws_vpc_configuration { subnets = "subnet-1" }
          }
        }
      }
    }
  }
}
"#,
    )
    .unwrap();
    let run = nomad_ecs_dev(&["run", job.to_str().unwrap()]);
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "config.task.network_configuration.aws_vpc_configuration.subnets`: expected list(string), found string"
        ),
        "{}",
        run.stderr
    );
    assert!(
        !run.stdout.contains("starting the ECS emulator"),
        "nothing is started for a bad job file:\n{}",
        run.stdout
    );
}

#[test]
fn bad_arguments_exit_with_usage() {
    let run = nomad_ecs_dev(&["run", "--exit-code", "nine"]);
    assert_eq!(run.status.code(), Some(2));
    assert!(
        run.stderr.contains("usage: nomad-ecs-dev run"),
        "{}",
        run.stderr
    );
}

/// The ECS task ARN each node reported: node-a's at placement, node-b's on adoption.
fn arns_on_both_nodes(run: &Run) -> (String, String) {
    let on_a = run.after("ECS task ARN: ").to_owned();
    let on_b = run
        .after("node-b: adopted ECS task ARN ")
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();
    (on_a, on_b)
}

#[test]
fn a_drain_moves_the_running_ecs_task_to_the_replacement_on_the_second_node() {
    let job = example("hello-service.nomad.hcl");
    let run = nomad_ecs_dev(&[
        "drain",
        job.to_str().unwrap(),
        "--run-for",
        "1s",
        "--timeout",
        "150s",
    ]);
    run.expect_stdout("    node-a: driver fingerprint: healthy")
        .expect_stdout("    node-b: driver fingerprint: healthy")
        .expect_stdout("    node-a: exit result: code=0 oom=false err=none")
        .expect_stdout("(same ARN, no new RunTask: RunTask calls = 1)")
        .expect_stdout("    node-a: let go of the handed-off ECS task without stopping it")
        .expect_stdout("==> exit result: code=0 oom=false err=none")
        .expect_stdout("    ECS status: STOPPED (stop code UserInitiated")
        .expect_stdout("==> node-a: plugin shut down gracefully")
        .expect_stdout("==> node-b: plugin shut down gracefully")
        .expect_stdout("==> done: one ECS task ran through the drain");
    let (on_a, on_b) = arns_on_both_nodes(&run);
    assert!(on_a.starts_with("arn:aws:ecs:"), "{}", run.stdout);
    assert_eq!(
        on_a, on_b,
        "node-b adopts node-a's ECS task:\n{}",
        run.stdout
    );
    let steps = [
        "ECS task ARN:",
        "==> draining node-a: allocation ",
        "node-a: handed off (ECS task still RUNNING)",
        "node-b: adopted ECS task ARN ",
        "==> stopping job \"hello-service\" (nomad job stop): task \"server\" on node-b",
        "==> exit result:",
    ];
    let lines: Vec<usize> = steps.iter().map(|step| run.line_index(step)).collect();
    assert!(
        lines.is_sorted(),
        "the steps come in order {steps:?}:\n{}",
        run.stdout
    );
    let draining = run.after("==> draining node-a: allocation ");
    assert!(
        draining.contains(" migrates to ") && draining.ends_with(" on node-b"),
        "{draining}"
    );
    assert!(run.status.success(), "{:?}\n{}", run.status, run.stderr);
}

#[test]
fn after_node_loss_the_second_node_adopts_and_the_returning_node_lets_go() {
    let job = example("hello-service.nomad.hcl");
    let run = nomad_ecs_dev(&[
        "drain",
        job.to_str().unwrap(),
        "--node-loss",
        "--run-for",
        "1s",
        "--timeout",
        "150s",
    ]);
    run.expect_stdout("==> node-a goes dark: its plugin (pid ")
        .expect_stdout("==> the servers mark node-a down: allocation ")
        .expect_stdout("(same ARN, no new RunTask: RunTask calls = 1)")
        .expect_stdout("==> node-a returns: a new plugin on its state dir ")
        .expect_stdout("    node-a: exit result: code=0 oom=false err=none")
        .expect_stdout("==> exit result: code=0 oom=false err=none")
        .expect_stdout("    ECS status: STOPPED (stop code UserInitiated")
        .expect_stdout("==> done: one ECS task ran through the node loss");
    assert!(
        !run.stdout.contains("==> draining"),
        "a lost node is not drained:\n{}",
        run.stdout
    );
    let (on_a, on_b) = arns_on_both_nodes(&run);
    assert!(on_a.starts_with("arn:aws:ecs:"), "{}", run.stdout);
    assert_eq!(
        on_a, on_b,
        "node-b adopts node-a's ECS task:\n{}",
        run.stdout
    );
    let steps = [
        "ECS task ARN:",
        "==> node-a goes dark:",
        "node-b: adopted ECS task ARN ",
        "==> node-a returns:",
        "node-a returned: another allocation owns the ECS task; let go without stopping it",
        "==> exit result:",
    ];
    let lines: Vec<usize> = steps.iter().map(|step| run.line_index(step)).collect();
    assert!(
        lines.is_sorted(),
        "the steps come in order {steps:?}:\n{}",
        run.stdout
    );
    assert!(run.status.success(), "{:?}\n{}", run.status, run.stderr);
}

#[test]
fn drain_refuses_a_job_with_more_than_one_allocation_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("two.nomad.hcl");
    let service = std::fs::read_to_string(example("hello-service.nomad.hcl")).unwrap();
    std::fs::write(&job, service.replace("count = 1", "count = 2")).unwrap();
    let run = nomad_ecs_dev(&["drain", job.to_str().unwrap()]);
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "`drain` moves one allocation with one ecs task; job \"hello-service\" has 2"
        ),
        "{}",
        run.stderr
    );
    assert!(
        !run.stdout.contains("starting the ECS emulator"),
        "nothing is started:\n{}",
        run.stdout
    );
}
