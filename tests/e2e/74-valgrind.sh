#!/usr/bin/env bash
# 74-valgrind: every unit test program under valgrind's memcheck, against
# the local stack (test_fetch and test_tpm talk to it): no memory error and
# no definitely lost block, and the program's own checks still pass. The
# release build is the one checked (memcheck cannot run sanitizer builds),
# whichever build the suite runs. AZ_VALGRIND_ONLY=test_x,test_y narrows it.
. "$(dirname "$0")/../lib.sh"
need valgrind
need_stack
VG_BUILD=${AZ_VALGRIND_BUILD:-$AZ_TOP/build}
progs=("$VG_BUILD"/tests/test_*)
[ -x "${progs[0]}" ] || bail "missing prerequisite: the unit tests in $VG_BUILD/tests (make)"
logs=$(mktemp -d /tmp/az-t74.XXXXXX)
trap 'rm -rf "$logs"' EXIT

for t in "${progs[@]}"; do
	[ -x "$t" ] || continue
	name=$(basename "$t")
	case ",${AZ_VALGRIND_ONLY:-$name}," in *",$name,"*) ;; *) continue ;; esac
	start=$SECONDS
	# Timing checks (test_fetch's) allow for memcheck's slowdown.
	AZ_TIME_SCALE=10 valgrind --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite \
		--show-leak-kinds=definite --num-callers=30 --log-file="$logs/$name.vg" \
		"$t" >"$logs/$name.out" 2>&1
	rc=$?
	errs=$(awk '/ERROR SUMMARY:/ {n = $4} END {print n + 0}' "$logs/$name.vg")
	lost=$(awk '/definitely lost:/ {gsub(",", "", $4); n += $4} END {print n + 0}' "$logs/$name.vg")
	oks=$(grep -cE '^ok [0-9]+' "$logs/$name.out")
	noks=$(grep -cE '^not ok [0-9]+' "$logs/$name.out")
	what="memcheck $name: $errs errors, $lost bytes definitely lost, $oks checks passed, $noks failed ($((SECONDS - start)) s)"
	if [ "$rc" -eq 0 ] && [ "$errs" -eq 0 ] && [ "$lost" -eq 0 ] && [ "$noks" -eq 0 ] && [ "$oks" -gt 0 ]; then
		ok "$what"
	else
		not_ok "$what, exit status $rc"
		grep -E '^==[0-9]+== (Invalid|Conditional|Use of|Syscall|Mismatched|[0-9,]+ bytes in)' \
			"$logs/$name.vg" | head -10 | sed 's/^/#   /'
		grep -E '^not ok' "$logs/$name.out" | head -5 | sed 's/^/#   /'
	fi
done
done_testing
