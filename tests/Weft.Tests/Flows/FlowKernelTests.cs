using System.Net;
using System.Net.Sockets;
using Weft.Flows;
using Weft.Netlink;
using Weft.Tests.Support;

namespace Weft.Tests.Flows;

/// <summary>The kernel's NFLOG and conntrack event sockets, read by Weft's own decoders, in a throwaway namespace.</summary>
public sealed class FlowKernelTests
{
    private static string NsPath(string ns) => "/run/netns/" + ns;

    [Fact]
    public void Nflog_delivers_logged_packets_with_prefix_and_headers()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces");
        using var ns = new Netns("nflog", withUnderlay: false);
        TestEnv.Sh($"ip netns exec {ns.Node} nft -f - <<'EOF'\ntable inet t {{ chain out {{ type filter hook output priority 0; udp dport 9999 log group 7 prefix \"weft:XE:tok\" drop\n }}\n}}\nEOF");
        using var socket = NetNs.Run(NsPath(ns.Node), () => NflogSocket.Open(7, flushTimeout: TimeSpan.FromMilliseconds(10)));
        NetNs.Run(NsPath(ns.Node), () =>
        {
            using var udp = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
            udp.Bind(new IPEndPoint(IPAddress.Loopback, 4242));
            for (var i = 0; i < 500; i++)
                try { udp.SendTo(new byte[16], new IPEndPoint(IPAddress.Loopback, 9999)); }
                catch (SocketException) { } // EPERM: the drop itself
        });
        var got = new List<LoggedPacket>();
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (got.Count < 500 && DateTime.UtcNow < deadline) socket.Receive(got);
        Assert.Equal(500, got.Count);
        Assert.All(got, p =>
        {
            Assert.Equal("weft:XE:tok", p.Prefix);
            Assert.Equal((17, (ushort)4242, (ushort)9999, "127.0.0.1"), (p.Headers.Protocol, p.Headers.SourcePort, p.Headers.DestinationPort, p.Headers.Destination.ToString()));
        });
        Assert.Equal(0, socket.TakeLost());
    }

    [Fact]
    public void A_group_already_taken_in_the_namespace_is_a_clear_error()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces");
        using var ns = new Netns("nflog2", withUnderlay: false);
        using var first = NetNs.Run(NsPath(ns.Node), () => NflogSocket.Open(9));
        var e = Assert.Throws<NetlinkException>(() => NetNs.Run(NsPath(ns.Node), () => NflogSocket.Open(9)));
        Assert.Contains("NFLOG group 9", e.Message);
    }

    [Fact]
    public void Conntrack_reports_connection_ends_with_counters()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces");
        using var ns = new Netns("ct", withUnderlay: false);
        // Any ct expression turns connection tracking on in the namespace.
        TestEnv.Sh($"ip netns exec {ns.Node} nft -f - <<'EOF'\ntable inet t {{ chain out {{ type filter hook output priority 0; ct state new counter\n }}\n}}\nEOF");
        using var socket = NetNs.Run(NsPath(ns.Node), () =>
        {
            ConntrackEventSocket.EnableAccounting();
            return ConntrackEventSocket.Open();
        });
        NetNs.Run(NsPath(ns.Node), () =>
        {
            using var server = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
            server.Bind(new IPEndPoint(IPAddress.Loopback, 5353));
            using var client = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
            client.Bind(new IPEndPoint(IPAddress.Loopback, 4343));
            for (var i = 0; i < 3; i++) client.SendTo(new byte[100], new IPEndPoint(IPAddress.Loopback, 5353));
        });
        TestEnv.Sh($"ip netns exec {ns.Node} conntrack -D -p udp --dport 5353");
        var got = new List<ConntrackEnd>();
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (!got.Any(e => e.DestinationPort == 5353) && DateTime.UtcNow < deadline) socket.Receive(got);
        var end = got.Single(e => e.DestinationPort == 5353);
        Assert.Equal((17, (ushort)4343, "127.0.0.1"), (end.Protocol, end.SourcePort, end.Source.ToString()));
        Assert.Equal(3UL, end.Packets);
        Assert.Equal(3UL * 128, end.Bytes); // 100 bytes of payload + 8 UDP + 20 IP
    }
}
