//! The ECS emulator launcher against real moto: it starts on loopback, seeds
//! what the driver needs, runs side by side, and stops on drop.

use std::net::TcpStream;
use std::time::Duration;

use nomad_driver_ecs::devstack::emulator::{
    EmulatorOptions, LocalVenv, RunningEmulator, start_default, start_with,
};
use serde_json::{Value, json};

/// One ECS awsJson call, signed with a scope naming `region` (moto reads the
/// region from the scope and checks no signature).
fn ecs(emu: &RunningEmulator, region: &str, operation: &str, body: Value) -> (u16, Value) {
    let target = format!("AmazonEC2ContainerServiceV20141113.{operation}");
    let auth = format!(
        "AWS4-HMAC-SHA256 Credential=test/20260101/{region}/ecs/aws4_request, \
         SignedHeaders=host, Signature=0"
    );
    let (status, text) = emu
        .http_request(
            "POST",
            "/",
            &[
                ("X-Amz-Target", &target),
                ("Content-Type", "application/x-amz-json-1.1"),
                ("Authorization", &auth),
            ],
            body.to_string().as_bytes(),
        )
        .unwrap_or_else(|e| panic!("{operation} on {}: {e}", emu.endpoint()));
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{operation} answered {status} with non-JSON ({e}): {text}"));
    (status, value)
}

fn describe_cluster(emu: &RunningEmulator, region: &str, name: &str) -> Value {
    let (status, body) = ecs(
        emu,
        region,
        "DescribeClusters",
        json!({ "clusters": [name] }),
    );
    assert_eq!(status, 200, "DescribeClusters: {body}");
    body
}

/// Whether something listens on `127.0.0.1:port` and only there, per the
/// kernel's socket table (`/proc/net/tcp`: hex local address, state 0A = LISTEN).
fn listens_on_loopback_only(port: u16) -> (bool, bool) {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("reading /proc/net/tcp");
    let port_hex = format!("{port:04X}");
    let mut loopback = false;
    let mut elsewhere = false;
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(state)) = (fields.get(1), fields.get(3)) else {
            continue;
        };
        let Some((addr, p)) = local.split_once(':') else {
            continue;
        };
        if p == port_hex && *state == "0A" {
            if addr == "0100007F" {
                loopback = true;
            } else {
                elsewhere = true;
            }
        }
    }
    (loopback, elsewhere)
}

#[tokio::test]
async fn emulator_starts_on_loopback_and_is_seeded() {
    let emu = start_default("nomad").await.expect("starting the emulator");

    assert_eq!(emu.endpoint(), format!("http://127.0.0.1:{}", emu.port()));
    assert_eq!(
        listens_on_loopback_only(emu.port()),
        (true, false),
        "moto must listen on 127.0.0.1 and nowhere else"
    );
    assert!(
        emu.log_path().is_file(),
        "server log at {}",
        emu.log_path().display()
    );

    let seed = emu.seed();
    assert_eq!(seed.endpoint, emu.endpoint());
    assert_eq!(seed.region, "us-east-1");
    assert_eq!(seed.cluster, "nomad");
    assert_eq!(
        seed.cluster_arn,
        "arn:aws:ecs:us-east-1:123456789012:cluster/nomad"
    );
    assert_eq!(seed.task_definition, "nomad-ecs:1");
    assert!(
        seed.task_definition_arn
            .ends_with(":task-definition/nomad-ecs:1"),
        "{seed:?}"
    );
    assert_eq!(seed.subnets.len(), 2, "{seed:?}");
    assert!(
        seed.subnets.iter().all(|s| s.starts_with("subnet-")),
        "{seed:?}"
    );
    assert!(
        seed.security_groups.iter().all(|s| s.starts_with("sg-")),
        "{seed:?}"
    );
    assert_eq!(seed.security_groups.len(), 1, "{seed:?}");

    let body = describe_cluster(&emu, "us-east-1", "nomad");
    let cluster = &body["clusters"][0];
    assert_eq!(cluster["status"], "ACTIVE", "{body}");
    assert_eq!(cluster["clusterArn"], seed.cluster_arn.as_str(), "{body}");

    let (status, transition) = emu
        .http_get("/moto-api/state-manager/get-transition?model_name=ecs::task")
        .expect("reading the ecs::task transition");
    assert_eq!(status, 200, "{transition}");
    let transition: Value = serde_json::from_str(&transition).expect("transition JSON");
    assert_eq!(
        transition,
        json!({ "progression": "manual", "times": 1000000 })
    );
}

#[tokio::test]
async fn a_task_run_on_the_seed_stays_running_across_polls() {
    let emu = start_default("nomad").await.expect("starting the emulator");
    let seed = emu.seed().clone();

    let (status, run) = ecs(
        &emu,
        "us-east-1",
        "RunTask",
        json!({
            "cluster": seed.cluster,
            "taskDefinition": seed.task_definition,
            "launchType": "FARGATE",
            "networkConfiguration": { "awsvpcConfiguration": {
                "subnets": seed.subnets,
                "securityGroups": seed.security_groups,
            }},
        }),
    );
    assert_eq!(status, 200, "RunTask: {run}");
    let task_arn = run["tasks"][0]["taskArn"]
        .as_str()
        .expect("taskArn")
        .to_owned();

    // Plain moto reports STOPPED by the fourth DescribeTasks; the seeded
    // transition must keep the task RUNNING.
    for poll in 1..=6 {
        let (status, found) = ecs(
            &emu,
            "us-east-1",
            "DescribeTasks",
            json!({ "cluster": seed.cluster, "tasks": [task_arn] }),
        );
        assert_eq!(status, 200, "DescribeTasks: {found}");
        assert_eq!(
            found["tasks"][0]["lastStatus"], "RUNNING",
            "poll {poll}: {found}"
        );
    }
}

#[tokio::test]
async fn two_emulators_run_side_by_side_on_different_ports() {
    let (east, west) = tokio::join!(
        start_default("east"),
        start_with(
            LocalVenv::from_env(),
            EmulatorOptions::new("west")
                .with_region("eu-west-1")
                .with_family("web"),
        ),
    );
    let east = east.expect("starting the us-east-1 emulator");
    let west = west.expect("starting the eu-west-1 emulator");

    assert_ne!(east.port(), west.port());
    assert_ne!(east.log_path(), west.log_path());
    assert_eq!(west.seed().region, "eu-west-1");
    assert_eq!(west.seed().task_definition, "web:1");
    assert_eq!(
        west.seed().cluster_arn,
        "arn:aws:ecs:eu-west-1:123456789012:cluster/west"
    );

    // Each server holds only its own state.
    let body = describe_cluster(&east, "us-east-1", "east");
    assert_eq!(body["clusters"][0]["status"], "ACTIVE", "{body}");
    let body = describe_cluster(&west, "eu-west-1", "west");
    assert_eq!(body["clusters"][0]["status"], "ACTIVE", "{body}");
    let body = describe_cluster(&east, "eu-west-1", "west");
    assert_eq!(body["clusters"], json!([]), "{body}");
    assert_eq!(body["failures"][0]["reason"], "MISSING", "{body}");
}

#[tokio::test]
async fn dropping_the_emulator_stops_the_server() {
    let emu = start_default("nomad").await.expect("starting the emulator");
    let port = emu.port();
    let log_dir = emu.log_path().parent().expect("log dir").to_owned();
    let (status, _) = emu
        .http_get("/moto-api/")
        .expect("the server answers while held");
    assert_eq!(status, 200);

    drop(emu);

    let err = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1))
        .expect_err("the port must be closed after the drop");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    assert_eq!(listens_on_loopback_only(port), (false, false));
    assert!(
        !log_dir.exists(),
        "the temp log dir {} must be removed",
        log_dir.display()
    );
}
