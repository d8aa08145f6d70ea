# The daemon's lines read completely in plain `journalctl`: each carries its
# values in its text (the daemon sends MESSAGE as "message key=value ..."),
# at its level's priority (info is notice, 5; an error 3).
systemctl restart rpcbind-proxy.service
wait_for 15 active rpcbind-proxy.service
pid=$(main_pid)
lines() { journalctl --no-pager -o cat _PID="$pid" "$@"; }
check "the journal has the start-up lines (ready, priority 5)" wait_for 10 sh -c "journalctl --no-pager -o cat _PID=$pid PRIORITY=5 | grep -qx ready"
for address in unix:/run/rpcbind-proxy/rpcbind.sock tcp:127.0.0.1:1111 udp:127.0.0.1:1111; do
	check "journalctl -u rpcbind-proxy shows 'listening address=$address'" sh -c "journalctl --no-pager -o cat -u rpcbind-proxy.service _PID=$pid | grep -qx 'listening address=$address'"
done
check "the address is a journal field of its own too (F_ADDRESS)" sh -c "journalctl --no-pager -o cat _PID=$pid F_ADDRESS=tcp:127.0.0.1:1111 | grep -qx 'listening address=tcp:127.0.0.1:1111'"
nofile=$(awk '/^Max open files/ { print $4 }' /proc/"$pid"/limits)
check "the descriptor-limit line shows the limit ($nofile)" sh -c "journalctl --no-pager -o cat _PID=$pid | grep -qx 'descriptor limit nofile=$nofile'"
check "the sockets systemd passed are named and counted in the text (no --listen: nothing said ignored)" sh -c "journalctl --no-pager -o cat _PID=$pid | grep -qx 'using the sockets systemd passed: unix:/run/rpcbind-proxy/rpcbind.sock tcp:127.0.0.1:1111 udp:127.0.0.1:1111 count=3'"
lines | grep -E '^(listening|descriptor limit|using the sockets)' | sed 's/^/   /'

# A reload with a broken config fails (the unit's ExecReload checks the
# file first, `serve --check-config`) and says why; the running daemon is
# not signalled and goes on.
conf=/etc/rpcbind-proxy/config.toml
had_conf=no
[ -e "$conf" ] && had_conf=yes && cp -p "$conf" /tmp/config.toml.saved
mkdir -p /etc/rpcbind-proxy
printf 'ttl-typo = 1\n' >>"$conf"
check "systemctl reload fails with a broken config" sh -c '! systemctl reload rpcbind-proxy.service'
check "the unit's journal names the bad key" wait_for 10 sh -c "journalctl --no-pager -o cat -u rpcbind-proxy.service | grep -q 'rpcbind-proxy: bad config file .*ttl-typo'"
check "the daemon was not asked to reload" sh -c "! journalctl --no-pager -o cat _PID=$pid | grep -q '^reload failed'"
journalctl --no-pager -o cat -u rpcbind-proxy.service | grep 'ttl-typo' | tail -n 2 | sed 's/^/   /'
if [ "$had_conf" = yes ]; then cp -p /tmp/config.toml.saved "$conf"; else rm -f "$conf"; fi
# A key only a restart changes is named in the reload's log line.
printf 'threads = 3\n' >>"$conf"
check "a reload with a restart-only key changed succeeds" systemctl reload rpcbind-proxy.service
check "the reload names the key that needs a restart" wait_for 10 sh -c "journalctl --no-pager -o cat _PID=$pid | grep -q '^threads changes only with a restart; kept the running value'"
if [ "$had_conf" = yes ]; then mv /tmp/config.toml.saved "$conf"; else rm -f "$conf"; fi
systemctl reload rpcbind-proxy.service
same_daemon() { active rpcbind-proxy.service && [ "$(main_pid)" = "$pid" ]; }
check "after the config is restored the same daemon still runs" wait_for 10 same_daemon
