#!/usr/bin/env bash
# First run: make a tiny base wafer from the host's static busybox, stack a child wafer on it,
# run a command in the stack with systemd-nspawn, and show where its change landed.
# Needs root, busybox-static and systemd-container. Honors WAFERS and STACKS.
set -euo pipefail
cd "$(dirname "$0")/.."
wafers=${WAFERS:-/var/lib/wafers}
stacks=${STACKS:-/var/lib/machines}
base="$wafers/quickstart-base/data"
if [ ! -d "$base" ]; then
  echo "making base wafer quickstart-base from /bin/busybox"
  mkdir -p "$base"/{bin,etc,usr/lib,root,home,tmp,proc,sys,dev,run,var}
  cp /bin/busybox "$base/bin/busybox"
  ln -s busybox "$base/bin/sh"
  printf 'root:x:0:0:root:/root:/bin/sh\n' > "$base/etc/passwd"
  printf 'root:x:0:\n' > "$base/etc/group"
  printf 'ID=busybox\nNAME=busybox\n' > "$base/usr/lib/os-release"
  head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$base/etc/machine-id"; echo >> "$base/etc/machine-id"
fi
./bin/run.js stack quickstart quickstart-base
systemd-nspawn --register=no --keep-unit --quiet -D "$stacks/quickstart" /bin/sh -c \
  'echo "jesse:x:1000:1000::/home/jesse:/bin/sh" >> /etc/passwd && echo "inside the container: $(grep -c : /etc/passwd) users"'
./bin/run.js unstack quickstart
echo "the change landed in the top wafer only:"
ls -l "$wafers/quickstart/data/etc"
