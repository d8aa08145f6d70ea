# --- server mode under systemd, with another host calling --------------------
# Another host on interface rbr0: a network namespace joined by a veth pair
# (169.254.78.0/24) calling this host's port 111 with Debian's rpcinfo.
# Through `intercept enable --remote rbr0` it gets what rpcbind printed and
# keeps no TIME_WAIT, across a restart of rpcbind and a SIGKILL of the
# daemon; with server mode off, rpcbind answers it again.
SELF=169.254.78.1
other_host rbpcli rbr0 169.254.78
# rpcinfo -p of this host, run on the other host, into file $1.
remote_listing() { ip netns exec rbpcli rpcinfo -p $SELF >"$1" 2>&1; }
# TIME_WAIT sockets on the other host towards port 111.
cli_tw() { ip netns exec rbpcli ss -Htan state time-wait "( dport = :111 )" | wc -l; }
# Flows the rbr0 rules redirected so far.
rbr0_flows() {
	nft list chain inet rpcbind_proxy prerouting 2>/dev/null | grep 'iifname "rbr0"' |
		sed -n 's/.*counter packets \([0-9]*\).*/\1/p' | awk '{ s += $1 } END { print s + 0 }'
}
rbr0_rule() { nft list chain inet rpcbind_proxy prerouting 2>/dev/null | grep -q 'iifname "rbr0"'; }

check "the other host's rpcinfo -p $SELF is answered by rpcbind" remote_listing /tmp/rc-direct.txt
$B intercept enable --remote rbr0 >/tmp/rc1.txt 2>&1; rc=$?
check "intercept enable --remote rbr0 exits 0 ($(tail -1 /tmp/rc1.txt))" [ "$rc" = 0 ]
check "the table catches rbr0's port-111 traffic" wait_for 15 rbr0_rule
remote_listing /tmp/rc-through.txt
check "through the proxy, the other host's rpcinfo -p prints what rpcbind's printed" cmp -s /tmp/rc-direct.txt /tmp/rc-through.txt
diff /tmp/rc-direct.txt /tmp/rc-through.txt | head -5
before=$(cli_tw)
for i in $(seq 50); do
	ip netns exec rbpcli rpcinfo -T tcp $SELF 100000 4 >/dev/null 2>&1 || echo "lookup $i failed"
done >/tmp/rc-loop.txt
check "50 rpcinfo -T tcp $SELF 100000 4 from the other host answered ($(head -1 /tmp/rc-loop.txt))" [ ! -s /tmp/rc-loop.txt ]
sleep 0.2
after=$(cli_tw)
check "they left no TIME_WAIT on the other host ($before before, $after after)" [ "$after" -le "$before" ]
check "the rbr0 rules redirected them ($(rbr0_flows) flows)" [ "$(rbr0_flows)" -ge 100 ]

systemctl restart rpcbind.socket rpcbind.service
remote_listing /tmp/rc-restart.txt
check "after a restart of rpcbind, the other host's rpcinfo -p prints the same" cmp -s /tmp/rc-direct.txt /tmp/rc-restart.txt

# A lookup on a connection to the daemon at the instant it is killed dies
# with it; once it is gone, the other host reaches rpcbind (the table went
# with the daemon) or the daemon systemd started again.
pid=$(main_pid)
systemctl kill -s KILL rpcbind-proxy.service
check "the SIGKILLed daemon is gone" wait_for 10 sh -c "! kill -0 $pid"
remote_listing /tmp/rc-killed.txt
check "then the other host's rpcinfo -p prints the same" cmp -s /tmp/rc-direct.txt /tmp/rc-killed.txt
check "systemd has the daemon back, catching rbr0 again" wait_for 20 rbr0_rule

$B intercept disable >/tmp/rc2.txt 2>&1; rc=$?
check "disable exits 0 ($(tail -1 /tmp/rc2.txt))" [ "$rc" = 0 ]
check "server mode is off (no table)" wait_for 10 no_table
remote_listing /tmp/rc-off.txt
check "with it off, the other host's rpcinfo -p prints what rpcbind printed" cmp -s /tmp/rc-direct.txt /tmp/rc-off.txt
ip netns del rbpcli
