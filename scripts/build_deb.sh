#!/usr/bin/env bash
# Builds the Debian packages of gridwatt from this tree into dist/ (or --out DIR):
#   gridwatt-common_<v>_<arch>.deb     a self-contained virtualenv in /opt/gridwatt (gridwatt and its
#                                      Python dependencies, on Debian's python3), the system user
#                                      "gridwatt", /var/lib/gridwatt, /usr/bin/gridwatt
#   gridwatt-agent_<v>_all.deb         /usr/bin/gridwatt-agent, gridwatt-agent.service,
#                                      /etc/gridwatt/agent.toml (conffile)
#   gridwatt-collector_<v>_all.deb     /usr/bin/gridwatt-collector, gridwatt-collector.service,
#                                      /etc/gridwatt/collector.toml (conffile), the DE grid data
# Nothing is enabled or started on install. See deploy/debian/README.md.
#
# Needs: Debian's python3 (the packages' interpreter: python3.X of the build machine), dpkg-deb,
# and pip (from .venv, made by scripts/setup.sh) with access to PyPI for the dependencies.
# Usage: scripts/build_deb.sh [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=$ROOT/dist
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT=$(realpath -m "$2"); shift 2 ;;
    *) echo "usage: $0 [--out DIR]" >&2; exit 2 ;;
  esac
done
log() { printf '[build_deb] %s\n' "$*" >&2; }

SYS_PY=/usr/bin/python3                 # the interpreter the packages run on (Debian's)
PIP=(${PIP:-$ROOT/.venv/bin/python -m pip})
[ -x "$SYS_PY" ] || { log "need Debian's $SYS_PY"; exit 1; }
command -v dpkg-deb >/dev/null || { log "need dpkg-deb"; exit 1; }
PYVER=$("$SYS_PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
VERSION=$("$SYS_PY" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
DEBVER="${VERSION}-1"
ARCH=$(dpkg --print-architecture)
MAINTAINER="gridwatt maintainers <gridwatt@example.org>"
# Reproducible timestamps: the last commit's time (else now).
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
export SOURCE_DATE_EPOCH

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"

# ---- helpers -------------------------------------------------------------------------------
doc_dir() {  # doc_dir STAGE PKG: copyright + changelog.Debian.gz
  local stage=$1 pkg=$2 d="$1/usr/share/doc/$2"
  install -d -m 0755 "$d"
  cat > "$d/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: gridwatt
Source: the gridwatt repository

Files: *
Copyright: 2025-2026 the gridwatt authors
License: Apache-2.0
 On Debian systems the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
EOF
  if [ -n "${3:-}" ]; then cat "$3" >> "$d/copyright"; fi
  local date
  date=$(date -u -R -d "@$SOURCE_DATE_EPOCH")
  printf '%s (%s) unstable; urgency=medium\n\n  * Package built from the gridwatt tree by scripts/build_deb.sh.\n\n -- %s  %s\n' \
    "$pkg" "$DEBVER" "$MAINTAINER" "$date" | gzip -9n > "$d/changelog.Debian.gz"
  chmod 0644 "$d/copyright" "$d/changelog.Debian.gz"
}

overrides() {  # overrides STAGE PKG: the lintian overrides, each with its reason (deploy/debian/PKG)
  install -d -m 0755 "$1/usr/share/lintian/overrides"
  install -m 0644 "deploy/debian/$2/lintian-overrides" "$1/usr/share/lintian/overrides/$2"
}

man_page() {  # man_page STAGE NAME
  install -d -m 0755 "$1/usr/share/man/man1"
  gzip -9n < "deploy/debian/man/$2.1" > "$1/usr/share/man/man1/$2.1.gz"
  chmod 0644 "$1/usr/share/man/man1/$2.1.gz"
}

finish() {  # finish STAGE PKG ARCH DEPENDS SHORT LONG: control, md5sums, maintainer scripts, build
  local stage=$1 pkg=$2 arch=$3 depends=$4 short=$5 long=$6
  install -d -m 0755 "$stage/DEBIAN"
  for s in postinst prerm postrm; do
    if [ -f "deploy/debian/$pkg/$s" ]; then install -m 0755 "deploy/debian/$pkg/$s" "$stage/DEBIAN/$s"; fi
  done
  if [ -d "$stage/etc" ]; then
    (cd "$stage" && find etc -type f | sort | sed 's|^|/|') > "$stage/DEBIAN/conffiles"
    chmod 0644 "$stage/DEBIAN/conffiles"
  fi
  (cd "$stage" && find . -path ./DEBIAN -prune -o -type f -print | sed 's|^\./||' | LC_ALL=C sort \
     | xargs -d '\n' md5sum) > "$stage/DEBIAN/md5sums"
  chmod 0644 "$stage/DEBIAN/md5sums"
  local size
  size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
  {
    echo "Package: $pkg"
    echo "Version: $DEBVER"
    echo "Architecture: $arch"
    echo "Maintainer: $MAINTAINER"
    echo "Installed-Size: $size"
    echo "Depends: $depends"
    echo "Section: admin"
    echo "Priority: optional"
    echo "Description: $short"
    printf '%s\n' "$long" | fold -s -w 78 | sed 's/ *$//; s/^/ /; s/^ $/ ./'
  } > "$stage/DEBIAN/control"
  chmod 0644 "$stage/DEBIAN/control"
  find "$stage" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
  dpkg-deb --root-owner-group -Zxz --build "$stage" "$OUT/${pkg}_${DEBVER}_${arch}.deb" >/dev/null
  log "built $OUT/${pkg}_${DEBVER}_${arch}.deb"
}

# ---- gridwatt-common: the virtualenv -------------------------------------------------------
S=$WORK/gridwatt-common
VENV=$S/opt/gridwatt
log "virtualenv on $SYS_PY (Python $PYVER) with gridwatt $VERSION from $ROOT"
"$SYS_PY" -m venv --without-pip "$VENV"
# The project is built from a clean copy of the tree's files (tracked and new, not ignored), so
# no stale build/ folder of an earlier build leaks into the package.
SRC=$ROOT
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  SRC=$WORK/src
  mkdir -p "$SRC"
  git -C "$ROOT" ls-files -z --cached --others --exclude-standard | (cd "$ROOT" && tar --null -T - -cf -) \
    | tar -xf - -C "$SRC"
fi
# pip of the build environment installs into the staged venv: a regular, non-editable install,
# however the tree lays out its packages.
"${PIP[@]}" --python "$VENV/bin/python" install --quiet --no-compile --no-cache-dir \
  --disable-pip-version-check "$SRC"
# The staged venv knows its build path: make it the installed one.
grep -rlI --null "$S" "$VENV/bin" "$VENV/pyvenv.cfg" | xargs -0 -r sed -i "s|$S||g"
rm -f "$VENV"/lib/python*/site-packages/*.dist-info/direct_url.json
sed -i '/direct_url.json/d' "$VENV"/lib/python*/site-packages/*.dist-info/RECORD
find "$VENV" -type d -name __pycache__ -prune -exec rm -rf {} +
# Shared objects of the wheels: strip debugging symbols (smaller, and no build paths).
find "$VENV" -name '*.so*' -type f -exec strip --strip-unneeded {} + 2>/dev/null || true
find "$S" -type d -exec chmod 0755 {} +
find "$S" -type f -exec chmod u+rw,go+r,go-w {} +
# Wheels ship some modules with execute bits; below site-packages only shared objects keep them.
find "$VENV"/lib/python*/site-packages -type f ! -name '*.so*' -exec chmod a-x {} +
install -d -m 0755 "$S/usr/bin"
ln -s /opt/gridwatt/bin/gridwatt "$S/usr/bin/gridwatt"
man_page "$S" gridwatt
# The licences of what the venv bundles, from the installed distributions' metadata.
"$VENV/bin/python" - > "$WORK/bundled" <<'PY'
from importlib import metadata
print()
for dist in sorted(metadata.distributions(), key=lambda d: d.metadata["Name"].lower()):
    md = dist.metadata
    lic = md.get("License-Expression") or ", ".join(
        c.split(" :: ")[-1] for c in md.get_all("Classifier") or [] if c.startswith("License ::"))
    if not lic:
        raw = (md.get("License") or "").strip().splitlines()
        lic = raw[0] if raw else ""
    print(f"Files: opt/gridwatt/lib/*/site-packages/{md['Name']}*")
    print(f"Copyright: the {md['Name']} authors (bundled, version {md['Version']})")
    print(f"License: {(lic or 'see the distribution').strip()[:200]}")
    print(" The licence text is in the distribution's .dist-info folder under /opt/gridwatt.")
    print()
PY
doc_dir "$S" gridwatt-common "$WORK/bundled"
overrides "$S" gridwatt-common
finish "$S" gridwatt-common "$ARCH" \
  "python${PYVER}, libc6, adduser" \
  "gridwatt GPU energy telemetry: shared virtualenv and system user" \
  "gridwatt measures the energy and carbon of GPU jobs: an agent on each GPU node, a collector that accounts for PUE and grid carbon intensity and stores the series in InfluxDB. This package holds gridwatt and its Python dependencies in a self-contained virtualenv in /opt/gridwatt, the gridwatt command, and creates the system user gridwatt. Install gridwatt-agent on GPU nodes and gridwatt-collector on the collector host."

# ---- gridwatt-agent -------------------------------------------------------------------------
S=$WORK/gridwatt-agent
install -d -m 0755 "$S/usr/bin" "$S/etc/gridwatt" "$S/lib/systemd/system"
ln -s /opt/gridwatt/bin/gridwatt-agent "$S/usr/bin/gridwatt-agent"
install -m 0644 deploy/agent.example.toml "$S/etc/gridwatt/agent.toml"
install -m 0644 deploy/systemd/gridwatt-agent.service "$S/lib/systemd/system/gridwatt-agent.service"
man_page "$S" gridwatt-agent
doc_dir "$S" gridwatt-agent
overrides "$S" gridwatt-agent
finish "$S" gridwatt-agent all "gridwatt-common (= $DEBVER)" \
  "gridwatt GPU energy telemetry: node agent" \
  "The gridwatt agent reads each GPU's energy counter through NVML, attributes every interval to the jobs that ran on it (Slurm, Kubernetes, job-mapping files) and streams the samples to a gridwatt collector, keeping them in an on-disk spool until acknowledged. The service is installed but not enabled: edit /etc/gridwatt/agent.toml, then run systemctl enable --now gridwatt-agent."

# ---- gridwatt-collector ---------------------------------------------------------------------
S=$WORK/gridwatt-collector
install -d -m 0755 "$S/usr/bin" "$S/etc/gridwatt" "$S/lib/systemd/system" "$S/usr/share/gridwatt/data/grid"
ln -s /opt/gridwatt/bin/gridwatt-collector "$S/usr/bin/gridwatt-collector"
# The example's grid data path is relative to the example's folder: point it at the shipped copy.
sed 's|"data/grid/|"/usr/share/gridwatt/data/grid/|' deploy/collector.example.toml > "$S/etc/gridwatt/collector.toml"
chmod 0644 "$S/etc/gridwatt/collector.toml"
install -m 0644 deploy/data/grid/DE_2022_hourly.csv deploy/data/grid/README.md "$S/usr/share/gridwatt/data/grid/"
install -m 0644 deploy/systemd/gridwatt-collector.service "$S/lib/systemd/system/gridwatt-collector.service"
man_page "$S" gridwatt-collector
cat > "$WORK/grid-copyright" <<'EOF'

Files: usr/share/gridwatt/data/grid/*
Copyright: Electricity Maps
License: ODbL-1.0
 Hourly carbon intensity data of Electricity Maps, published under the Open Database
 License (ODbL) 1.0; see usr/share/gridwatt/data/grid/README.md.
EOF
doc_dir "$S" gridwatt-collector "$WORK/grid-copyright"
overrides "$S" gridwatt-collector
finish "$S" gridwatt-collector all "gridwatt-common (= $DEBVER)" \
  "gridwatt GPU energy telemetry: collector" \
  "The gridwatt collector receives the agents' samples over gRPC, accounts each interval's energy with the PUE of its rack and the carbon intensity of its grid zone at the time it was used, stores GPU, job, node and rack series in InfluxDB and answers job reports. The service is installed but not enabled: edit /etc/gridwatt/collector.toml, then run systemctl enable --now gridwatt-collector."

ls -l "$OUT"/gridwatt-*_"$DEBVER"_*.deb >&2
