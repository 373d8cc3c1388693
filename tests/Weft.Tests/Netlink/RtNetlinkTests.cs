using System.Net;
using System.Net.NetworkInformation;
using System.Net.Sockets;
using Weft.Netlink;
using Weft.Tests.Support;

namespace Weft.Tests.Netlink;

/// <summary>Our rtnetlink client against the real kernel, always inside throwaway namespaces.</summary>
public sealed class RtNetlinkTests : IDisposable
{
    private readonly Netns? _ns;
    private readonly string _a = "", _b = "";

    public RtNetlinkTests()
    {
        if (!TestEnv.IsRoot) return;
        _ns = new Netns("nl", withUnderlay: false);
        _a = "/var/run/netns/" + _ns.Node;
        _b = _ns.Pod("b").Path;
    }

    public void Dispose() => _ns?.Dispose();

    private static string NsInode() => File.ResolveLinkTarget("/proc/thread-self/ns/net", false)?.ToString() ?? "";

    [Fact]
    public void Veth_into_another_namespace_with_addresses_routes_and_neighbours()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root");
        using var a = RtNetlink.OpenIn(_a);
        using var b = RtNetlink.OpenIn(_b);
        var mac = PhysicalAddress.Parse("EE-EE-EE-EE-EE-EE");
        LinkInfo host;
        using (var fd = NetNs.Open(_b))
            host = a.CreateVeth("vtest0", "eth0", fd, 1400, mac, PhysicalAddress.Parse("0A-58-0A-00-00-05"));
        Assert.Equal(1400, host.Mtu);
        Assert.Equal("veth", host.Kind);
        Assert.Equal(mac, host.Mac);
        var peer = b.GetLink("eth0")!;
        Assert.Equal("0A580A000005", peer.Mac!.ToString());
        Assert.Null(a.GetLink("eth0"));

        a.SetUp(host.Index);
        b.SetUp(peer.Index);
        b.AddAddress(peer.Index, IPAddress.Parse("10.1.0.5"), 32, noDad: true);
        b.AddAddress(peer.Index, IPAddress.Parse("10.1.0.5"), 32, noDad: true); // EEXIST tolerated
        b.AddAddress(peer.Index, IPAddress.Parse("fd00::5"), 128, noDad: true);
        var addrs = b.ListAddresses(peer.Index);
        Assert.Contains(addrs, x => x.Address.Equals(IPAddress.Parse("10.1.0.5")) && x.PrefixLength == 32);
        Assert.Contains(addrs, x => x.Address.Equals(IPAddress.Parse("fd00::5")) && x.PrefixLength == 128);

        var gw = IPAddress.Parse("169.254.1.1");
        b.ReplaceNeighbour(peer.Index, gw, mac);
        b.ReplaceRoute(new RouteSpec(IPAddress.Any, 0) { Gateway = gw, OutputIndex = peer.Index, OnLink = true });
        var def = Assert.Single(b.ListRoutes(AddressFamily.InterNetwork), r => r.PrefixLength == 0);
        Assert.Equal(gw, def.Gateway);
        Assert.True(def.OnLink);
        Assert.Contains(b.ListNeighbours(peer.Index, AddressFamily.InterNetwork), n => n.Address.Equals(gw) && n.State == NeighbourState.Permanent);
        Assert.Contains("169.254.1.1 dev eth0 lladdr ee:ee:ee:ee:ee:ee PERMANENT", TestEnv.Sh($"ip -n {Path.GetFileName(_b)} neigh"));

        a.ReplaceRoute(new RouteSpec(IPAddress.Parse("10.1.0.5"), 32) { OutputIndex = host.Index, Scope = RouteScope.Link, Protocol = 87 });
        Assert.Contains("10.1.0.5 dev vtest0 proto 87 scope link", TestEnv.Sh($"ip -n {_ns!.Node} route"));
        TestEnv.Sh($"ip -n {_ns.Node} addr add 198.51.100.99/32 dev lo"); // a source address for the node's ping
        TestEnv.Sh($"ip netns exec {_ns.Node} ping -c 1 -W 2 10.1.0.5");
        Assert.True(a.DeleteRoute(new RouteSpec(IPAddress.Parse("10.1.0.5"), 32) { OutputIndex = host.Index }));
        Assert.False(a.DeleteRoute(new RouteSpec(IPAddress.Parse("10.1.0.5"), 32) { OutputIndex = host.Index }));

        Assert.True(a.DeleteLink("vtest0"));
        Assert.False(a.DeleteLink("vtest0"));
        Assert.Null(b.GetLink("eth0")); // the peer went with it
    }

    [Fact]
    public void Bridge_master_and_vxlan_with_static_fdb()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root");
        using var a = RtNetlink.OpenIn(_a);
        var br = a.CreateBridge("brtest0", 1500, null);
        Assert.Equal("bridge", br.Kind);
        var v = a.CreateVeth("vbr0", "vbr0p", null, 1500, null, null);
        a.SetMaster(v.Index, br.Index);
        Assert.Equal(br.Index, a.GetLink("vbr0")!.MasterIndex);

        var vx = a.CreateVxlan(new VxlanSpec("weftvx0", 4096, 4789, IPAddress.Parse("198.51.100.10"), 0, 1450, PhysicalAddress.Parse("02-00-00-00-00-01")));
        Assert.Equal("vxlan", vx.Kind);
        var details = TestEnv.Sh($"ip -d -n {_ns!.Node} link show weftvx0");
        Assert.Contains("vxlan id 4096", details);
        Assert.Contains("dstport 4789", details);
        Assert.Contains("nolearning", details);
        var peerMac = PhysicalAddress.Parse("02-00-00-00-00-02");
        a.AppendFdb(vx.Index, peerMac, IPAddress.Parse("198.51.100.11"));
        a.AppendFdb(vx.Index, peerMac, IPAddress.Parse("198.51.100.11")); // idempotent
        Assert.Contains(a.ListFdb(vx.Index), f => f.Mac.Equals(peerMac) && IPAddress.Parse("198.51.100.11").Equals(f.Destination));
        Assert.True(a.DeleteFdb(vx.Index, peerMac, IPAddress.Parse("198.51.100.11")));
        Assert.DoesNotContain(a.ListFdb(vx.Index), f => f.Mac.Equals(peerMac));
    }

    [Fact]
    public void Kernel_errors_carry_errno_and_operation()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root");
        using var a = RtNetlink.OpenIn(_a);
        a.CreateBridge("dup0", 1500, null);
        var e = Assert.Throws<NetlinkException>(() => a.CreateBridge("dup0", 1500, null));
        Assert.Equal(17, e.Errno);
        Assert.Contains("create bridge dup0", e.Message);
        Assert.Contains("EEXIST", e.Message);
        Assert.Null(a.GetLink("no-such-link"));
        Assert.Null(a.GetLink(999_999));
    }

    [Fact]
    public void Running_in_a_namespace_leaves_the_calling_thread_where_it_was()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root");
        var before = NsInode();
        var inside = NetNs.Run(_b, NsInode);
        Assert.NotEqual(before, inside);
        Assert.Equal(before, NsInode());
        Assert.Throws<IOException>(() => NetNs.Run("/var/run/netns/does-not-exist-weft", () => 1));
        Assert.Throws<InvalidOperationException>(() => NetNs.Run(_b, () => throw new InvalidOperationException("boom")));
        Assert.Equal(before, NsInode());
        Assert.False(NetNs.Exists("/etc/hostname"));
        Assert.True(NetNs.Exists(_b));
    }
}
