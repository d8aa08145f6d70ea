# rpcbind restarted every way a host restarts it, with transparent mode on,
# after an enable/disable/enable cycle (after a first enable systemd still
# holds the socket it bound at boot; the cycle is what lost it before).
# For each event: probers on every transport a client uses (TCP and UDP on
# 127.0.0.1, TCP on ::1, the unix path as nobody) count failed lookups,
# and a registration made after the event must reach rpcbind through the
# proxy and come back from a TCP lookup (a cache miss: the proxy's
# upstream path works).

# A prober of the paths start_probe does not cover: the unix path (rpcinfo
# -s, as nobody) and [::1]:111 (rpcinfo -T tcp6), about 10 rounds a second
# (at most 3,000 rounds), until stop_paths.
start_paths() {
	: >/tmp/paths.run; : >/tmp/paths.err
	(
		good=0 failed=0 n=0
		while [ -e /tmp/paths.run ] && [ $n -lt 3000 ]; do
			if runuser -u nobody -- rpcinfo -s >/dev/null 2>&1; then good=$((good + 1)); else
				failed=$((failed + 1)); echo "$(date +%T.%N) unix: rpcinfo -s failed" >>/tmp/paths.err; fi
			if rpcinfo -T tcp6 ::1 100000 4 >/dev/null 2>&1; then good=$((good + 1)); else
				failed=$((failed + 1)); echo "$(date +%T.%N) tcp6: rpcinfo -T tcp6 ::1 failed" >>/tmp/paths.err; fi
			n=$((n + 1)); sleep 0.1
		done
		echo "$good $failed" >/tmp/paths.out
	) &
	PATHS=$!
}
stop_paths() {
	rm -f /tmp/paths.run; wait "$PATHS"
	set -- $(cat /tmp/paths.out)
	if [ "$1" -ge 10 ] && [ "$2" -eq 0 ]; then
		ok "unix and tcp6 clients lost no lookup across $PHASE ($1 ok)"
	else
		bad "unix and tcp6 clients lost $2 of $(($1 + $2)) lookups across $PHASE ($(head -3 /tmp/paths.err | tr '\n' ' '))"
		# What the units said around it (wall-clock times, as in paths.err).
		echo "   --- the units' journal over the event"
		journalctl -u rpcbind-proxy.service -u rpcbind-proxy.socket -u rpcbind.service -u rpcbind.socket \
			--since "-20s" --no-pager -o short-precise | tail -40 | sed 's/^/   /'
	fi
}
PROG=400300
# event NAME COMMAND...: COMMAND run with every prober running.
event() {
	PHASE=$1; shift
	# Each event stands for one on a host, hours apart: rpcbind's start-rate
	# limit (5 in 10 s) is not what these check.
	systemctl reset-failed rpcbind.socket rpcbind.service
	start_probe; start_paths
	sleep 1
	"$@" >/tmp/event.out 2>&1 || echo "   ($PHASE: exit $?: $(tail -1 /tmp/event.out))"
	wait_for 15 active rpcbind.service
	PROG=$((PROG + 1))
	check "$PHASE: a registration made after it reaches rpcbind and a TCP lookup finds it" \
		wait_for 5 sh -c "[ \"\$($T set $PROG 1 tcp 127.0.0.1.8.9)\" = true ] && $T getaddr 127.0.0.1 $PROG 1 tcp 1 | grep -qx 'addr 127.0.0.1.8.9'"
	sleep 1
	stop_paths; stop_probe
	$T unset $PROG 1 >/dev/null
	$B intercept status >/tmp/ev-st.txt; rc=$?
	check "$PHASE: intercept status says on (exit $rc$(grep -m1 '\[ \]' /tmp/ev-st.txt))" [ "$rc" = 0 ]
	h=$(holders /run/rpcbind.sock)
	check "$PHASE: rpcbind-proxy holds /run/rpcbind.sock ($h)" [ "$h" = "rpcbind-proxy systemd " ]
	listing >/tmp/ev-list.txt 2>&1
	check "$PHASE: rpcinfo prints what it printed before" cmp -s /tmp/r-before.txt /tmp/ev-list.txt
	diff /tmp/r-before.txt /tmp/ev-list.txt | head -10
}

listing >/tmp/r-before.txt 2>&1
snap r-pre
$B intercept enable >/dev/null 2>&1
systemctl restart rpcbind.socket rpcbind.service
wait_for 10 active rpcbind.service
$B intercept disable >/tmp/r-disable.txt 2>&1 || cat /tmp/r-disable.txt
$B intercept enable >/tmp/r-enable.txt 2>&1; rc=$?
check "enable after enable, an rpcbind restart and disable exits 0 ($(tail -1 /tmp/r-enable.txt))" [ "$rc" = 0 ]

event "systemctl restart rpcbind.service" systemctl restart rpcbind.service
event "systemctl restart rpcbind.socket" systemctl restart rpcbind.socket
event "systemctl restart rpcbind.socket rpcbind.service" systemctl restart rpcbind.socket rpcbind.service
event "systemctl stop, then start, rpcbind" sh -c "systemctl stop rpcbind.service rpcbind.socket && sleep 1 && systemctl start rpcbind.socket rpcbind.service"
# (adduser, run by rpcbind's postinst, leaves its lock file in /run.)
event "rpcbind's package reinstalled (dpkg -i, its maintainer scripts)" sh -c "dpkg -i /var/cache/apt/archives/rpcbind_*.deb; rm -f /run/adduser"
# A registration rpcbind loses with a SIGKILL (no warm start saved) is gone
# from the proxy's answers too, within its refresh (1 s).
check "set-up: a registration to be lost with rpcbind" sh -c "[ \"\$($T set 400399 1 tcp 127.0.0.1.8.7)\" = true ] && $T getaddr 127.0.0.1 400399 1 tcp 1 | grep -qx 'addr 127.0.0.1.8.7'"
event "rpcbind killed by SIGKILL, restarted by systemd" sh -c "pid=\$(systemctl show -p MainPID --value rpcbind.service); systemctl kill -s KILL rpcbind.service; for i in \$(seq 100); do p=\$(systemctl show -p MainPID --value rpcbind.service); [ \"\$p\" != 0 ] && [ \"\$p\" != \"\$pid\" ] && break; sleep 0.1; done"
check "a registration rpcbind lost with its SIGKILL is gone from the proxy's answers within 3 s" wait_for 3 sh -c "$T getaddr 127.0.0.1 400399 1 tcp 1 | grep -qx unregistered"
event "systemctl daemon-reload, then restart rpcbind.service (an upgrade's order)" sh -c "systemctl daemon-reload && systemctl restart rpcbind.service"

$B intercept disable >/tmp/r-disable2.txt 2>&1; rc=$?
check "disable after the restarts exits 0 ($(tail -1 /tmp/r-disable2.txt))" [ "$rc" = 0 ]
for v in 4 3; do
	check "after disable, rpcinfo -T local localhost 100000 $v works" rpcinfo -T local localhost 100000 $v
done
snap r-post
as_before r-pre r-post
# A last restart with transparent mode off: rpcbind is on its usual path.
systemctl reset-failed rpcbind.socket rpcbind.service
systemctl restart rpcbind.service
wait_for 10 active rpcbind.service
check "after disable, rpcbind restarted answers on /run/rpcbind.sock, no name of the proxy's left" sh -c "rpcinfo -s >/dev/null && rpcinfo -T local localhost 100000 4 >/dev/null && [ ! -e /run/rpcbind/upstream.sock ]"
$B intercept status >/dev/null; rc=$?
check "after disable and a restart of rpcbind, intercept status says off (exit $rc)" [ "$rc" = 3 ]

# --- systemd holds no socket for rpcbind (an earlier version's `disable`
# left hosts so): enable must make it hold one again, or the next restart
# of rpcbind takes /run/rpcbind.sock from the proxy.
mkdir -p /etc/systemd/system/rpcbind.socket.d
printf '[Socket]\nListenStream=\nListenDatagram=\nListenStream=/run/rpcbind-elsewhere.sock\n' >/etc/systemd/system/rpcbind.socket.d/90-elsewhere.conf
systemctl daemon-reload
rm /etc/systemd/system/rpcbind.socket.d/90-elsewhere.conf
rmdir /etc/systemd/system/rpcbind.socket.d
systemctl daemon-reload
systemctl restart rpcbind.service
wait_for 10 active rpcbind.service
h=$(holders /run/rpcbind.sock)
check "set-up: rpcbind bound /run/rpcbind.sock itself, systemd passed it none ($h)" [ "$h" = "rpcbind " ]
$B intercept enable >/tmp/r-enable3.txt 2>&1; rc=$?
check "enable where systemd holds no socket for rpcbind exits 0 ($(grep -m1 restarted /tmp/r-enable3.txt))" [ "$rc" = 0 ]
h=$(holders /run/rpcbind/upstream.sock)
check "systemd holds rpcbind's socket at /run/rpcbind/upstream.sock after enable ($h)" [ "$h" = "rpcbind systemd " ]
event "systemctl restart rpcbind.service, after enable made systemd hold rpcbind's socket" systemctl restart rpcbind.service
$B intercept disable >/tmp/r-disable3.txt 2>&1; rc=$?
check "disable exits 0 ($(tail -1 /tmp/r-disable3.txt))" [ "$rc" = 0 ]
check "after disable, rpcinfo -T local localhost 100000 4 works" rpcinfo -T local localhost 100000 4
systemctl restart rpcbind.service
wait_for 10 active rpcbind.service
check "after disable and a restart of rpcbind, rpcinfo -T local works" rpcinfo -T local localhost 100000 4
