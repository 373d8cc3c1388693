using System.Net;
using Weft.Model;
using Weft.Netlink;

namespace Weft.Agent.Backends;

/// <summary>host-gw: a route per peer block via the peer's underlay address. Needs every node on one L2 segment.</summary>
public sealed class HostGwBackend : IBackend
{
    public string Type => "host-gw";
    public int Overhead => 0;
    public int OwnedDeviceIndex => 0;
    public int? TunnelPort => null;

    public LocalNode Prepare(RtNetlink netlink, LocalNode me)
    {
        // A VXLAN device left from an earlier vxlan configuration would keep stale routes alive: remove it.
        netlink.DeleteLink(VxlanBackend.DeviceName);
        return me;
    }

    public PeerProgram ProgramFor(LocalNode me, NodeRecord peer, IReadOnlyList<Cidr> peerBlocks) => Direct(me, peer, peerBlocks);

    /// <summary>Routes via the peer's underlay address; also what a vxlan node uses for pools without encapsulation.</summary>
    public static PeerProgram Direct(LocalNode me, NodeRecord peer, IReadOnlyList<Cidr> peerBlocks)
    {
        if (peer.UnderlayAddress is null) throw new BackendException($"node {peer.Name} has not published its underlay address");
        var ip = IPAddress.Parse(peer.UnderlayAddress.Split('/')[0]);
        if (!me.UnderlaySubnet.Contains(ip))
            throw new BackendException($"node {peer.Name} ({ip}) is not on this node's L2 segment {me.UnderlaySubnet}: host-gw routes only to directly attached nodes; use the vxlan backend");
        var routes = peerBlocks.Where(b => b.Family == ip.AddressFamily).Select(b => new RouteSpec(b.NetworkAddress, b.PrefixLength)
        {
            Gateway = ip, OutputIndex = me.UnderlayIndex, Protocol = RouteProtocols.Agent,
        }).ToList();
        return new PeerProgram(routes, [], []);
    }
}
