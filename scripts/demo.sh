#!/usr/bin/env bash
# The main command: the driver running a real example job end to end on the
# local emulated stack (ECS emulator + emulated Nomad client; no Docker, no
# AWS account, nothing leaves loopback).
#
#   bash scripts/demo.sh                      # examples/hello-batch.nomad.hcl, exit code 0
#   bash scripts/demo.sh --exit-code 3        # the container exits with code 3
#   bash scripts/demo.sh --run-for 10s --verbose
#   bash scripts/demo.sh examples/hello-service.nomad.hcl
#
# It builds the binaries, makes sure the emulator's venv is set up
# (localstack/setup.sh), then runs
#   nomad-ecs-dev run <job file> [extra args]
# A first argument ending in .hcl replaces the default job file; every other
# argument goes to nomad-ecs-dev (see `nomad-ecs-dev --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

job=examples/hello-batch.nomad.hcl
if [[ $# -gt 0 && "$1" == *.hcl ]]; then
    job="$1"
    shift
fi

cargo build --bins
bash localstack/setup.sh

# No instance-metadata lookups, whatever the machine.
export AWS_EC2_METADATA_DISABLED=true
exec "${CARGO_TARGET_DIR:-target}/debug/nomad-ecs-dev" run "$job" "$@"
