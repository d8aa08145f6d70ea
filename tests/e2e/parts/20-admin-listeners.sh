# --- an administrator's loopback-only rpcbind (CIS hardening) ----------------
# enable keeps rpcbind's listeners as the administrator set them: only the
# unix path moves. Compared: rpcbind's listening TCP/UDP address:port sets.
ADMIN=/etc/systemd/system/rpcbind.socket.d/10-loopback.conf
mkdir -p /etc/systemd/system/rpcbind.socket.d
# Both families: given no IPv6 socket, rpcbind binds [::]:111 itself.
printf '[Socket]\nListenStream=\nListenStream=/run/rpcbind.sock\nListenStream=127.0.0.1:111\nListenDatagram=127.0.0.1:111\nListenStream=[::1]:111\nListenDatagram=[::1]:111\n' >$ADMIN
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
rmdir /etc/systemd/system/rpcbind.socket.d 2>/dev/null  # made above; the next parts start from a host without it
rpcbind_restart
