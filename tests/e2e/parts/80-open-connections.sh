# Connections already open to rpcbind's port 111 when the redirect table
# appears (enable, or a restart of the daemon) stay with rpcbind: only a
# new connection's SYN is redirected. Four long-lived clients, each on one
# TCP connection to 127.0.0.1:111 opened before `enable`, make a PMAP
# GETPORT call every 50 ms across 10 enable/disable cycles and 40 restarts
# of the daemon (50 appearances of the table): no call may fail.
OC=/tmp/oc; rm -rf $OC; mkdir -p $OC
OC_CLIENT='use Socket;
sub now { open(my $u, "<", "/proc/uptime") or die; (split " ", <$u>)[0] }
my ($stop, $out) = @ARGV; my ($ok, $failed, $n, $why) = (0, 0, 0, "");
socket(my $s, PF_INET, SOCK_STREAM, 0) or die "socket: $!\n";
connect($s, pack_sockaddr_in(111, inet_aton("127.0.0.1"))) or die "connect: $!\n";
until (-e $stop or $n++ >= 20000) {
	my $call = pack("N*", $n, 0, 2, 100000, 2, 3, 0, 0, 0, 0, 100000, 2, 6, 0);
	my $sent = syswrite($s, pack("N", 0x80000000 | length $call) . $call);
	my ($got, $buf) = (0, "");
	while ($sent && $got < 32) { my $r = sysread($s, $buf, 4096, $got); last unless $r; $got += $r; }
	if ($got >= 32) { $ok++ } else { $failed++; $why = ($! ? "$!" : "closed") . " at " . now(); $why =~ s/ /_/g; last }
	select(undef, undef, undef, 0.05);
}
open(my $o, ">", $out) or die "$out: $!\n"; print $o "$ok $failed $why\n";'
OC_PIDS=""
for i in 1 2 3 4; do
	perl -e "$OC_CLIENT" $OC/stop $OC/c$i.txt 2>$OC/c$i.err & OC_PIDS="$OC_PIDS $!"
done
check "four long-lived clients connected to rpcbind before enable" wait_for 5 sh -c "[ \$(ss -Htn state established '( dport = :111 )' | wc -l) -ge 4 ]"
appeared=0
echo "   (uptime at the first enable: $(cut -d' ' -f1 /proc/uptime))"
for i in $(seq 10); do
	if ! $B intercept enable >/tmp/oc-enable.txt 2>&1; then
		echo "   (enable $i failed: $(tail -1 /tmp/oc-enable.txt))"
		break
	fi
	nft list table inet rpcbind_proxy >/dev/null 2>&1 && appeared=$((appeared + 1))
	$B intercept disable >/dev/null 2>&1
	# (Back to back, the 10th enable once found 127.0.0.1:1111 still in
	# use as rpcbind-proxy.socket restarted: not what this checks.)
	sleep 1
done
$B intercept enable >/dev/null 2>&1
echo "   (uptime at the first restart: $(cut -d' ' -f1 /proc/uptime))"
for i in $(seq 40); do
	pid=$(main_pid)
	# Each restart stands for one on a host, far apart: the daemon's start
	# limit (5 in 10 s) is not what this checks.
	systemctl reset-failed rpcbind-proxy.service rpcbind-proxy.socket
	systemctl restart rpcbind-proxy.service
	wait_for 10 sh -c "nft list table inet rpcbind_proxy >/dev/null && [ \"\$(systemctl show -p MainPID --value rpcbind-proxy.service)\" != $pid ]" || break
	appeared=$((appeared + 1))
done
$B intercept disable >/dev/null 2>&1
touch $OC/stop
for pid in $OC_PIDS; do wait "$pid"; done
ok_calls=0 failed=0 why=""
for i in 1 2 3 4; do
	set -- $(cat $OC/c$i.txt 2>/dev/null || echo "0 1 no-report")
	ok_calls=$((ok_calls + $1)); failed=$((failed + $2)); [ -n "${3:-}" ] && why="$why c$i:$3"
done
check "the table appeared $appeared times (50 wanted)" [ "$appeared" = 50 ]
[ "$failed" = 0 ] || head -3 $OC/c*.err
check "long-lived connections open before the table: $ok_calls calls answered, $failed connections broken$why" [ "$failed" = 0 ]
check "the long-lived clients made calls throughout ($ok_calls)" [ "$ok_calls" -ge 400 ]
