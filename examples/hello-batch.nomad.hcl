# hello-batch: a batch job whose one task runs as an AWS ECS (Fargate) task.
#
# Nomad places the allocation on a client running the nomad-driver-ecs plugin;
# the driver starts the ECS task, waits for its essential container to exit,
# and reports that container's exit code as the task's result. A batch job is
# done when its task exits with code 0.
#
# On the local dev stack (no Nomad, no AWS):
#
#   bash scripts/demo.sh                 # build, set up the emulator, run this job
#   bash scripts/demo.sh --exit-code 3   # the container exits with code 3
#
# The dev tool (nomad-ecs-dev) starts the ECS emulator, so it cannot know the
# IDs below in advance. It replaces these placeholder values with what it seeded:
#
#   "task-definition-from-emulator"   the registered Fargate task definition
#   "subnet-from-emulator"            the seeded VPC's subnets (all of them)
#   "sg-from-emulator"                the seeded security group
#
# To run the same file on a real Nomad cluster, put your own task definition
# (family:revision or ARN), subnet IDs and security group IDs in their place.
job "hello-batch" {
  datacenters = ["*"]
  type        = "batch"

  group "app" {
    count = 1

    task "hello" {
      driver = "ecs"

      # How long Nomad waits after asking ECS to stop the task.
      kill_timeout = "10s"

      config {
        task {
          launch_type     = "FARGATE"
          task_definition = "task-definition-from-emulator"

          network_configuration {
            aws_vpc_configuration {
              assign_public_ip = "DISABLED"
              security_groups  = ["sg-from-emulator"]
              subnets          = ["subnet-from-emulator"]
            }
          }
        }
      }
    }
  }
}
