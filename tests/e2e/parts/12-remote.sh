# --- server mode under systemd (intercept enable --remote IF) ---------------
# `enable --remote IF` puts server mode on the daemon's command line: the
# table gains a prerouting chain catching IF's port-111 traffic and the
# daemon listens on [::]:1112 for it; local clients still go through the
# proxy. `enable` again without --remote takes server mode off (enable's
# options are the whole of what is wanted); disable removes both.
remote_rule() { nft list chain inet rpcbind_proxy prerouting 2>/dev/null | grep -q 'iifname "rbp0"'; }
$B intercept enable --remote rbp0 >/tmp/remote1.txt 2>&1; rc=$?
check "intercept enable --remote rbp0 exits 0 ($(tail -1 /tmp/remote1.txt))" [ "$rc" = 0 ]
check "the table catches rbp0's port-111 traffic" wait_for 15 remote_rule
check "the daemon listens on [::]:1112 for other hosts (ss: *:1112, both families)" sh -c "ss -Hlnt | grep -Eq '(\[::\]|\*):1112 '"
check "local clients still go through the proxy (rpcinfo -p 127.0.0.1)" sh -c "rpcinfo -p 127.0.0.1 >/dev/null"
$B intercept status >/tmp/remote-st.txt; rc=$?
check "intercept status says on with server mode (exit $rc)" [ "$rc" = 0 ]
$B intercept enable >/tmp/remote2.txt 2>&1; rc=$?
check "enable without --remote exits 0 ($(tail -1 /tmp/remote2.txt))" [ "$rc" = 0 ]
check "server mode is off again (no prerouting chain)" wait_for 15 sh -c "nft list table inet rpcbind_proxy && ! nft list chain inet rpcbind_proxy prerouting"
$B intercept disable >/tmp/remote3.txt 2>&1; rc=$?
check "disable after server mode exits 0 ($(tail -1 /tmp/remote3.txt))" [ "$rc" = 0 ]
