#!/usr/bin/env bash
# One-time (idempotent) set-up on a fresh Debian/Ubuntu machine:
#   - InfluxDB 1.x server binary (Debian package `influxdb`; the service is not started),
#   - VictoriaMetrics (Debian package `victoria-metrics`), the real server of the InfluxDB 2.x
#     write-path test (optional: that test is skipped without it),
#   - a virtualenv in .venv with gridwatt and its dev tools installed (editable).
# Used by scripts/demo.sh and scripts/test.sh; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup] %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root for: $*  (run as root or install sudo)"; return 1; fi
}

# Debian packages: the InfluxDB 1.x server (demo, tests), and for the tests a real Prometheus
# Alertmanager and VictoriaMetrics (InfluxDB v2 write API). Their system services are not used:
# the tests and the demo start their own servers on free ports with temporary data folders.
missing=()
command -v influxd >/dev/null 2>&1 || missing+=(influxdb)
[ -x /usr/bin/prometheus-alertmanager ] || missing+=(prometheus-alertmanager)
[ -x /usr/bin/victoria-metrics ] || missing+=(victoria-metrics)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# poppler-utils: pdftotext/pdftoppm read back the PDF sustainability report in its tests
command -v pdftotext >/dev/null 2>&1 || missing+=(poppler-utils)
# the deployment tests (tests/deploy): real useradd/systemctl fill --root images; curl as in the README
command -v useradd >/dev/null 2>&1 || missing+=(passwd)
command -v systemctl >/dev/null 2>&1 || missing+=(systemd)
command -v curl >/dev/null 2>&1 || missing+=(curl)
# views (#11): promtool and a real Prometheus for the /metrics and dashboard tests; headless
# Chromium and its WebDriver for the web page's browser test
[ -x /usr/bin/prometheus ] && [ -x /usr/bin/promtool ] || missing+=(prometheus)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
# Debian packages of gridwatt (scripts/build_deb.sh, tests/deploy/test_deb.py): lintian checks them,
# strip (binutils) trims the bundled shared objects.
command -v lintian >/dev/null 2>&1 || missing+=(lintian)
command -v strip >/dev/null 2>&1 || missing+=(binutils)
# scale-out (#9): haproxy in front of two collectors (tests/e2e/test_scale_out.py)
[ -x /usr/sbin/haproxy ] || missing+=(haproxy)
# Slurm 22.05 with munge, slurmdbd and MariaDB: tests/slurm_cluster.py starts a real one-node
# cluster from them (its own munged, database and daemons on free ports; no system service used).
[ -x /usr/sbin/slurmctld ] || missing+=(slurm-wlm)
[ -x /usr/sbin/munged ] || missing+=(munge)
[ -x /usr/sbin/slurmdbd ] || missing+=(slurmdbd)
[ -x /usr/sbin/mariadbd ] || missing+=(mariadb-server)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq || log "apt-get update failed; trying the install anyway"
  as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v victoria-metrics >/dev/null 2>&1 && [ ! -x /usr/bin/victoria-metrics ]; then
  log "installing VictoriaMetrics (apt package victoria-metrics) for the InfluxDB 2.x write-path test"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get install -y -qq --no-install-recommends victoria-metrics >/dev/null 2>&1 \
    || { as_root apt-get update -qq && as_root apt-get install -y -qq --no-install-recommends \
         victoria-metrics >/dev/null; } \
    || log "victoria-metrics could not be installed; its test will be skipped"
fi

PY=$(bash scripts/find_python.sh) || { log "Python 3.11 or newer is required"; exit 1; }

stamp=.venv/.gridwatt-installed
if [ ! -x .venv/bin/python ]; then
  log "creating .venv with $PY"
  "$PY" -m venv .venv
fi
# Versions come from requirements.lock (pip constraints; refresh with scripts/lock.sh), so CI and
# every developer test the same releases.
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ requirements.lock -nt "$stamp" ]; then
  log "installing gridwatt and dev tools into .venv (pinned by requirements.lock)"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install -q -c requirements.lock -e '.[dev]'
  touch "$stamp"
fi
"$PY" scripts/typecheck_tree.py  # the import tree mypy reads (see pyproject.toml [tool.mypy])
log "ready: .venv/bin/gridwatt, .venv/bin/gridwatt-agent, .venv/bin/gridwatt-collector; influxd $(influxd version 2>/dev/null | head -1)"
