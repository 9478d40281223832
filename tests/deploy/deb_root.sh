#!/usr/bin/env bash
# Installs gridwatt's .deb packages for real into a throwaway root, runs the programs from it, then
# removes and purges them. Run as root; it re-executes itself in a private mount namespace
# (unshare), so nothing it mounts or writes reaches the host:
#   - the throwaway root is a tmpfs;
#   - its /usr is an overlay on the host's /usr (python3, adduser, dpkg come from there) whose
#     writes land in the tmpfs;
#   - /etc and dpkg's database (/var/lib/dpkg) are copies of the host's, so the packages'
#     dependencies are met by what the host has installed.
# Usage: deb_root.sh PORT DEB...   (PORT: a collector listening on 127.0.0.1 for `check`)
# Output: for each step "=== STEP <name>", its output, then "=== RC <name> <exit code>".
set -euo pipefail

if [ "${GRIDWATT_DEB_ROOT_INNER:-}" != 1 ]; then
  exec env GRIDWATT_DEB_ROOT_INNER=1 unshare --mount --propagation private "$0" "$@"
fi

PORT=$1; shift
R=$(mktemp -d /tmp/gridwatt-debroot.XXXXXX)
mount -t tmpfs -o mode=0755 tmpfs "$R"
mkdir -p "$R"/{usr,etc,var/lib,var/log,var/cache,var/tmp,tmp,run,opt,proc,dev,root,debs,.ovl/upper,.ovl/work}
chmod 1777 "$R/tmp" "$R/var/tmp"
for d in bin sbin lib lib64; do ln -s "usr/$d" "$R/$d"; done
mount -t overlay overlay -o "lowerdir=/usr,upperdir=$R/.ovl/upper,workdir=$R/.ovl/work" "$R/usr"
cp -a /etc/. "$R/etc/"
cp -a /var/lib/dpkg "$R/var/lib/dpkg"
rm -f "$R"/var/lib/dpkg/lock*
mount --rbind /dev "$R/dev"
mount -t proc proc "$R/proc"
cp "$@" "$R/debs/"
trap 'umount -R "$R" 2>/dev/null || umount -l "$R" 2>/dev/null || true; rmdir "$R" 2>/dev/null || true' EXIT

in_root() { chroot "$R" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 HOME=/root "$@"; }
step() {
  local name=$1; shift
  echo "=== STEP $name"
  local rc=0
  "$@" 2>&1 || rc=$?
  echo "=== RC $name $rc"
}
state() {
  in_root sh -c '
    echo "packages:"; dpkg-query -W -f="\${Package} \${Status} \${Version}\n" "gridwatt-*" 2>&1 | sort
    echo "user: $(getent passwd gridwatt | cut -d: -f1,6,7)"
    echo "groups: $(id -nG gridwatt 2>/dev/null)"
    for p in /var/lib/gridwatt /etc/gridwatt /etc/gridwatt/agent.toml /etc/gridwatt/collector.toml /opt/gridwatt \
             /opt/gridwatt/bin/python /usr/bin/gridwatt-agent /usr/bin/gridwatt-collector /usr/bin/gridwatt \
             /lib/systemd/system/gridwatt-agent.service /lib/systemd/system/gridwatt-collector.service \
             /usr/share/gridwatt/data/grid/DE_2022_hourly.csv; do
      if [ -e "$p" ] || [ -L "$p" ]; then echo "exists $p $(stat -c "%U:%G %a" "$p")"; else echo "absent $p"; fi
    done
    echo "enabled: $(ls /etc/systemd/system/*.wants 2>/dev/null | grep gridwatt || true)"
    echo "leftovers: $(find /etc /opt /usr /var /lib -xdev -name "*gridwatt*" 2>/dev/null | sort | tr "\n" " ")"
  '
}

DEBS=$(cd "$R/debs" && ls -- *.deb | sed 's|^|/debs/|' | tr '\n' ' ')
# shellcheck disable=SC2086
step install in_root dpkg -i $DEBS
step installed state
step conffiles in_root dpkg-query -W -f='${Package}:${Conffiles}\n' gridwatt-agent gridwatt-collector
step agent-help in_root gridwatt-agent --help
step agent-version in_root gridwatt-agent --version
step collector-check-config in_root gridwatt-collector check-config --config /etc/gridwatt/collector.toml
# The shipped example as it is: NVML is missing here, so the check names it and fails.
step check-example in_root chroot --userspec=gridwatt:gridwatt / gridwatt-agent check --config /etc/gridwatt/agent.toml
# The operator configures the node (simulated GPUs, the test's collector): the check passes.
cat > "$R/etc/gridwatt/agent.toml" <<EOF
node = "n1"
[source]
kind = "sim"
[source.sim]
gpus = 2
[collector]
address = "127.0.0.1:$PORT"
EOF
step check-configured in_root chroot --userspec=gridwatt:gridwatt / gridwatt-agent check --config /etc/gridwatt/agent.toml
# What running services leave behind: a spool and alert state, owned by the service user.
in_root chroot --userspec=gridwatt:gridwatt / sh -c 'touch /var/lib/gridwatt/spool.db /var/lib/gridwatt/alerts-state.json'
step remove in_root dpkg -r gridwatt-agent gridwatt-collector gridwatt-common
step removed state
step purge in_root dpkg -P gridwatt-agent gridwatt-collector gridwatt-common
step purged state
