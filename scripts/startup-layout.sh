#!/usr/bin/env bash
# Regenerates link/startup.ld, the linker script that places the code a
# VM's start and stop run side by side at the front of the text (build.rs).
# The kernel maps a binary's text 64 KiB around each page fault, so
# start-up code spread over the whole text makes nearly all of it resident.
# Run it after a large change to the start or stop path. Needs gdb, curl
# and binutils; uses the tiny test guest.
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."
for tool in gdb curl nm python3; do
    command -v "$tool" >/dev/null || { echo "startup-layout.sh: needs $tool" >&2; exit 1; }
done

cargo build --release --bins -p tsubame -p tsubame-test-guests
bin=target/x86_64-unknown-linux-gnu/release/tsubame
guest=$(ls -t target/x86_64-unknown-linux-gnu/release/build/tsubame-test-guests-*/out/hello64 | head -1)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

trace() {
    local name=$1; shift
    FUNCTIONS_OUT="$work/$name.ran" gdb -q -batch -x scripts/functions-run.py --args \
        "$bin" "$@" >"$work/$name.log" 2>&1 </dev/null
    [ -s "$work/$name.ran" ] || { echo "startup-layout.sh: scenario $name failed:" >&2; cat "$work/$name.log" >&2; exit 1; }
}

# 1. The command line, as `tsubame bench memory` and `bench startup` run it.
trace cli run --kernel "$guest" --stats --log-level warn
# 2. The command line with the API served, at the default log level.
trace cli-api run --kernel "$guest" --api-sock "$work/cli.sock"
# 3. A Firecracker configuration file.
printf '{"boot-source":{"kernel_image_path":"%s"},"machine-config":{"vcpu_count":1,"mem_size_mib":128}}\n' \
    "$guest" >"$work/vm.json"
trace config --config-file "$work/vm.json" --no-api
# 4. Firecracker's API: configure, then InstanceStart (the guest powers off).
trace api --api-sock "$work/api.sock" &
pid=$!
for _ in $(seq 600); do [ -S "$work/api.sock" ] && break; sleep 0.1; done
api() { curl -sSf --unix-socket "$work/api.sock" -X "$1" "http://localhost$2" ${3:+-H 'Content-Type: application/json' -d "$3"} >/dev/null; }
api GET /
api PUT /boot-source "{\"kernel_image_path\":\"$guest\"}"
api PUT /machine-config '{"vcpu_count":1,"mem_size_mib":128}'
api PUT /actions '{"action_type":"InstanceStart"}'
wait "$pid"

# The earlier script's patterns stay (startup-ld.py --keep), unless
# STARTUP_LAYOUT_FRESH=1 asks for this trace's alone.
keep=(--keep link/startup.ld)
[ "${STARTUP_LAYOUT_FRESH:-0}" = 1 ] && keep=()
python3 scripts/startup-ld.py "${keep[@]}" "$work"/*.ran >"$work/startup.ld"
mv "$work/startup.ld" link/startup.ld
echo "link/startup.ld: $(grep -c '^    \*' link/startup.ld) patterns from $(cat "$work"/*.ran | sort -u | wc -l) functions"
