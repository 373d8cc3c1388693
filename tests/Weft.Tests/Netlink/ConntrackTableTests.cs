using System.Net;
using Weft.Netlink;
using Weft.Tests.Support;

namespace Weft.Tests.Netlink;

/// <summary>Our ctnetlink writer against the kernel's conntrack table of a throwaway namespace, read back with conntrack(8).</summary>
public sealed class ConntrackTableTests
{
    [Fact]
    public void Connections_go_in_established_once_each_and_a_second_handover_updates_them()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root");
        Assert.SkipUnless(File.Exists("/usr/sbin/conntrack"), "conntrack(8) reads the table back (apt-get install conntrack)");
        using var ns = new Netns("ct", withUnderlay: false);
        var path = "/var/run/netns/" + ns.Node;
        var tcp = new ConnectionTuple(IPAddress.Parse("10.9.0.1"), IPAddress.Parse("10.9.0.2"), 6, 40000, 8080);
        var tcpSeenBackwards = new ConnectionTuple(tcp.Destination, tcp.Source, 6, 8080, 40000); // the same connection
        var udp6 = new ConnectionTuple(IPAddress.Parse("fd00::1"), IPAddress.Parse("fd00::2"), 17, 5353, 53);
        var icmp = new ConnectionTuple(IPAddress.Parse("10.9.0.1"), IPAddress.Parse("10.9.0.2"), 1, 0, 0); // not TCP or UDP: skipped

        var n = NetNs.Run(path, () => ConntrackTable.InsertEstablished([tcp, tcpSeenBackwards, udp6, icmp], TimeSpan.FromHours(6), TimeSpan.FromSeconds(60)));
        Assert.Equal(2, n);
        var list = TestEnv.Sh($"ip netns exec {ns.Node} conntrack -L -o extended 2>/dev/null"); // both families
        var lines = list.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        var tcpLine = Assert.Single(lines, l => l.Contains("dport=8080", StringComparison.Ordinal));
        Assert.Contains("ESTABLISHED src=10.9.0.1 dst=10.9.0.2 sport=40000 dport=8080", tcpLine);
        Assert.Contains("[ASSURED]", tcpLine);
        Assert.Matches(@"tcp\s+6\s+2\d{4} ", tcpLine); // the 6 h timeout, not conntrack's 5 days
        var udpLine = Assert.Single(lines, l => l.Contains("dport=53", StringComparison.Ordinal));
        Assert.Contains("src=fd00::1 dst=fd00::2 sport=5353 dport=53", udpLine);

        // A second handover finds them there: updated, not duplicated, no error.
        Assert.Equal(2, NetNs.Run(path, () => ConntrackTable.InsertEstablished([tcp, udp6], TimeSpan.FromHours(1), TimeSpan.FromSeconds(60))));
        var again = TestEnv.Sh($"ip netns exec {ns.Node} conntrack -L 2>/dev/null").Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Matches(@"tcp\s+6\s+3[56]\d\d ", Assert.Single(again, l => l.Contains("dport=8080", StringComparison.Ordinal)));
    }
}
