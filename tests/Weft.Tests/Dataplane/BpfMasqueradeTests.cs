using Microsoft.Extensions.Logging.Abstractions;
using Weft.Agent.Calculators;
using Weft.Agent.Config;
using Weft.Agent.Bpf;
using Weft.Bpf;
using Weft.Model;
using Weft.Netlink;
using Weft.Tests.Support;

namespace Weft.Tests.Dataplane;

/// <summary>
/// The BPF masquerade on a real uplink in throwaway namespaces: pod (10.244.0.2) → node → gateway, where the gateway
/// has no route back to pod addresses, so only a translated flow gets an answer.
/// </summary>
public sealed class BpfMasqueradeTests
{
    [Theory]
    [InlineData(new[] { "--masquerade", "iptables" }, "masquerade 'iptables' is unknown; use auto, bpf or nftables")]
    [InlineData(new[] { "--bpf-pin-dir", "weft" }, "BPF pin directory 'weft' must be an absolute path")]
    [InlineData(new[] { "--masquerade" }, "--masquerade needs a value")]
    public void Agent_refuses_bad_masquerade_settings(string[] args, string message) =>
        Assert.Equal(message, Assert.Throws<ArgumentException>(() => AgentOptions.Parse(args)).Message);

    [Fact]
    public void Agent_masquerade_defaults_to_auto_with_state_under_sys_fs_bpf()
    {
        var o = AgentOptions.Parse([]);
        Assert.Equal(("auto", "/sys/fs/bpf/weft"), (o.Masquerade, o.BpfPinDir));
    }

    [Fact]
    public void Translates_udp_for_natOutgoing_pools_only_keeps_ports_across_a_reload_and_leaves_nothing_when_removed()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces and BPF");
        using var ns = new Netns("bpfmasq");
        var gw = ns.Prefix + "-gw";
        var (pod, _) = ns.Pod("pod");
        TestEnv.Sh($"ip -n {ns.Node} link add vpod type veth peer name eth0 netns {pod} && ip -n {ns.Node} addr add 10.244.0.1/24 dev vpod && " +
                   $"ip -n {ns.Node} link set vpod up && ip -n {pod} addr add 10.244.0.2/24 dev eth0 && ip -n {pod} link set eth0 up && " +
                   $"ip -n {pod} route add default via 10.244.0.1 && ip netns exec {ns.Node} sysctl -qw net.ipv4.ip_forward=1");
        var bpffs = TestEnv.TempDir("bpffs");
        BpfFs.Mount(bpffs);
        try
        {
            var pins = Path.Combine(bpffs, "node");
            var uplink = NetNs.Run("/var/run/netns/" + ns.Node, () => { using var nl = RtNetlink.Open(); return nl.ListLinks().Single(l => l.Name == "eth0").Index; });
            IPPool[] Pools(bool nat) => [new IPPool { Name = "p", Cidr = "10.244.0.0/16", BlockSize = 26, NatOutgoing = nat }];
            BpfMasquerade Load() => NetNs.Run("/var/run/netns/" + ns.Node, () => BpfMasquerade.Load(uplink, System.Net.IPAddress.Parse(ns.NodeAddress), pins, NullLogger.Instance));
            void Apply(BpfMasquerade m, bool nat) => NetNs.Run("/var/run/netns/" + ns.Node, () => m.Apply(NatPools.From(Pools(nat))));
            using var echo = UdpPeerEcho.Start(gw, "198.51.100.1");
            string Ask(int sourcePort) => TestEnv.TrySh($"echo hi | ip netns exec {pod} nc -u -w 1 -p {sourcePort} 198.51.100.1 {echo.Port}").Stdout.Trim();

            string first;
            using (var masq = Load())
            {
                Apply(masq, nat: true);
                first = Ask(5000);
                Assert.StartsWith("peer=198.51.100.10:", first);
                Assert.True(int.Parse(first.Split(':')[1], System.Globalization.CultureInfo.InvariantCulture) >= 61000, first);
                // 3000 bytes each way: fragments out follow their first fragment's translation, and so do the reply's.
                var big = TestEnv.TrySh($"ip netns exec {pod} python3 -c \"import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); " +
                                        $"s.settimeout(2); s.sendto(b'x'*3000, ('198.51.100.1', {echo.Port})); d=s.recv(65536); print(len(d), d.split(b'\\n')[0].decode())\"").Stdout.Trim();
                Assert.Matches(@"^3000 peer=198\.51\.100\.10:6\d{4}$", big);
                // The node's own sockets never pick a port the masquerade hands out.
                Assert.Contains(BpfMasquerade.NatPorts, TestEnv.Sh($"ip netns exec {ns.Node} cat /proc/sys/net/ipv4/ip_local_reserved_ports"));
                Apply(masq, nat: false);
                Assert.DoesNotContain("weft_masq", TestEnv.Sh($"ip netns exec {ns.Node} tc filter show dev eth0 egress"));
                Assert.Equal("", Ask(5001)); // untranslated: the gateway has no way back
                Apply(masq, nat: true);
                // Drift: filters deleted by hand come back with the next reconcile.
                TestEnv.Sh($"ip netns exec {ns.Node} tc filter del dev eth0 egress");
                Apply(masq, nat: true);
                Assert.Contains("weft_masq_egres", TestEnv.Sh($"ip netns exec {ns.Node} tc filter show dev eth0 egress"));
            }
            // A new agent's load reuses the pinned state: the same flow keeps its node port.
            using (var again = Load())
            {
                Apply(again, nat: true);
                Assert.Equal(first, Ask(5000));
            }
            NetNs.Run("/var/run/netns/" + ns.Node, () => BpfMasquerade.Remove(uplink, pins));
            Assert.DoesNotContain("weft_masq", TestEnv.Sh($"ip netns exec {ns.Node} tc filter show dev eth0 egress") + TestEnv.Sh($"ip netns exec {ns.Node} tc filter show dev eth0 ingress"));
            Assert.Empty(Directory.GetFiles(pins));
        }
        finally
        {
            BpfFs.Unmount(bpffs);
            Directory.Delete(bpffs, true);
        }
    }
}
