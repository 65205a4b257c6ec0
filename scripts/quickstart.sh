#!/usr/bin/env bash
# First run: make a tiny base wafer from the host's static busybox, stack a child wafer on it,
# run a command in the stack with systemd-nspawn, and show where its change landed.
# Needs root, busybox-static and systemd-container. Honors WAFERS and STACKS.
set -euo pipefail
cd "$(dirname "$0")/.."
wafers=${WAFERS:-/var/lib/wafers}
stacks=${STACKS:-/var/lib/machines}
if [ ! -d "$wafers/quickstart-base" ]; then
  # the busybox seeder: a tiny root file system from the host's static busybox, no network needed
  ./bin/run.js create quickstart-base --seed busybox
fi
./bin/run.js stack quickstart quickstart-base
systemd-nspawn --register=no --keep-unit --quiet -D "$stacks/quickstart" /bin/sh -c \
  'echo "jesse:x:1000:1000::/home/jesse:/bin/sh" >> /etc/passwd && echo "inside the container: $(grep -c : /etc/passwd) users"'
./bin/run.js unstack quickstart
echo "the change landed in the top wafer only:"
ls -l "$wafers/quickstart/data/etc"
