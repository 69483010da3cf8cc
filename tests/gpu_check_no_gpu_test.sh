#!/usr/bin/env bash
# deploy/gpu-check on a machine whose driver does not answer (a stand-in nvidia-smi that fails, as
# it does without a GPU): it must say so, write that into the report, build nothing and exit 1.
set -uo pipefail
repo="$1"
tmp=$(mktemp -d /tmp/kvkeep-gpu-check-test.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin"
printf '#!/bin/sh\necho "NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver."\nexit 9\n' \
  > "$tmp/bin/nvidia-smi"
chmod +x "$tmp/bin/nvidia-smi"
PATH="$tmp/bin:$PATH" "$repo/deploy/gpu-check" --report "$tmp/report.md" \
  --build-dir "$tmp/build" > "$tmp/out.txt" 2>&1
rc=$?
fail() { echo "FAIL: $*"; cat "$tmp/out.txt"; cat "$tmp/report.md" 2>/dev/null; exit 1; }
[ $rc -eq 1 ] || fail "exit status $rc, want 1"
grep -q "no NVIDIA GPU: nvidia-smi found none" "$tmp/out.txt" || fail "no clear message"
grep -q "## Result: NOT RUN" "$tmp/report.md" || fail "report does not say NOT RUN"
[ ! -e "$tmp/build" ] || fail "it configured a build without a GPU"
"$repo/deploy/gpu-check" --no-such-flag > /dev/null 2>&1
[ $? -eq 2 ] || fail "a bad flag must exit 2"
echo "OK"
