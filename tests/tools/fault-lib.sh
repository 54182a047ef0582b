# tests/tools/fault-lib.sh - sourced after tests/lib.sh and fs-lib.sh by the
# reliability tests: fault-injecting proxies (tests/tools/faultproxy.py) in
# front of the stack's API and CDN, stopped by pid on exit.
#
#   fp_start NAME UPSTREAM     starts a proxy; sets ${NAME}_URL and ${NAME}_PID
#   fp_fault NAME JSON         arms a fault (see faultproxy.py)
#   fp_clear NAME              disarms them all
#   fp_stat NAME KIND          how many requests a kind of fault took
#   fp_requests NAME           how many requests the proxy saw
FP_PIDS=()

fp_cleanup() {
	local p
	for p in "${FP_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
	for p in "${FP_PIDS[@]}"; do wait "$p" 2>/dev/null; done
	FP_PIDS=()
}

fp_start() {
	local name=$1 up=$2 pf=$W/fp-$1.port
	rm -f "$pf"
	"$PY" "$AZ_TOP/tests/tools/faultproxy.py" --upstream "$up" --ca "$STACK_CA" \
		--cert "$STACK_DIR/ca/server.pem" --key "$STACK_DIR/ca/server.key" \
		--port-file "$pf" --log "$W/fp-$name.log" >>"$W/fp-$name.err" 2>&1 &
	local pid=$!
	FP_PIDS+=("$pid")
	wait_for 20 test -s "$pf" || { cat "$W/fp-$name.err"; bail "faultproxy $name did not start"; }
	printf -v "${name}_URL" 'https://127.0.0.1:%s' "$(cat "$pf")"
	printf -v "${name}_PID" '%s' "$pid"
}

fp_ctl() {
	local name=$1 what=$2 url
	shift 2
	url=${name}_URL
	curl -s --max-time 10 --cacert "$STACK_CA" "$@" "${!url}/_proxy/$what"
}
fp_fault() { fp_ctl "$1" fault -X POST -H 'Content-Type: application/json' -d "$2" >/dev/null; }
fp_clear() { fp_ctl "$1" clear -X POST >/dev/null; }
fp_stat() {
	fp_ctl "$1" stats | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["faults"].get(sys.argv[1], 0))' "$2"
}
fp_requests() {
	fp_ctl "$1" stats | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["requests"])'
}
