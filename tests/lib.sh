# tests/lib.sh - sourced by the end-to-end scripts: TAP-style checks, loud
# failures for missing prerequisites, waiting for readiness, and cleanup.
# The stack's addresses come from $STACK_ENV (written by scripts/stack).
set -u
AZ_TOP=${AZ_TOP:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
AZ_BUILD=${AZ_BUILD:-$AZ_TOP/build}
export PATH=$AZ_BUILD:$PATH
_t_n=0
_t_failed=0

ok() { _t_n=$((_t_n + 1)); echo "ok $_t_n - $*"; }
not_ok() { _t_n=$((_t_n + 1)); _t_failed=$((_t_failed + 1)); echo "not ok $_t_n - $*"; }
# check DESCRIPTION CMD...: ok when CMD succeeds.
check() {
	local what=$1
	shift
	if "$@"; then ok "$what"; else not_ok "$what"; fi
}
# check_eq DESCRIPTION GOT WANT
check_eq() {
	if [ "$2" = "$3" ]; then ok "$1"; else not_ok "$1 (got '$2', want '$3')"; fi
}
# A prerequisite that is missing fails the test loudly; nothing skips.
bail() { not_ok "$*"; exit 1; }
need() {
	local c
	for c in "$@"; do command -v "$c" >/dev/null 2>&1 || bail "missing prerequisite: $c"; done
}
need_stack() {
	[ -n "${STACK_ENV:-}" ] && [ -f "$STACK_ENV" ] || bail "no local stack (STACK_ENV unset): run through tests/run"
	set -a
	. "$STACK_ENV"
	set +a
}
# wait_for SECONDS CMD...: polls CMD every 0.1 s.
wait_for() {
	local limit=$1 i=0
	shift
	while ! "$@" >/dev/null 2>&1; do
		i=$((i + 1))
		[ $i -ge $((limit * 10)) ] && return 1
		sleep 0.1
	done
}
# done_testing: exit status of the script.
done_testing() {
	[ "$_t_n" -gt 0 ] || { echo "not ok 1 - the script ran no check"; exit 1; }
	[ "$_t_failed" -eq 0 ]
}
