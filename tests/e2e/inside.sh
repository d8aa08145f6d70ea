#!/bin/sh
# Runs inside the booted container of scripts/e2e-systemd, as a oneshot
# service once multi-user.target is reached; writes its report to
# /out/report.txt and powers the container off. Every check prints one
# "ok ..." or "FAIL ..." line; the report ends on "e2e: N passed, M failed".
#
# The clients are unmodified: Debian's rpcinfo and the libtirpc test client
# (/usr/local/bin/tirpc_client, tests/clients/tirpc_client.c), as the
# container's own users would run them.
set -u
E2E=/usr/local/lib/e2e
if [ -e /out/reboot/wanted ]; then
	# The second boot, which tests/e2e/parts/90-reboot.sh asked for.
	rm /out/reboot/wanted
	exec >/out/report-reboot.txt 2>&1
	. $E2E/lib.sh
	check "after the reboot rpcbind and rpcbind-proxy are running" wait_for 30 active rpcbind-proxy.service
	wait_for 10 active rpcbind.service
	. $E2E/after-reboot.sh
	finish
fi
exec >/out/report.txt 2>&1
. $E2E/lib.sh
check "rpcbind and rpcbind-proxy are running" wait_for 30 active rpcbind-proxy.service
wait_for 10 active rpcbind.service
# Each part starts and ends with transparent mode off. /usr/local/lib/e2e/only,
# if present, lists the parts to run (scripts/e2e-systemd: E2E_ONLY).
only=$(cat $E2E/only 2>/dev/null)
for part in $E2E/parts/*.sh; do
	name=$(basename "$part" .sh)
	case " $only " in
	"  " | *" ${name%%-*} "*) ;;
	*) continue ;;
	esac
	echo "# $name"
	. "$part"
done
finish
