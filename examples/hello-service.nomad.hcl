# hello-service: a service job whose one task runs as an AWS ECS (Fargate) task
# until Nomad stops it (job stop, a new version, a drain).
#
# On Nomad, the driver keeps the ECS task running and watches it; when Nomad
# stops the allocation, the driver calls ECS StopTask, and a stop that Nomad
# asked for ends the task cleanly (exit code 0).
#
# On the local dev stack (no Nomad, no AWS):
#
#   cargo run --bin nomad-ecs-dev -- run examples/hello-service.nomad.hcl --run-for 3s
#
# runs it for three seconds and then stops it as Nomad would. With
# `--exit-code N` the container exits with code N instead, as if it crashed.
#
# Placeholders the dev tool fills in from its seeded ECS emulator (replace them
# with your own IDs to run this file on a real Nomad cluster):
#
#   "task-definition-from-emulator"   the registered Fargate task definition
#   "subnet-from-emulator"            the seeded VPC's subnets (all of them)
#   "sg-from-emulator"                the seeded security group
job "hello-service" {
  datacenters = ["*"]
  type        = "service"

  group "web" {
    count = 1

    task "server" {
      driver = "ecs"

      # Sent to the driver with StopTask; ECS itself stops containers with
      # SIGTERM, then SIGKILL after the task definition's stopTimeout.
      kill_signal  = "SIGTERM"
      kill_timeout = "15s"

      config {
        task {
          launch_type     = "FARGATE"
          task_definition = "task-definition-from-emulator"

          network_configuration {
            aws_vpc_configuration {
              security_groups = ["sg-from-emulator"]
              subnets         = ["subnet-from-emulator"]
            }
          }
        }
      }
    }
  }
}
