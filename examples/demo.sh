#!/usr/bin/env bash
# The bundled example, from a fresh machine: install what is missing, build the sandbox image (offline), build
# drafter, then turn the example ticket DEMO-1 into a draft pull request against local stand-ins for Jira, GitHub
# and the model. The sandbox is a real, locked-down Docker container.
set -euo pipefail
cd "$(dirname "$0")/.."

.ci/install-deps
images/sandbox/build.sh
cargo build --bins --example demo
exec target/debug/examples/demo
