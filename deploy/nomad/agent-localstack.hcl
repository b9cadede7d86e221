# As agent.hcl, against LocalStack (compose profile "localstack-pro"):
#   NOMAD_AGENT_CONFIG=agent-localstack.hcl docker compose --profile localstack-pro up -d

plugin_dir = "/opt/nomad/plugins"

plugin "nomad-driver-ecs" {
  config {
    enabled            = true
    cluster            = "nomad"
    region             = "us-east-1"
    endpoint           = "http://localstack:4566"
    state_dir          = "/var/lib/nomad-driver-ecs"
    reconcile_interval = "5s"
    nomad_address      = "http://127.0.0.1:4646"
    telemetry_endpoint = "http://otel-collector:4317"
  }
}
