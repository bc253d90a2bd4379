#!/usr/bin/env bash
# What the tests need: the package with its test extras, and Debian's Chromium for the report's browser test
# (tests/test_pipeline.py opens reports/index.html in it; the test is skipped, saying why, where it is missing).
set -uo pipefail
pip install -q -e '.[test]' || exit 1
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then apt_get="apt-get"; else apt_get="sudo -n apt-get"; fi
  export DEBIAN_FRONTEND=noninteractive
  ($apt_get install -y -q chromium || ($apt_get update -q && $apt_get install -y -q chromium)) >/dev/null 2>&1 \
    || echo "setup_tests.sh: Chromium could not be installed; the browser test will be skipped"
fi
exit 0
