# --- a failing enable is rolled back: the host exactly as before --------------
# Another process holds [::1]:1111, which enable adds to rpcbind-proxy.socket
# (127.0.0.1:1111 is that unit's already): the unit cannot start, and enable
# must undo every change it made before that.
snap pre
perl -MSocket=:all -e 'socket(my $s, AF_INET6, SOCK_STREAM, 0) or die "socket: $!\n"; bind($s, pack_sockaddr_in6(1111, inet_pton(AF_INET6, "::1"))) or die "[::1]:1111: $!\n"; listen($s, 1) or die "listen: $!\n"; sleep' &
HOLDER=$!
check "another process holds [::1]:1111" wait_for 5 sh -c "ss -Hltnp | grep -q '\[::1\]:1111 .*\"perl\"'"
$B intercept enable >/tmp/enable-held.txt 2>&1; rc=$?
cat /tmp/enable-held.txt
check "enable with [::1]:1111 held fails (exit $rc)" [ "$rc" = 1 ]
check "it names the failing step and says it was rolled back" grep -Eq '^rpcbind-proxy: intercept enable failed at step [0-9] \(restart rpcbind-proxy.socket.*\): .*rolled back' /tmp/enable-held.txt
snap held
for part in run dropins nft units rpcinfo; do
	check "after the failed enable, the host's $part is as before" cmp -s /tmp/pre.$part /tmp/held.$part
	diff /tmp/pre.$part /tmp/held.$part | head -10
done
kill "$HOLDER"; wait "$HOLDER" 2>/dev/null
