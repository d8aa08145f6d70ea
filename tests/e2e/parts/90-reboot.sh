# A reboot with transparent mode on, under an administrator's loopback-only
# rpcbind.socket (CIS hardening). The last part, and the only one that ends
# with transparent mode on: scripts/e2e-systemd boots the container again
# and tests/e2e/after-reboot.sh checks the host as it comes up, then turns
# transparent mode off.
mkdir -p /etc/systemd/system/rpcbind.socket.d /out/reboot
printf '[Socket]\nListenStream=\nListenStream=/run/rpcbind.sock\nListenStream=127.0.0.1:111\nListenDatagram=127.0.0.1:111\nListenStream=[::1]:111\nListenDatagram=[::1]:111\n' \
	>/etc/systemd/system/rpcbind.socket.d/10-loopback.conf
rpcbind_restart
rpcbind_ports >/out/reboot/ports.txt
listing >/out/reboot/listing.txt 2>&1
$B intercept enable >/tmp/rb-enable.txt 2>&1; rc=$?
check "enable before the reboot exits 0 ($(tail -1 /tmp/rb-enable.txt))" [ "$rc" = 0 ]
: >/out/reboot/wanted
