#!/usr/bin/env bash
# The whole test suite: unit tests, SDK-level tests, the real binary under the
# emulated Nomad host, and end-to-end scenarios against the ECS emulator
# (moto, installed into ./.venv by localstack/setup.sh, bound to loopback).
set -euo pipefail
cd "$(dirname "$0")/.."

bash localstack/setup.sh

# No test may reach an instance-metadata endpoint or a real AWS account.
export AWS_EC2_METADATA_DISABLED=true

if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --profile ci --no-tests=fail
else
    echo "cargo-nextest not found; falling back to cargo test" >&2
    cargo test --lib --bins --tests
fi
cargo test --doc
