#!/bin/bash
# Runs supportd's systemd units under a real systemd: boots a fresh Debian 12 with
# systemd-nspawn (systemd is PID 1 inside), installs supportd the way README "Run under
# systemd" says, and lets check-in-container.py (a oneshot unit in the container) check that
# `systemctl start` gets READY=1 under the full hardening, `systemctl status` shows the STATUS
# line, a mail over SMTP becomes a ticket and an acknowledgement, `systemctl reload` applies a
# new config and refuses a broken one without dropping an SMTP session, the watchdog pings
# arrive and a stuck process is restarted, `systemctl stop` drains cleanly, supportd.socket
# on port 25 starts supportd and holds mail across a stop, and the online exposure score.
# Prints one PASS/FAIL line per check; exits non-zero if any check fails. The install and boot
# output goes to /var/tmp/supportd-check.log (its end is shown when something goes wrong).
#
#   systemd/check-in-container.sh              # the committed tree (git HEAD)
#   systemd/check-in-container.sh --worktree   # the working tree instead (files git would add)
#
# Needs root, systemd-nspawn (installed from apt when missing) and PyPI (pip installs the
# dependencies into the container's /opt/supportd). Takes about 1.5 minutes: 20 s to build the
# container, a minute for the checks, most of it waiting for two watchdog pings. The container has its own
# network namespace with only loopback (--private-network), so no mail leaves it, and its
# config uses the maildir transport. Not part of `make test`: it needs a booted container.
set -euo pipefail
source=head
[[ ${1:-} == --worktree ]] && source=worktree
[[ $(id -u) == 0 ]] || { echo "check-in-container: needs root" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
top=$(git -C "$here" rev-parse --show-toplevel)
base=/var/cache/fresh-machine/bookworm-python.tar  # shared with ../shared/tools/fresh-machine
log=/var/tmp/supportd-check.log
root=$(mktemp -d /var/tmp/supportd-nspawn.XXXXXX)
mounts=()
exec 3>&1 >"$log" 2>&1

say() { echo "check-in-container: $*" >&3; }

cleanup() {
  for ((i=${#mounts[@]}-1; i>=0; i--)); do umount -l "${mounts[$i]}" 2>/dev/null || true; done
  rm -rf --one-file-system "$root"
}
trap cleanup EXIT
trap 'say "failed at line $LINENO; the end of $log:"; tail -n 30 "$log" >&3' ERR

in_root() {
  chroot "$root" /usr/bin/env -i HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
    DEBIAN_FRONTEND=noninteractive PIP_CERT="${PIP_CERT:-}" \
    PIP_DEFAULT_TIMEOUT="${PIP_DEFAULT_TIMEOUT:-60}" /bin/bash -ec "$1"
}

command -v systemd-nspawn >/dev/null || {
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q systemd-container; }

say "building a Debian 12 root in $root"
if [[ -f $base ]]; then
  tar -C "$root" -xf "$base"
else
  command -v debootstrap >/dev/null || {
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap; }
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$root" http://deb.debian.org/debian
fi
# The tarball's top directory is mktemp's 0700: services that are not root could not chdir to /.
chmod 0755 "$root"
# Reach the package registries the way this machine does: same apt sources, pip settings, CA.
cp -r /etc/apt/sources.list.d/. "$root/etc/apt/sources.list.d/" 2>/dev/null || true
[[ -f /etc/apt/sources.list ]] && cp /etc/apt/sources.list "$root/etc/apt/"
[[ -f /etc/pip.conf ]] && cp /etc/pip.conf "$root/etc/"
[[ -d /etc/xdg/pip ]] && mkdir -p "$root/etc/xdg" && cp -r /etc/xdg/pip "$root/etc/xdg/"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
cp /etc/resolv.conf "$root/etc/resolv.conf"
for m in proc dev dev/pts; do
  case $m in
    proc) mount -t proc proc "$root/proc" ;;
    *) mount --bind "/$m" "$root/$m" ;;
  esac
  mounts+=("$root/$m")
done

mkdir -p "$root/root/src"
if [[ $source == head ]]; then
  git -C "$top" archive HEAD | tar -C "$root/root/src" -xf -
else
  git -C "$top" ls-files -z --cached --others --exclude-standard \
    | tar -C "$top" --null -T - --ignore-failed-read -cf - \
    | tar -C "$root/root/src" -xf -
fi
in_root 'apt-get update -qq
  apt-get install -y -q --no-install-recommends systemd systemd-sysv dbus >/dev/null
  python3 -m venv /opt/supportd
  /opt/supportd/bin/pip install -q /root/src'

# README "Run under systemd", Install; then the settings this check needs.
in_root 'cd /root/src
  install -m 0644 systemd/supportd.sysusers /usr/lib/sysusers.d/supportd.conf
  systemd-sysusers
  install -d -m 0755 /etc/supportd
  install -m 0640 -g supportd systemd/supportd.toml /etc/supportd/supportd.toml
  cp -r templates /etc/supportd/templates
  install -m 0644 systemd/supportd.service systemd/supportd.socket /etc/systemd/system/
  # "mx" would look up and send to example.com: keep every mail in the outbox Maildir.
  sed -i "s/^transport = \"mx\".*/transport = \"maildir\"/" /etc/supportd/supportd.toml
  grep -q "^transport = \"maildir\"" /etc/supportd/supportd.toml
  install -m 0644 systemd/check-in-container.py /usr/local/lib/check-in-container.py
  cat >/etc/systemd/system/supportd-check.service <<EOF
[Unit]
Description=check supportd under systemd, then power off
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/usr/bin/python3 /usr/local/lib/check-in-container.py
ExecStopPost=/usr/bin/systemctl poweroff --no-block
StandardOutput=append:/var/log/supportd-check/output.txt
StandardError=inherit
TimeoutStartSec=10min
EOF
  mkdir -p /etc/systemd/system/multi-user.target.wants /var/log/supportd-check
  ln -s ../supportd-check.service /etc/systemd/system/multi-user.target.wants/'
for ((i=${#mounts[@]}-1; i>=0; i--)); do umount "${mounts[$i]}"; done
mounts=()

say "booting it with systemd-nspawn (loopback-only network); the checks take about a minute"
# --register=no --keep-unit: no machined or system bus on the host is needed.
set +e
timeout -k 30s 12m systemd-nspawn --quiet --boot --directory="$root" --register=no \
  --keep-unit --private-network --console=passive -- --show-status=no
rc=$?
set -e
results=$root/var/log/supportd-check/results.txt
if [[ ! -f $results ]]; then
  say "no results (systemd-nspawn exit status $rc); the check said:"
  cat "$root/var/log/supportd-check/output.txt" >&3 || true
  exit 1
fi
cat "$results" >&3
failed=$(grep -c '^FAIL' "$results" || true)
say "$(grep -c '^PASS' "$results") passed, $failed failed"
exit $((failed > 0))
