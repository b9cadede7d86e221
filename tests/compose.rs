//! The compose stack, checked without a Docker engine: `docker-compose.yml`
//! against the Compose Specification's JSON schema (vendored in
//! `deploy/compose-spec/`), pinned images, loopback-only ports and health
//! checks, and the files it mounts (Nomad agent, collector, Prometheus and
//! Grafana configs) against each other and against the metrics the driver
//! exports.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use nomad_driver_ecs::telemetry::metrics::{Kind, METRICS};
use serde_json::Value;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(path: &str) -> Value {
    serde_yaml_ng::from_str(&read(path)).unwrap_or_else(|e| panic!("{path} is not YAML: {e}"))
}

fn compose() -> Value {
    yaml("docker-compose.yml")
}

fn services(c: &Value) -> Vec<(&str, &Value)> {
    c["services"]
        .as_object()
        .expect("services")
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect()
}

#[test]
fn docker_compose_yml_is_valid_against_the_compose_specification() {
    let schema: Value =
        serde_json::from_str(&read("deploy/compose-spec/compose-spec.json")).unwrap();
    let url = "file:///deploy/compose-spec/compose-spec.json";
    let mut compiler = boon::Compiler::new();
    compiler.add_resource(url, schema).unwrap();
    let mut schemas = boon::Schemas::new();
    let index = compiler
        .compile(url, &mut schemas)
        .expect("the schema compiles");
    let doc = compose();
    if let Err(e) = schemas.validate(&doc, index) {
        panic!("docker-compose.yml does not follow the Compose Specification:\n{e:#}");
    }
    // The schema is strict enough to notice a misspelt key.
    let mut bad = doc.clone();
    bad["services"]["moto"]["helthcheck"] = serde_json::json!({"test": ["NONE"]});
    assert!(
        schemas.validate(&bad, index).is_err(),
        "the schema rejects unknown keys"
    );
}

#[test]
fn every_image_is_pinned_to_a_version() {
    let c = compose();
    for (name, svc) in services(&c) {
        let image = svc["image"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} has no image"));
        let (_, tag) = image
            .rsplit_once(':')
            .filter(|(_, t)| !t.contains('/'))
            .unwrap_or_else(|| panic!("{name}: {image} has no tag"));
        assert!(
            tag != "latest" && tag.chars().any(|c| c.is_ascii_digit()),
            "{name}: {image} is not pinned to a version"
        );
    }
    for line in read("deploy/nomad/Dockerfile").lines() {
        if let Some(rest) = line.strip_prefix("FROM ") {
            let image = rest.split_whitespace().next().unwrap();
            let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
            assert!(
                tag.chars().any(|c| c.is_ascii_digit()) && tag != "latest",
                "Dockerfile: {image} is not pinned"
            );
        }
    }
}

#[test]
fn every_published_port_is_bound_to_loopback() {
    let c = compose();
    let mut published = 0;
    for (name, svc) in services(&c) {
        for port in svc["ports"].as_array().into_iter().flatten() {
            published += 1;
            match port {
                Value::String(p) => assert!(
                    p.starts_with("127.0.0.1:") && p.matches(':').count() == 2,
                    "{name}: port {p:?} is not bound to 127.0.0.1"
                ),
                Value::Object(p) => assert_eq!(
                    p.get("host_ip").and_then(Value::as_str),
                    Some("127.0.0.1"),
                    "{name}: port {p:?} is not bound to 127.0.0.1"
                ),
                other => panic!("{name}: port {other} publishes on every interface"),
            }
        }
        assert!(
            svc.get("network_mode").is_none(),
            "{name}: host networking bypasses the bindings"
        );
    }
    assert!(published >= 6, "the UIs and endpoints are published");
}

#[test]
fn every_long_running_service_has_a_health_check() {
    let c = compose();
    // One-shot jobs are waited on for completion, not health.
    let one_shot: BTreeSet<&str> = services(&c)
        .iter()
        .flat_map(|(_, svc)| svc["depends_on"].as_object().into_iter().flatten())
        .filter(|(_, dep)| dep["condition"] == "service_completed_successfully")
        .map(|(name, _)| name.as_str())
        .collect();
    assert!(one_shot.contains("seed"), "{one_shot:?}");
    for (name, svc) in services(&c) {
        if one_shot.contains(name) {
            assert_eq!(svc["restart"], "no", "{name} is a one-shot job");
            continue;
        }
        let test = &svc["healthcheck"]["test"];
        let words: Vec<&str> = test
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        assert!(
            matches!(words.first(), Some(&"CMD" | &"CMD-SHELL")) && words.len() > 1,
            "{name} has no health check: {test}"
        );
        assert!(
            svc["healthcheck"]["disable"] != true,
            "{name} disables its health check"
        );
    }
    // What depends on health has a health check to wait for.
    for (name, svc) in services(&c) {
        for (dep, how) in svc["depends_on"].as_object().into_iter().flatten() {
            if how["condition"] == "service_healthy" {
                assert!(
                    c["services"][dep]["healthcheck"].is_object(),
                    "{name} waits on {dep}'s health"
                );
            }
        }
    }
}

#[test]
fn the_localstack_service_is_opt_in_and_needs_its_token() {
    let c = compose();
    let ls = &c["services"]["localstack"];
    assert_eq!(ls["profiles"], serde_json::json!(["localstack-pro"]));
    assert!(
        ls["environment"]["LOCALSTACK_AUTH_TOKEN"]
            .as_str()
            .unwrap()
            .contains("${LOCALSTACK_AUTH_TOKEN")
    );
    for (name, svc) in services(&c) {
        if name != "localstack" {
            assert!(svc.get("profiles").is_none(), "{name} runs by default");
        }
    }
}

#[test]
fn mounted_files_exist() {
    let c = compose();
    for (name, svc) in services(&c) {
        for v in svc["volumes"].as_array().into_iter().flatten() {
            let spec = v.as_str().expect("short volume syntax");
            if let Some(rel) = spec.strip_prefix("./") {
                let host = rel.split(':').next().unwrap();
                assert!(
                    repo(host).exists(),
                    "{name} mounts {host}, which does not exist"
                );
            }
        }
        if let Some(df) = svc["build"]["dockerfile"].as_str() {
            assert!(repo(df).is_file(), "{name}: {df}");
        }
    }
    assert!(repo("localstack/seed.py").is_file());
}

/// The plugin block's config of an agent file.
fn plugin_config(path: &str) -> serde_json::Map<String, Value> {
    let agent: Value = hcl::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(agent["plugin_dir"], "/opt/nomad/plugins", "{path}");
    agent["plugin"]["nomad-driver-ecs"]["config"]
        .as_object()
        .unwrap_or_else(|| panic!("{path} has no plugin \"nomad-driver-ecs\" config"))
        .clone()
}

#[test]
fn the_nomad_agent_runs_the_driver_against_moto_and_exports_to_the_collector() {
    for (path, endpoint) in [
        ("deploy/nomad/agent.hcl", "http://moto:5000"),
        (
            "deploy/nomad/agent-localstack.hcl",
            "http://localstack:4566",
        ),
    ] {
        let cfg = plugin_config(path);
        for key in cfg.keys() {
            assert!(
                nomad_driver_ecs::config::KEYS.contains(&key.as_str()),
                "{path}: unknown option {key}"
            );
        }
        let block = Value::Object(cfg.clone());
        let settings =
            nomad_driver_ecs::config::load(Some(block)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(settings.enabled);
        assert_eq!(settings.endpoint.as_deref(), Some(endpoint), "{path}");
        assert_eq!(
            settings.telemetry_endpoint.as_deref(),
            Some("http://otel-collector:4317"),
            "{path}"
        );
    }
    let c = compose();
    let nomad = &c["services"]["nomad"];
    assert_eq!(nomad["build"]["dockerfile"], "deploy/nomad/Dockerfile");
    let dockerfile = read("deploy/nomad/Dockerfile");
    assert!(
        dockerfile.contains("/opt/nomad/plugins/nomad-driver-ecs"),
        "the binary lands in the plugin dir under the plugin block's name"
    );
    assert_eq!(
        nomad["depends_on"]["seed"]["condition"],
        "service_completed_successfully"
    );
    let seed = serde_json::to_string(&c["services"]["seed"]["command"]).unwrap();
    assert!(
        seed.contains("/seed/seed.py")
            && seed.contains("http://moto:5000")
            && seed.contains("--cluster nomad")
    );
}

#[test]
fn traces_flow_to_jaeger_and_metrics_to_prometheus() {
    let col = yaml("deploy/otel-collector/config.yaml");
    let pipelines = &col["service"]["pipelines"];
    assert_eq!(
        pipelines["traces"]["receivers"],
        serde_json::json!(["otlp"])
    );
    assert_eq!(
        pipelines["metrics"]["receivers"],
        serde_json::json!(["otlp"])
    );
    assert!(
        col["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
            .as_str()
            .unwrap()
            .ends_with(":4317")
    );
    let trace_exporter = pipelines["traces"]["exporters"][0].as_str().unwrap();
    assert_eq!(col["exporters"][trace_exporter]["endpoint"], "jaeger:4317");
    let metric_exporter = pipelines["metrics"]["exporters"][0].as_str().unwrap();
    assert_eq!(metric_exporter, "prometheus");
    let prom_port = col["exporters"]["prometheus"]["endpoint"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        col["extensions"]["health_check"]["endpoint"],
        "0.0.0.0:13133"
    );

    let prom = yaml("deploy/prometheus/prometheus.yml");
    let targets: Vec<&str> = prom["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["static_configs"].as_array().unwrap())
        .flat_map(|s| s["targets"].as_array().unwrap())
        .filter_map(Value::as_str)
        .collect();
    assert!(
        targets.contains(&format!("otel-collector:{prom_port}").as_str()),
        "{targets:?}"
    );

    let c = compose();
    for svc in ["otel-collector", "jaeger", "prometheus", "grafana"] {
        assert!(c["services"][svc].is_object(), "{svc} is in the stack");
    }
}

/// Every Prometheus metric name a PromQL expression mentions.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("nomad_ecs_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

#[test]
fn the_dashboard_charts_every_metric_the_driver_exports_and_nothing_else() {
    let dash: Value =
        serde_json::from_str(&read("deploy/grafana/dashboards/nomad-driver-ecs.json")).unwrap();
    let datasources = yaml("deploy/grafana/provisioning/datasources/datasources.yaml");
    let uids: BTreeSet<&str> = datasources["datasources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["uid"].as_str())
        .collect();
    let mut used = BTreeSet::new();
    for panel in dash["panels"].as_array().unwrap() {
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap();
        assert!(
            uids.contains(panel["datasource"]["uid"].as_str().unwrap()),
            "{title}: unknown data source"
        );
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title} has no query");
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{title}: {expr}");
            for name in names {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .filter(|b| METRICS.iter().any(|m| m.3 == *b && m.1 == Kind::Histogram))
                    .unwrap_or(&name)
                    .to_string();
                assert!(
                    METRICS.iter().any(|m| m.3 == base),
                    "{title}: {name} is not a metric the driver exports"
                );
                used.insert(base);
            }
        }
    }
    for m in METRICS {
        assert!(used.contains(m.3), "{} ({}) is on no panel", m.0, m.3);
    }
    let provider = yaml("deploy/grafana/provisioning/dashboards/dashboards.yaml");
    assert_eq!(
        provider["providers"][0]["options"]["path"],
        "/var/lib/grafana/dashboards"
    );
    let c = compose();
    let mounts = serde_json::to_string(&c["services"]["grafana"]["volumes"]).unwrap();
    assert!(mounts.contains("./deploy/grafana/dashboards:/var/lib/grafana/dashboards"));
}
