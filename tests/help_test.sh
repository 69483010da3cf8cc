#!/usr/bin/env bash
# Every tool teaches on --help and rejects a usage error: `TOOL --help` exits 0 and prints (on
# stdout) a usage naming each of its subcommands or flags; `TOOL --no-such-flag` exits 2 and names
# the flag on stderr. Tools with subcommands are also checked one level down.
#
#   tests/help_test.sh BIN_DIR [TOOL...]     # default: every tool below
#
# Adding a tool: one `check_tool` line in the case below (what its --help must name), and its name
# in the add_test of tests/CMakeLists.txt.
set -uo pipefail
bin="$1"
shift
tools=("$@")
[ ${#tools[@]} -gt 0 ] || tools=(kvkeepd kvkeepctl kvkeep-bench kvkeep-eval kvkeep-demo)
tmp=$(mktemp -d /tmp/kvkeep-help-test.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
failures=0

fail() {
  echo "FAIL: $*"
  echo "--- stdout"; head -c 2000 "$tmp/out"
  echo "--- stderr"; head -c 2000 "$tmp/err"
  failures=$((failures + 1))
}

# check_help "CMD ARGS" WORD...: CMD ARGS --help exits 0 with every WORD in its stdout (any case).
check_help() {
  local cmd="$1"
  shift
  # shellcheck disable=SC2086  # $cmd is "binary [subcommand]"
  $cmd --help > "$tmp/out" 2> "$tmp/err"
  local rc=$?
  [ $rc -eq 0 ] || { fail "$cmd --help: exit $rc, want 0"; return; }
  [ -s "$tmp/out" ] || { fail "$cmd --help: nothing on stdout"; return; }
  for word in "$@"; do
    grep -qiF -- "$word" "$tmp/out" || fail "$cmd --help does not mention '$word'"
  done
}

# check_usage_error "CMD ARGS": CMD ARGS --no-such-flag exits 2 and names the flag on stderr.
check_usage_error() {
  local cmd="$1"
  # shellcheck disable=SC2086
  $cmd --no-such-flag > "$tmp/out" 2> "$tmp/err"
  local rc=$?
  [ $rc -eq 2 ] || { fail "$cmd --no-such-flag: exit $rc, want 2"; return; }
  grep -qF -- "--no-such-flag" "$tmp/err" || fail "$cmd --no-such-flag: stderr does not name it"
}

# check_tool TOOL WORD...: the tool's --help names every WORD; a bogus flag is a usage error.
check_tool() {
  local tool="$1"
  shift
  [ -x "$bin/$tool" ] || { fail "$bin/$tool is missing (build it first)"; return; }
  check_help "$bin/$tool" "$@"
  check_usage_error "$bin/$tool"
}

for tool in "${tools[@]}"; do
  case "$tool" in
    kvkeepctl)
      check_tool kvkeepctl status top "tenant list" "tenant create" "tenant set-quota" \
        "tenant delete" "policy show" "policy set" "policy validate" "seq list" "seq show" \
        "seq compress" "seq spill" "seq restore" "seq drop" "pool watermarks" --socket --target \
        --admin-token-file --admin-token --json "Exit status"
      check_help "$bin/kvkeepctl seq show" "Usage: kvkeepctl seq show" "Examples:"
      check_usage_error "$bin/kvkeepctl tenant list"
      ;;
    kvkeep-bench)
      check_tool kvkeep-bench score io spill mem backend all "Exit status"
      check_help "$bin/kvkeep-bench score" --shape --ctx --reps --keep --scorers --layers --json \
        default
      check_help "$bin/kvkeep-bench io" --shape --pages --mib --workers --reps --smoke default
      check_help "$bin/kvkeep-bench spill" --shape --tokens --reps --smoke default
      check_help "$bin/kvkeep-bench mem" --smoke --reps default
      check_help "$bin/kvkeep-bench backend" --backend --mib --reps --smoke default
      check_help "$bin/kvkeep-bench all" --smoke --json
      for sub in score io spill mem backend all; do check_usage_error "$bin/kvkeep-bench $sub"; done
      ;;
    kvkeep-eval)
      check_tool kvkeep-eval synth run scores pool --profile --data --policy --keep --budget \
        default "Exit status"
      check_help "$bin/kvkeep-eval synth" synth
      for sub in synth run scores pool; do check_usage_error "$bin/kvkeep-eval $sub"; done
      ;;
    kvkeep-demo)
      check_tool kvkeep-demo --socket --admin-token-file default
      ;;
    kvkeepd)
      # tests/logging_e2e_test.cc also checks that every flag of service/main.cc is listed.
      check_tool kvkeepd --data_dir --pool_mib --backend --log_level --log_format default \
        "Exit status"
      ;;
    *)
      fail "no checks for tool '$tool'"
      ;;
  esac
done

[ $failures -eq 0 ] || { echo "$failures failure(s)"; exit 1; }
echo "OK: ${tools[*]}"
