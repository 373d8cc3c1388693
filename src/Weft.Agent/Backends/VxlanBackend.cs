using System.Net;
using System.Net.NetworkInformation;
using Weft.Model;
using Weft.Netlink;

namespace Weft.Agent.Backends;

// Design notes (as Flannel's vxlan backend learned): one VXLAN device per node, learning off, and every remote
// VTEP programmed statically: an FDB entry (peer VTEP MAC -> peer underlay IP), a permanent neighbour (peer VTEP
// IP -> peer VTEP MAC), and an on-link route per peer block via the peer's VTEP IP. No multicast, no miss
// callbacks: the datastore already knows every peer. The device is created with its final MAC (changing a MAC
// flushes neighbours), and the MAC is derived from the node name so a restart recreates the same one.
public sealed class VxlanBackend(int vni, int port) : IBackend
{
    public const string DeviceName = Ownership.VxlanDevice;
    public string Type => "vxlan";
    public int Overhead => 50;
    public int Port => port;
    public int? TunnelPort => port;
    public int OwnedDeviceIndex { get; private set; }

    public LocalNode Prepare(RtNetlink netlink, LocalNode me)
    {
        var mac = me.VtepMac ?? throw new InvalidOperationException("VXLAN needs the node's VTEP MAC");
        var mtu = me.UnderlayMtu - Overhead;
        var dev = netlink.GetLink(DeviceName);
        if (dev is not null && (dev.Kind != "vxlan" || !mac.Equals(dev.Mac)))
        {
            netlink.DeleteLink(dev.Index); // a device from another configuration: replace it
            dev = null;
        }
        dev ??= netlink.CreateVxlan(new VxlanSpec(DeviceName, vni, port, me.UnderlayAddress, me.UnderlayIndex, mtu, mac));
        if (dev.Mtu != mtu) netlink.SetMtu(dev.Index, mtu);
        if (me.VtepAddress is { } vtep) netlink.AddAddress(dev.Index, vtep, 32, noDad: true);
        if (!dev.IsUp) netlink.SetUp(dev.Index);
        OwnedDeviceIndex = dev.Index;
        return me;
    }

    public PeerProgram ProgramFor(LocalNode me, NodeRecord peer, IReadOnlyList<Cidr> peerBlocks)
    {
        if (peer.VtepMac is null || peer.VtepAddress is null || peer.UnderlayAddress is null)
            throw new BackendException($"node {peer.Name} has not published its VXLAN endpoint yet (is its agent running with backend vxlan?)");
        var vtepIp = IPAddress.Parse(peer.VtepAddress);
        var vtepMac = PhysicalAddress.Parse(peer.VtepMac.Replace(':', '-').ToUpperInvariant());
        var underlayIp = IPAddress.Parse(peer.UnderlayAddress.Split('/')[0]);
        var routes = peerBlocks.Where(b => b.IsIPv4).Select(b => new RouteSpec(b.NetworkAddress, b.PrefixLength)
        {
            Gateway = vtepIp, OutputIndex = OwnedDeviceIndex, OnLink = true, Protocol = RouteProtocols.Agent,
        }).ToList();
        return new PeerProgram(routes, [new NeighbourEntry(vtepIp, vtepMac)], [new FdbTarget(vtepMac, underlayIp)]);
    }
}
