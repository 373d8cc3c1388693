# Sourced by the bench scripts: iperf3 between two namespaces, and the bare-kernel twin of a two-node weft lab (two
# node namespaces on an underlay bridge, one pod each with a /32 and a link-local gateway, like weft routed), wired
# by hand with iproute2. The caller sets $bare (the twin's namespace prefix) and $T (iperf seconds).

iperf() { # client-netns server-netns server-ip -> Gbit/s
  ip netns exec "$2" iperf3 -s -p 5299 -1 -D -A 1 >/dev/null; sleep 0.3
  ip netns exec "$1" iperf3 -c "$3" -p 5299 -t "$T" -A 0 -J | python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))'
}

# Bare twin: two node namespaces on an underlay bridge, one pod each with a /32 and a link-local gateway, like weft routed.
bare_up() { # mode: vxlan|routes
  for n in ul n1 n2 p1 p2; do ip netns add "$bare-$n"; ip -n "$bare-$n" link set lo up; done
  ip -n "$bare-ul" link add br0 type bridge; ip -n "$bare-ul" link set br0 up
  for i in 1 2; do
    ip -n "$bare-ul" link add "n$i" type veth peer name eth0 netns "$bare-n$i"
    ip -n "$bare-ul" link set "n$i" master br0 up
    ip -n "$bare-n$i" addr add "198.51.100.$((10+i))/24" dev eth0; ip -n "$bare-n$i" link set eth0 up
    ip netns exec "$bare-n$i" sysctl -qw net.ipv4.ip_forward=1
    ip -n "$bare-n$i" link add "v$i" type veth peer name eth0 netns "$bare-p$i"
    ip -n "$bare-n$i" link set "v$i" address ee:ee:ee:ee:ee:ee up
    ip -n "$bare-p$i" addr add "10.99.$i.2/32" dev eth0; ip -n "$bare-p$i" link set eth0 mtu $([ "$1" = vxlan ] && echo 1450 || echo 1500) up
    ip -n "$bare-p$i" neigh add 169.254.1.1 lladdr ee:ee:ee:ee:ee:ee dev eth0 nud permanent
    ip -n "$bare-p$i" route add default via 169.254.1.1 dev eth0 onlink
    ip -n "$bare-n$i" route add "10.99.$i.2/32" dev "v$i" scope link
  done
  if [ "$1" = vxlan ]; then
    for i in 1 2; do
      j=$((3-i))
      ip -n "$bare-n$i" link add vx0 address "0e:00:00:00:00:0$i" type vxlan id 1 dstport 8472 local "198.51.100.$((10+i))" dev eth0 nolearning
      ip -n "$bare-n$i" link set vx0 mtu 1450 up
      ip -n "$bare-n$i" addr add "10.99.$i.0/32" dev vx0
      bridge -n "$bare-n$i" fdb append "0e:00:00:00:00:0$j" dev vx0 dst "198.51.100.$((10+j))"
      ip -n "$bare-n$i" neigh add "10.99.$j.0" lladdr "0e:00:00:00:00:0$j" dev vx0 nud permanent
      ip -n "$bare-n$i" route add "10.99.$j.0/24" via "10.99.$j.0" dev vx0 onlink
    done
  else
    ip -n "$bare-n1" route add 10.99.2.0/24 via 198.51.100.12
    ip -n "$bare-n2" route add 10.99.1.0/24 via 198.51.100.11
  fi
}
bare_down() { for n in ul n1 n2 p1 p2; do ip netns delete "$bare-$n" 2>/dev/null || true; done; }

