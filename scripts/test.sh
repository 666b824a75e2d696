#!/usr/bin/env bash
# Builds mtc (installing dependencies when missing) and runs every test:
# unit tests (GoogleTest), the lit suite (FileCheck) and the end-to-end
# training tests, through ctest. Ends with ctest's summary.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
BUILD="${MTC_BUILD_DIR:-build}"
ctest --test-dir "$BUILD" --output-on-failure -j "${MTC_JOBS:-$(nproc)}"
