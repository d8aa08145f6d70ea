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
