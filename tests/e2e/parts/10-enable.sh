# Transparent mode turned on, used, restarted, killed and turned off.
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
attribution=$(journalctl -b -u rpcbind-proxy -o cat | grep "attribution: " | tail -1)
echo "   (the daemon says: $attribution)"
# scripts/e2e-systemd boots with CAP_BPF and bpf allowed unless E2E_NO_BPF.
if [ $(( (0x$(awk '/^CapBnd:/ {print $2}' /proc/self/status) >> 39) & 1 )) = 1 ]; then
	check "the daemon names clients by eBPF under its unit's sandboxing" [ "$attribution" = "attribution: ebpf" ]
else
	check "the daemon says it searches, without CAP_BPF" [ "$attribution" = "attribution: search (no CAP_BPF)" ]
fi
check "the unit has CAP_NET_ADMIN" sh -c "systemctl show -p CapabilityBoundingSet rpcbind-proxy.service | grep -q cap_net_admin"
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
# The registrations made above go: the next parts start from rpcbind's own.
$T unset 400100 1 >/dev/null
runuser -u nobody -- $T unset 400101 1 >/dev/null
