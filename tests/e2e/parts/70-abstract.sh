# rpcbind's abstract name. Upstream rpcbind 1.2.7's unit listens on
# @/run/rpcbind.sock (Debian's does not), and libtirpc >= 1.3.4 clients and
# the kernel try it before the path: an administrator's drop-in adds it
# here. enable takes it over (rpcbind lets go of it), disable gives it back;
# rpcbind's TCP/UDP listeners stay as they were throughout.
ABS=/etc/systemd/system/rpcbind.socket.d/10-abstract.conf
mkdir -p /etc/systemd/system/rpcbind.socket.d
printf '[Socket]\nListenStream=@/run/rpcbind.sock\n' >$ABS
rpcbind_restart
abstract_checks() {
	rpcbind_ports >/tmp/a-ports-before.txt
	snap a-pre
	$B intercept status >/tmp/a-st0.txt; rc=$?
	check "intercept status says off before enable (exit $rc)" [ "$rc" = 3 ]
	grep '@/run' /tmp/a-st0.txt

	$B intercept enable >/tmp/a-enable.txt 2>&1; rc=$?
	check "enable with rpcbind on the abstract name exits 0 ($(grep -m1 abstract /tmp/a-enable.txt))" [ "$rc" = 0 ]
	h=$(abstract_holders @/run/rpcbind.sock)
	check "the proxy holds @/run/rpcbind.sock, rpcbind does not ($h)" [ "$h" = "rpcbind-proxy systemd " ]
	$B intercept status >/tmp/a-st1.txt; rc=$?
	check "intercept status says on, the abstract name ticked (exit $rc)" sh -c "[ $rc = 0 ] && grep -q '\[x\] rpcbind-proxy holds @/run/rpcbind.sock' /tmp/a-st1.txt"
	for who in root nobody; do
		runuser -u $who -- $T local-getaddr @/run/rpcbind.sock 100000 4 tcp >/tmp/a-on.txt 2>&1
		check "over the abstract name, as $who, the answer is rpcbind's ($(cat /tmp/a-on.txt))" cmp -s /tmp/a-before.txt /tmp/a-on.txt
	done
	listing >/tmp/a-list.txt 2>&1
	check "rpcinfo prints what it printed before" cmp -s /tmp/a-pre.rpcinfo /tmp/a-list.txt
	for ev in "rpcbind.service" "rpcbind.socket rpcbind.service"; do
		systemctl reset-failed rpcbind.socket rpcbind.service
		systemctl restart $ev
		wait_for 10 active rpcbind.service
		h=$(abstract_holders @/run/rpcbind.sock)
		check "after systemctl restart $ev the proxy still holds @/run/rpcbind.sock ($h)" [ "$h" = "rpcbind-proxy systemd " ]
		$T local-getaddr @/run/rpcbind.sock 100000 4 tcp >/tmp/a-on.txt 2>&1
		check "after systemctl restart $ev the abstract name answers as before" cmp -s /tmp/a-before.txt /tmp/a-on.txt
	done
	rpcbind_ports >/tmp/a-ports-on.txt
	check "rpcbind's TCP/UDP listeners are as before enable" cmp -s /tmp/a-ports-before.txt /tmp/a-ports-on.txt

	$B intercept disable >/tmp/a-disable.txt 2>&1; rc=$?
	check "disable exits 0 ($(tail -1 /tmp/a-disable.txt))" [ "$rc" = 0 ]
	h=$(abstract_holders @/run/rpcbind.sock)
	check "after disable rpcbind holds @/run/rpcbind.sock again ($h)" [ "$h" = "rpcbind systemd " ]
	$T local-getaddr @/run/rpcbind.sock 100000 4 tcp >/tmp/a-off.txt 2>&1
	check "after disable the abstract name answers as before" cmp -s /tmp/a-before.txt /tmp/a-off.txt
	snap a-post
	as_before a-pre a-post
}
h=$(abstract_holders @/run/rpcbind.sock)
$T local-getaddr @/run/rpcbind.sock 100000 4 tcp >/tmp/a-before.txt 2>&1
if [ "$h" = "rpcbind systemd " ] && grep -q '^addr ' /tmp/a-before.txt; then
	ok "set-up: rpcbind listens on @/run/rpcbind.sock and answers there ($(cat /tmp/a-before.txt))"
	abstract_checks
else
	# rpcbind 1.2.6 (Debian 12) does not serve an abstract socket systemd
	# passes it (it answers neither there nor, for v3/v4, on its path).
	ok "skipped: this rpcbind ($(dpkg-query -W -f '${Version}' rpcbind)) does not serve @/run/rpcbind.sock (holders: ${h:-none}; $(head -c 100 /tmp/a-before.txt))"
fi
rm -f $ABS
rmdir /etc/systemd/system/rpcbind.socket.d 2>/dev/null
rpcbind_restart
