# Nomad dev agent of the compose stack (server and client in one, `-dev`),
# with this driver in its plugin dir, running tasks in the moto emulator and
# exporting telemetry to the stack's OpenTelemetry Collector.

plugin_dir = "/opt/nomad/plugins"

plugin "nomad-driver-ecs" {
  config {
    enabled            = true
    cluster            = "nomad"
    region             = "us-east-1"
    endpoint           = "http://moto:5000"
    state_dir          = "/var/lib/nomad-driver-ecs"
    reconcile_interval = "5s"
    nomad_address      = "http://127.0.0.1:4646"
    telemetry_endpoint = "http://otel-collector:4317"
  }
}
