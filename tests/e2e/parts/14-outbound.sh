# --- the client side under systemd (intercept-outbound = true) --------------
# Another host: a network namespace joined by a veth pair (169.254.77.0/24),
# running an rpcbind of its own. With `intercept-outbound = true` in the
# config file (then with `intercept enable --outbound`) and transparent
# mode on, this host's TCP lookups at it go
# through the proxy: the same answers, and no TIME_WAIT left here; a
# SIGKILLed daemon leaves the lookups going straight until systemd has it
# back.
SRV=169.254.77.2
CONF=/etc/rpcbind-proxy/config.toml
other_host rbpsrv rbo0 169.254.77
ip netns exec rbpsrv unshare -m --propagation private \
	sh -c 'mount -t tmpfs tmpfs /run && exec rpcbind -f' >/dev/null 2>&1 &
srv_rpcbind=$!
check "the other host's rpcbind answers rpcinfo -p directly" wait_for 10 sh -c "rpcinfo -p $SRV >/tmp/ob-direct.txt"
# TIME_WAIT sockets here towards the other host's port 111.
tw_srv() { ss -Htan state time-wait "( dst $SRV and dport = :111 )" | wc -l; }
# A number in the outbound part of `status --json` (one line, keys sorted).
outbound_n() { $B status --json | sed -n "s/.*\"outbound\":{[^}]*\"$1\":\([0-9]*\).*/\1/p"; }
outbound_rule() { nft list chain inet rpcbind_proxy output 2>/dev/null | grep -q 'redirect to :1113'; }

[ -e $CONF ] && cp $CONF /tmp/ob-config.bak
echo 'intercept-outbound = true' >>$CONF
$B intercept enable >/tmp/ob1.txt 2>&1; rc=$?
check "intercept enable with intercept-outbound = true exits 0 ($(tail -1 /tmp/ob1.txt))" [ "$rc" = 0 ]
check "the table catches this host's TCP to other hosts' port 111" wait_for 15 outbound_rule
check "rpcinfo -p of the other host through the proxy prints what it printed directly" \
	sh -c "rpcinfo -p $SRV >/tmp/ob-through.txt && cmp -s /tmp/ob-direct.txt /tmp/ob-through.txt"
before=$(tw_srv)
for i in $(seq 100); do rpcinfo -T tcp $SRV 100000 4 >/dev/null 2>&1 || echo "lookup $i failed"; done >/tmp/ob-loop.txt
check "100 rpcinfo -T tcp $SRV 100000 4 answered ($(head -1 /tmp/ob-loop.txt))" [ ! -s /tmp/ob-loop.txt ]
sleep 0.2
after=$(tw_srv)
check "they left no TIME_WAIT here (towards $SRV:111: $before before, $after after)" [ "$after" -le "$before" ]
check "the proxy carried them (status: $(outbound_n clients) outbound clients)" [ "$(outbound_n clients)" -ge 100 ]
$B status >/tmp/ob-status.txt
check "status has the outbound line" grep -q '^outbound ' /tmp/ob-status.txt

# A lookup on a connection to the daemon at the instant it is killed dies
# with it, as in transparent mode; once it is gone, lookups go straight
# (its table went with it) or to the daemon systemd started again.
pid=$(main_pid)
systemctl kill -s KILL rpcbind-proxy.service
check "the SIGKILLed daemon is gone" wait_for 10 sh -c "! kill -0 $pid"
check "then rpcinfo -p $SRV is answered" sh -c "rpcinfo -p $SRV >/dev/null"
check "systemd has the daemon back, catching again" wait_for 20 outbound_rule

$B intercept disable >/tmp/ob2.txt 2>&1; rc=$?
check "disable after the client side exits 0 ($(tail -1 /tmp/ob2.txt))" [ "$rc" = 0 ]
if [ -e /tmp/ob-config.bak ]; then mv /tmp/ob-config.bak $CONF; else rm -f $CONF; fi
check "with it off, rpcinfo -p $SRV is answered" sh -c "rpcinfo -p $SRV >/dev/null"

# `intercept enable --outbound` puts it on the daemon's command line; enable
# again without it takes it off.
$B intercept enable --outbound >/tmp/ob3.txt 2>&1; rc=$?
check "intercept enable --outbound exits 0 ($(tail -1 /tmp/ob3.txt))" [ "$rc" = 0 ]
check "... and the table catches TCP to other hosts' port 111" wait_for 15 outbound_rule
check "... and rpcinfo -p $SRV through the proxy prints what it printed directly" \
	sh -c "rpcinfo -p $SRV >/tmp/ob-through2.txt && cmp -s /tmp/ob-direct.txt /tmp/ob-through2.txt"
$B intercept enable >/tmp/ob4.txt 2>&1; rc=$?
check "enable without --outbound exits 0 and takes the client side off" \
	sh -c "[ $rc = 0 ] && nft list table inet rpcbind_proxy >/dev/null && ! nft list chain inet rpcbind_proxy output | grep -q 'redirect to :1113'"
$B intercept disable >/tmp/ob5.txt 2>&1; rc=$?
check "disable exits 0 ($(tail -1 /tmp/ob5.txt))" [ "$rc" = 0 ]
kill $srv_rpcbind 2>/dev/null
wait $srv_rpcbind 2>/dev/null
ip netns del rbpsrv
