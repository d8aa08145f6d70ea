#!/bin/sh
# Runs inside the booted container of scripts/e2e-systemd, as a oneshot
# service once multi-user.target is reached; writes its report to
# /out/report.txt and powers the container off. Every check prints one
# "ok ..." or "FAIL ..." line; the report ends on "e2e: N passed, M failed".
#
# The clients are unmodified: Debian's rpcinfo and the libtirpc test client
# (/usr/local/bin/tirpc_client, tests/clients/tirpc_client.c), as the
# container's own users would run them.
set -u
exec >/out/report.txt 2>&1
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
listing() { rpcinfo; rpcinfo -s; rpcinfo -p localhost; rpcinfo -p 127.0.0.1; rpcinfo -T tcp6 ::1 100000; }

check "rpcbind and rpcbind-proxy are running" wait_for 30 active rpcbind-proxy.service
wait_for 10 active rpcbind.service
check "a service registers through libtirpc" sh -c "[ \"\$($T set 400100 1 tcp 127.0.0.1.8.1)\" = true ]"
runuser -u nobody -- $T set 400101 1 udp 0.0.0.0.8.2 >/dev/null
listing >/tmp/before.txt 2>&1
ls -A /run /run/rpcbind >/tmp/run-before.txt 2>&1
$B intercept status >/tmp/st.txt; rc=$?
check "intercept status says off before enable (exit 3)" [ "$rc" = 3 ]

# --- enable ----------------------------------------------------------------
PHASE="intercept enable"; start_probe
sleep 1
$B intercept enable >/tmp/enable.txt 2>&1; rc=$?
cat /tmp/enable.txt
check "intercept enable exits 0" [ "$rc" = 0 ]
sleep 1
stop_probe
$B intercept status; rc=$?
check "intercept status says on (exit 0)" [ "$rc" = 0 ]
check "the owner table is in place" table
check "the unit gained CAP_NET_ADMIN" sh -c "systemctl show -p CapabilityBoundingSet rpcbind-proxy.service | grep -q cap_net_admin"
check "the watchdog is 5 s in transparent mode" [ "$(systemctl show -p WatchdogUSec --value rpcbind-proxy.service)" = 5s ]
listing >/tmp/after.txt 2>&1
check "rpcinfo prints what it printed before, through the proxy" cmp -s /tmp/before.txt /tmp/after.txt
diff /tmp/before.txt /tmp/after.txt | head -20
tw_before=$(ss -Htan state time-wait | wc -l)
runuser -u nobody -- $T getaddr 127.0.0.1 100000 4 tcp 500 >/dev/null
$T getaddr 127.0.0.1 100000 4 tcp 500 >/dev/null
tw_after=$(ss -Htan state time-wait | wc -l)
check "1,000 one-shot TCP lookups left no TIME_WAIT ($tw_before -> $tw_after)" [ "$tw_after" -le "$tw_before" ]
# Attribution under the real unit's sandbox: a transient service of its own.
systemd-run --quiet --wait --unit=hammer --uid=nobody $T getaddr 127.0.0.1 100000 4 tcp 100 >/dev/null 2>&1
systemd-run --quiet --wait --unit=hammer-udp $T pmap-getport 127.0.0.1 100000 2 udp 20 >/dev/null 2>&1
$B status >/tmp/status.txt
check "status names hammer.service, its command and user (tcp)" grep -Eq "hammer.service +tirpc_client +65534 +tcp .* 100 " /tmp/status.txt
check "status names hammer-udp.service (udp)" grep -Eq "hammer-udp.service +tirpc_client +0 +udp .* 20 " /tmp/status.txt
sed -n '/top clients/,$p' /tmp/status.txt
out=$($B intercept enable 2>&1); rc=$?
check "enable again is a no-op ($out)" [ "$rc" = 0 ]
$B status | sed -n '1p;/intercept/p'

# --- rpcbind restarts under the drop-in: its socket moves ---------------------
systemctl restart rpcbind.socket rpcbind.service
wait_for 10 active rpcbind.service
check "rpcbind now listens on /run/rpcbind/upstream.sock" sh -c "systemctl show -p Listen rpcbind.socket | grep -q /run/rpcbind/upstream.sock"
listing >/tmp/moved.txt 2>&1
check "after rpcbind moved, rpcinfo still prints what it printed before" cmp -s /tmp/before.txt /tmp/moved.txt
diff /tmp/before.txt /tmp/moved.txt | head -20

# --- the daemon killed, restarted, stopped ------------------------------------
# A lookup on a connection to the daemon at the very moment it is killed
# dies with it: at most that one across SIGKILL; none across SIGTERM.
PHASE="SIGKILL of the daemon"; start_probe
sleep 1
pid=$(main_pid)
systemctl kill -s KILL rpcbind-proxy.service
check "SIGKILL: the table is gone with the daemon" wait_for 5 no_table
check "systemd restarts it in transparent mode" wait_for 15 sh -c "nft list table inet rpcbind_proxy >/dev/null && [ \"\$(systemctl show -p MainPID --value rpcbind-proxy.service)\" != $pid ]"
sleep 1
stop_probe 1
PHASE="SIGTERM of the daemon (restart)"; start_probe
sleep 1
systemctl restart rpcbind-proxy.service
check "SIGTERM (restart): the table is back with the new daemon" wait_for 15 table
sleep 1
stop_probe

# --- a hung daemon: the watchdog ----------------------------------------------
pid=$(main_pid)
kill -STOP "$pid"
started=$(date +%s)
check "a SIGSTOPped daemon is killed by the watchdog and replaced" wait_for 30 sh -c "[ \"\$(systemctl show -p MainPID --value rpcbind-proxy.service)\" != $pid ] && nft list table inet rpcbind_proxy >/dev/null"
echo "   (replaced after $(($(date +%s) - started)) s)"
check "the journal names the watchdog" sh -c "journalctl -u rpcbind-proxy --no-pager | grep -qi watchdog"

# --- disable -------------------------------------------------------------------
PHASE="intercept disable"; start_probe
sleep 1
$B intercept disable >/tmp/disable.txt 2>&1; rc=$?
cat /tmp/disable.txt
check "intercept disable exits 0" [ "$rc" = 0 ]
sleep 1
stop_probe
$B intercept status; rc=$?
check "intercept status says off after disable (exit 3)" [ "$rc" = 3 ]
check "the table is gone" no_table
check "the proxy runs again on its defaults" wait_for 10 active rpcbind-proxy.service
check "the drop-ins are gone" sh -c "! ls /etc/systemd/system/*.d/50-rpcbind-proxy-intercept.conf 2>/dev/null"
listing >/tmp/off.txt 2>&1

# --- disable after rpcbind restarted while on: its own local entries ------------
# rpcbind, restarted above on /run/rpcbind/upstream.sock, named that path in
# its own "local" entries; disable must leave every name rpcbind advertises
# working, and no name of the proxy's in /run.
# Re-registered, rpcbind's two local entries are listed last (rpcbind appends
# what is registered) until its next restart; the lines are the same.
sort /tmp/before.txt >/tmp/before.sorted; sort /tmp/off.txt >/tmp/off.sorted
check "after disable, rpcinfo prints the lines it printed before, local lines included" cmp -s /tmp/before.sorted /tmp/off.sorted
diff /tmp/before.sorted /tmp/off.sorted | head -20
for v in 4 3; do
	check "after disable, rpcinfo -T local localhost 100000 $v works ($(rpcinfo -T local localhost 100000 $v 2>&1 | head -1))" rpcinfo -T local localhost 100000 $v
done
check "after disable, /run/rpcbind/upstream.sock is gone" [ ! -e /run/rpcbind/upstream.sock ]
ls -A /run /run/rpcbind >/tmp/run-off.txt 2>&1
check "after disable, the names in /run and /run/rpcbind are those before enable" cmp -s /tmp/run-before.txt /tmp/run-off.txt
diff /tmp/run-before.txt /tmp/run-off.txt | head -10
check "after disable, rpcbind names no path of the proxy's" sh -c "! rpcinfo | grep -q upstream.sock"
out=$($B intercept disable 2>&1); rc=$?
check "disable again is a no-op ($out)" [ "$rc" = 0 ]
systemctl restart rpcbind.socket rpcbind.service
wait_for 10 active rpcbind.service
listing >/tmp/restored.txt 2>&1
check "after rpcbind's next restart, everything is exactly as before" cmp -s /tmp/before.txt /tmp/restored.txt
diff /tmp/before.txt /tmp/restored.txt | head -20
# --- an administrator's loopback-only rpcbind (CIS hardening) ----------------
# enable keeps rpcbind's listeners as the administrator set them: only the
# unix path moves. Compared: rpcbind's listening TCP/UDP address:port sets.
ADMIN=/etc/systemd/system/rpcbind.socket.d/10-loopback.conf
mkdir -p /etc/systemd/system/rpcbind.socket.d
# Both families: given no IPv6 socket, rpcbind binds [::]:111 itself.
printf '[Socket]\nListenStream=\nListenStream=/run/rpcbind.sock\nListenStream=127.0.0.1:111\nListenDatagram=127.0.0.1:111\nListenStream=[::1]:111\nListenDatagram=[::1]:111\n' >$ADMIN
rpcbind_restart() {
	systemctl daemon-reload
	systemctl restart rpcbind.socket rpcbind.service
	wait_for 10 active rpcbind.service
}
rpcbind_ports() { ss -Hlntup | awk '/"rpcbind"/ {print $1, $5}' | sort -u; }
rpcbind_restart
rpcbind_ports >/tmp/admin-before.txt
echo "   rpcbind's listeners with the administrator's drop-in: $(tr '\n' ' ' </tmp/admin-before.txt)"
check "the administrator's drop-in limits rpcbind to loopback" sh -c "grep -q 127.0.0.1:111 /tmp/admin-before.txt && ! grep -Eq '0\.0\.0\.0|\[::\]|\*:111' /tmp/admin-before.txt"
$B intercept enable >/tmp/enable2.txt 2>&1; rc=$?
check "intercept enable over the administrator's drop-in exits 0 ($(tail -1 /tmp/enable2.txt))" [ "$rc" = 0 ]
systemctl show -p Listen -p DropInPaths rpcbind.socket
rpcbind_restart
rpcbind_ports >/tmp/admin-on.txt
echo "   rpcbind's listeners with transparent mode on: $(tr '\n' ' ' </tmp/admin-on.txt)"
check "enable widens no listener of rpcbind (same address:port set)" cmp -s /tmp/admin-before.txt /tmp/admin-on.txt
check "rpcbind moved to /run/rpcbind/upstream.sock under the administrator's drop-in" sh -c "systemctl show -p Listen rpcbind.socket | grep -q /run/rpcbind/upstream.sock"
check "rpcinfo answers over the unix path and 127.0.0.1" sh -c "rpcinfo >/dev/null && rpcinfo -p 127.0.0.1 >/dev/null"
$B intercept status >/tmp/st2.txt; rc=$?
check "intercept status says on (exit 0)" [ "$rc" = 0 ]
# The units change after enable: status says the drop-in no longer matches.
printf '[Socket]\nListenStream=127.0.0.2:111\n' >/etc/systemd/system/rpcbind.socket.d/20-extra.conf
systemctl daemon-reload
$B intercept status >/tmp/st3.txt; rc=$?
cat /tmp/st3.txt
check "intercept status says partly on when rpcbind.socket's units changed (exit $rc)" [ "$rc" = 1 ]
check "intercept status says to run enable again" grep -q "intercept enable" /tmp/st3.txt
$B check >/tmp/check3.txt; rc=$?
check "check (the Nagios plugin) says WARNING while transparent mode is partly on (exit $rc: $(cut -c1-120 /tmp/check3.txt))" sh -c "[ $rc = 1 ] && grep -q '^WARNING: transparent mode partly on' /tmp/check3.txt"
$B intercept enable >/tmp/enable3.txt 2>&1; rc=$?
check "enable again re-derives the drop-in ($(tail -1 /tmp/enable3.txt))" [ "$rc" = 0 ]
$B intercept status >/tmp/st4.txt; rc=$?
check "intercept status says on after re-deriving (exit $rc)" [ "$rc" = 0 ]
rm -f /etc/systemd/system/rpcbind.socket.d/20-extra.conf
$B intercept disable >/tmp/disable2.txt 2>&1; rc=$?
check "intercept disable exits 0 ($(tail -1 /tmp/disable2.txt))" [ "$rc" = 0 ]
check "the administrator's drop-in stays" [ -f $ADMIN ]
rpcbind_restart
rpcbind_ports >/tmp/admin-off.txt
check "after disable rpcbind listens exactly as the administrator set it" cmp -s /tmp/admin-before.txt /tmp/admin-off.txt
rm -f $ADMIN
rpcbind_restart
# --- a failing enable is rolled back: the host exactly as before --------------
# Another process holds [::1]:1111, which enable adds to rpcbind-proxy.socket
# (127.0.0.1:1111 is that unit's already): the unit cannot start, and enable
# must undo every change it made before that.
snap() { # snap NAME: the host's state, one file per part
	ls -A /run /run/rpcbind >/tmp/$1.run 2>&1
	find /etc/systemd/system -regex '.*\.d\(/.*\)?' | sort >/tmp/$1.dropins
	nft list ruleset >/tmp/$1.nft 2>&1
	{ systemctl is-active rpcbind-proxy.socket rpcbind-proxy.service rpcbind.socket rpcbind.service
	  systemctl show -p Listen rpcbind.socket rpcbind-proxy.socket; } >/tmp/$1.units 2>&1
	listing >/tmp/$1.rpcinfo 2>&1
}
snap pre
perl -MSocket=:all -e 'socket(my $s, AF_INET6, SOCK_STREAM, 0) or die "socket: $!\n"; bind($s, pack_sockaddr_in6(1111, inet_pton(AF_INET6, "::1"))) or die "[::1]:1111: $!\n"; listen($s, 1) or die "listen: $!\n"; sleep' &
HOLDER=$!
check "another process holds [::1]:1111" wait_for 5 sh -c "ss -Hltnp | grep -q '\[::1\]:1111 .*\"perl\"'"
$B intercept enable >/tmp/enable-held.txt 2>&1; rc=$?
cat /tmp/enable-held.txt
check "enable with [::1]:1111 held fails (exit $rc)" [ "$rc" = 1 ]
check "it names the failing step and says it was rolled back" grep -Eq '^rpcbind-proxy: intercept enable failed at step [0-9] \(restart rpcbind-proxy.socket.*\): .*rolled back' /tmp/enable-held.txt
snap held
for part in run dropins nft units rpcinfo; do
	check "after the failed enable, the host's $part is as before" cmp -s /tmp/pre.$part /tmp/held.$part
	diff /tmp/pre.$part /tmp/held.$part | head -10
done
kill "$HOLDER"; wait "$HOLDER" 2>/dev/null
finish
