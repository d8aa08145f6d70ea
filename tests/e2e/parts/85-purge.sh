# --- removing and purging the package ----------------------------------------
# The runtime directory /run/rpcbind-proxy outlives the units (the socket's
# DirectoryMode, the service's RuntimeDirectoryPreserve): the postrm removes
# it on purge, and on remove once it is empty. The package is installed again
# afterwards (scripts/e2e-systemd leaves its .deb in /root) for the parts
# after this one.
DEB=/root/rpcbind-proxy.deb
if [ ! -e $DEB ]; then
	echo "   (no package: E2E_BIN run; skipped)"
else
	$B status >/dev/null
	# An upgrade (the same package installed over itself): the service
	# restarts onto the new binary while the socket unit keeps listening,
	# so a client asking meanwhile waits in the backlog and is answered.
	pid_before=$(main_pid)
	socket_since=$(systemctl show -p ActiveEnterTimestampMonotonic --value rpcbind-proxy.socket)
	rm -f /tmp/upgrade.done /tmp/upgrade.failed /tmp/upgrade.err
	(
		i=0
		while [ ! -e /tmp/upgrade.done ] && [ $i -lt 600 ]; do
			$B query getport 100000 2 tcp >/dev/null 2>>/tmp/upgrade.err || echo x >>/tmp/upgrade.failed
			i=$((i + 1))
		done
	) &
	asker=$!
	dpkg -i $DEB >/tmp/dpkg-upgrade.txt 2>&1; rc=$?
	check "an upgrade (dpkg -i over the running package) exits 0" [ "$rc" = 0 ]
	restarted() { active rpcbind-proxy.service && [ "$(main_pid)" != "$pid_before" ] && $B query -p >/dev/null; }
	check "after an upgrade the service runs again, restarted" wait_for 15 restarted
	touch /tmp/upgrade.done
	wait "$asker"
	check "the socket unit was not restarted by the upgrade (it kept listening)" [ "$(systemctl show -p ActiveEnterTimestampMonotonic --value rpcbind-proxy.socket)" = "$socket_since" ]
	check "no lookup through the proxy failed across the upgrade ($(cat /tmp/upgrade.failed 2>/dev/null | wc -l) failed)" [ ! -e /tmp/upgrade.failed ]
	[ -s /tmp/upgrade.err ] && sed 's/^/   /' /tmp/upgrade.err | head -5
	check "before: /run/rpcbind-proxy exists while the daemon runs" [ -d /run/rpcbind-proxy ]
	dpkg --remove rpcbind-proxy >/tmp/dpkg-remove.txt 2>&1; rc=$?
	check "dpkg --remove exits 0" [ "$rc" = 0 ]
	check "after a removal no unit runs" sh -c '! systemctl is-active --quiet rpcbind-proxy.socket rpcbind-proxy.service'
	check "after a removal /run/rpcbind-proxy is gone (it was empty)" [ ! -e /run/rpcbind-proxy ]
	dpkg -i $DEB >/tmp/dpkg-i.txt 2>&1
	check "installed again, the daemon answers" wait_for 15 sh -c "$B query -p >/dev/null"
	dpkg --purge rpcbind-proxy >/tmp/dpkg-purge.txt 2>&1; rc=$?
	check "dpkg --purge exits 0" [ "$rc" = 0 ]
	check "after a purge /run/rpcbind-proxy is gone" [ ! -e /run/rpcbind-proxy ]
	dpkg -i $DEB >/tmp/dpkg-i.txt 2>&1
	check "installed again for the next parts, the daemon answers" wait_for 15 sh -c "$B query -p >/dev/null"
fi
