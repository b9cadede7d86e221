#!/usr/bin/env bash
# The main command's second example: a drain takeover on current Nomad (1.10+),
# on the local emulated stack (ECS emulator + emulated Nomad API + two emulated
# Nomad client nodes; no Docker, no AWS account, nothing leaves loopback).
# The service task starts on node-a; node-a is drained; the replacement
# allocation on node-b adopts the running ECS task (same ARN, one RunTask);
# then the job is stopped.
#
#   bash scripts/demo-drain.sh                  # examples/hello-service.nomad.hcl, a drain
#   bash scripts/demo-drain.sh --node-loss      # node-a dies instead, then comes back
#   bash scripts/demo-drain.sh --run-for 10s --verbose
#
# It builds the binaries, makes sure the emulator's venv is set up
# (localstack/setup.sh), then runs
#   nomad-ecs-dev drain <job file> [extra args]
# A first argument ending in .hcl replaces the default job file (one ecs task
# in one allocation); every other argument goes to nomad-ecs-dev (see
# `nomad-ecs-dev --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

job=examples/hello-service.nomad.hcl
if [[ $# -gt 0 && "$1" == *.hcl ]]; then
    job="$1"
    shift
fi

cargo build --bins
bash localstack/setup.sh

# No instance-metadata lookups, whatever the machine.
export AWS_EC2_METADATA_DISABLED=true
exec "${CARGO_TARGET_DIR:-target}/debug/nomad-ecs-dev" drain "$job" "$@"
