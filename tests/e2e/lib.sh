# Shared by the parts of the end-to-end checks (sourced by tests/e2e/inside.sh).
PASS=0 FAIL=0
ok() { PASS=$((PASS + 1)); echo "ok $*"; }
bad() { FAIL=$((FAIL + 1)); echo "FAIL $*"; }
check() { # check DESCRIPTION COMMAND...: passes when the command succeeds
	what=$1; shift
	if "$@"; then ok "$what"; else bad "$what"; fi
}
finish() {
	journalctl --no-pager -o short-monotonic >/out/journal.txt 2>&1
	if [ "$FAIL" -gt 0 ]; then
		echo "--- journal of the units (whole journal in the run's out/journal.txt)"
		journalctl -u rpcbind-proxy.socket -u rpcbind-proxy.service -u rpcbind.socket -u rpcbind.service --no-pager -o short-monotonic | tail -80
	fi
	echo "e2e: $PASS passed, $FAIL failed"
	sync
	systemctl poweroff --no-block
	exit 0
}
# wait_for SECONDS COMMAND...: polls (every 0.1 s) until the command succeeds.
wait_for() {
	n=$(($1 * 10)); shift
	while [ "$n" -gt 0 ]; do
		"$@" >/dev/null 2>&1 && return 0
		sleep 0.1; n=$((n - 1))
	done
	return 1
}
table() { nft list table inet rpcbind_proxy >/dev/null 2>&1; }
no_table() { ! table; }
active() { [ "$(systemctl is-active "$1")" = active ]; }
main_pid() { systemctl show -p MainPID --value rpcbind-proxy.service; }
# other_host NS IF NET: another host, network namespace NS joined to this
# one by a veth pair: IF here with NET.1/24, eth0 there with NET.2/24
# (NET: the first three octets, from 169.254.0.0/16).
other_host() {
	ip netns add "$1"
	ip link add "$2" type veth peer name eth0 netns "$1"
	ip addr add "$3.1/24" dev "$2"
	ip link set "$2" up
	ip netns exec "$1" sh -c "ip addr add $3.2/24 dev eth0 && ip link set eth0 up && ip link set lo up"
}
T=/usr/local/bin/tirpc_client
B=/usr/bin/rpcbind-proxy

# A prober: 20 TCP and 20 UDP lookups a second to 127.0.0.1:111, until
# stop_probe; then its counts must show no failure.
start_probe() {
	rm -f /tmp/probe.in; mkfifo /tmp/probe.in
	$T probe 127.0.0.1 100000 2 20 600 </tmp/probe.in >/tmp/probe.out 2>/tmp/probe.err &
	PROBE=$!
	exec 7>/tmp/probe.in
}
stop_probe() { # stop_probe [LOST]: at most LOST lookups may fail (default 0)
	allowed=${1:-0}
	exec 7>&-
	wait "$PROBE"
	counts=$(cat /tmp/probe.out)
	set -- $counts
	if [ "${2:-0}" -ge 20 ] && [ "${6:-0}" -ge 20 ] && [ $((${4:-1} + ${8:-1})) -le "$allowed" ]; then
		ok "prober lost at most $allowed lookup across $PHASE ($counts)"
	else
		bad "prober lost lookups across $PHASE ($counts; $(head -c 300 /tmp/probe.err))"
	fi
}
# What rpcinfo prints, every way a client asks: the unix path (no host), TCP
# and UDP on 127.0.0.1 and ::1, the `local` transport, GETADDRLIST (-l).
listing() {
	rpcinfo; rpcinfo -s; rpcinfo -p localhost; rpcinfo -p 127.0.0.1; rpcinfo -T tcp6 ::1 100000
	for t in "tcp 127.0.0.1" "udp 127.0.0.1" "tcp6 ::1" "udp6 ::1" "local localhost"; do
		rpcinfo -T $t 100000 4
	done
	rpcinfo -l localhost 100000 4
}

snap() { # snap NAME: the host's state, one file per part
	ls -A /run /run/rpcbind >/tmp/$1.run 2>&1
	find /etc/systemd/system -regex '.*\.d\(/.*\)?' | sort >/tmp/$1.dropins
	nft list ruleset >/tmp/$1.nft 2>&1
	{ systemctl is-active rpcbind-proxy.socket rpcbind-proxy.service rpcbind.socket rpcbind.service
	  systemctl show -p Listen rpcbind.socket rpcbind-proxy.socket; } >/tmp/$1.units 2>&1
	listing >/tmp/$1.rpcinfo 2>&1
}
rpcbind_restart() {
	# (Not refused by rpcbind's start-rate limit after the checks' many
	# restarts: each stands for one on a host, hours apart.)
	systemctl reset-failed rpcbind.socket rpcbind.service
	systemctl daemon-reload
	systemctl restart rpcbind.socket rpcbind.service
	wait_for 10 active rpcbind.service
}
rpcbind_ports() { ss -Hlntup | awk '/"rpcbind"/ {print $1, $5}' | sort -u; }
# holders PATH: the processes holding the listening socket whose file PATH
# names now (ss shows a socket's bound name, not a second name made by a
# hard link; its "ino:" is the file's inode).
holders() {
	ino=$(stat -c %i "$1" 2>/dev/null) || return 1
	ss -Hxlpe | grep " ino:$ino dev:" | grep -o 'users:(.*)' | grep -o '"[^"]*"' | sort -u | tr -d '"' | tr '\n' ' '
}
# abstract_holders NAME: the processes listening on the abstract unix name
# NAME (@...).
abstract_holders() {
	ss -Hxlp | awk -v n="$1" '$5 == n' | grep -o 'users:(.*)' | grep -o '"[^"]*"' | sort -u | tr -d '"' | tr '\n' ' '
}
# as_before PRE POST: each part of the host's state snapped as POST (snap)
# is as snapped as PRE; rpcinfo's lines compared sorted (rpcbind lists
# entries re-registered by `disable` last).
as_before() {
	sort /tmp/$1.rpcinfo >/tmp/$1.sorted; sort /tmp/$2.rpcinfo >/tmp/$2.sorted
	for part in run dropins nft units sorted; do
		check "after disable, the host's $part is as before enable" cmp -s /tmp/$1.$part /tmp/$2.$part
		diff /tmp/$1.$part /tmp/$2.$part | head -10
	done
}
