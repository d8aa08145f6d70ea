# The container's second boot (tests/e2e/parts/90-reboot.sh asked for it):
# transparent mode comes up on by itself, rpcbind's listeners are those the
# administrator set, and `disable` restores the host (rpcbind.socket bound
# rpcbind's socket at the upstream path at boot: disable binds it at its
# own path again).
$B intercept status >/tmp/ar-st.txt; rc=$?
check "after the reboot transparent mode is on (intercept status exit $rc$(grep -m1 '\[ \]' /tmp/ar-st.txt))" [ "$rc" = 0 ]
h=$(holders /run/rpcbind/upstream.sock)
check "after the reboot systemd holds rpcbind's socket at /run/rpcbind/upstream.sock ($h)" [ "$h" = "rpcbind systemd " ]
h=$(holders /run/rpcbind.sock)
check "after the reboot rpcbind-proxy holds /run/rpcbind.sock ($h)" [ "$h" = "rpcbind-proxy systemd " ]
rpcbind_ports >/tmp/ar-ports.txt
check "after the reboot rpcbind listens exactly as the administrator set it (loopback only)" cmp -s /out/reboot/ports.txt /tmp/ar-ports.txt
diff /out/reboot/ports.txt /tmp/ar-ports.txt | head -5
listing >/tmp/ar-listing.txt 2>&1
check "after the reboot rpcinfo prints what it printed before" cmp -s /out/reboot/listing.txt /tmp/ar-listing.txt
diff /out/reboot/listing.txt /tmp/ar-listing.txt | head -10
PHASE="the first minute after the reboot"; start_probe
sleep 2
stop_probe
tw=$(ss -Htan state time-wait '( dport = :111 or sport = :111 )' | wc -l)
runuser -u nobody -- $T getaddr 127.0.0.1 100000 4 tcp 200 >/dev/null
tw2=$(ss -Htan state time-wait '( dport = :111 or sport = :111 )' | wc -l)
check "after the reboot 200 one-shot lookups leave no TIME_WAIT on port 111 ($tw -> $tw2)" [ "$tw2" -le "$tw" ]
$B intercept disable >/tmp/ar-disable.txt 2>&1; rc=$?
cat /tmp/ar-disable.txt
check "disable after the reboot exits 0" [ "$rc" = 0 ]
rpcbind_ports >/tmp/ar-ports-off.txt
check "after disable rpcbind listens exactly as the administrator set it" cmp -s /out/reboot/ports.txt /tmp/ar-ports-off.txt
check "after disable rpcinfo -T local localhost 100000 4 works" rpcinfo -T local localhost 100000 4
check "after disable no name of the proxy's is left in /run/rpcbind" [ ! -e /run/rpcbind/upstream.sock ]
listing >/tmp/ar-listing-off.txt 2>&1
sort /out/reboot/listing.txt >/tmp/ar-a; sort /tmp/ar-listing-off.txt >/tmp/ar-b
check "after disable rpcinfo prints the lines it printed before the reboot" cmp -s /tmp/ar-a /tmp/ar-b
diff /tmp/ar-a /tmp/ar-b | head -10
systemctl reset-failed rpcbind.socket rpcbind.service
systemctl restart rpcbind.service
wait_for 10 active rpcbind.service
check "after disable and a restart of rpcbind, rpcinfo -T local works" rpcinfo -T local localhost 100000 4
check "the administrator's drop-in stays" [ -f /etc/systemd/system/rpcbind.socket.d/10-loopback.conf ]
