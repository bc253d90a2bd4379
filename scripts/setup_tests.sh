#!/usr/bin/env bash
# What the tests need: the package with its test extras, Debian's Chromium for the report's browser test
# (tests/test_pipeline.py opens reports/index.html in it) and PostgreSQL for the team set-up test (mlflow server
# on PostgreSQL); a test whose program is missing is skipped, saying why.
set -uo pipefail
pip install -q -e '.[test]' || exit 1
if [ "$(id -u)" -eq 0 ]; then apt_get="apt-get"; else apt_get="sudo -n apt-get"; fi
export DEBIAN_FRONTEND=noninteractive
install() {  # a Debian package, or a line saying the tests that need it will be skipped
  ($apt_get install -y -q "$1" || ($apt_get update -q && $apt_get install -y -q "$1")) >/dev/null 2>&1 \
    || echo "setup_tests.sh: $1 could not be installed; the tests that need it will be skipped"
}
[ -x /usr/bin/chromium ] || install chromium
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || install postgresql
exit 0
