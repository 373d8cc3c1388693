using System.Net;
using System.Net.Sockets;
using Weft.Agent.Backends;
using Weft.Agent.Reconcile;
using Weft.Model;
using Weft.Netlink;

namespace Weft.Agent.Calculators;

/// <summary>What this node's kernel should hold for routing: per peer what its backend needs, and our own blackholes.</summary>
public sealed record RouteState(IReadOnlyList<PeerProgram> Programs, IReadOnlyList<RouteSpec> Blackholes, IReadOnlyList<PeerStatus> Peers, IReadOnlyList<string> Warnings)
{
    public IEnumerable<RouteSpec> AllRoutes => Programs.SelectMany(p => p.Routes).Concat(Blackholes);
}

/// <summary>
/// Pure: the typed model (nodes, blocks, endpoints, pools) to the desired routing state of one node. No kernel, no
/// datastore; the same input always gives the same output, whatever order the input arrived in.
/// </summary>
public static class RouteCalculator
{
    public static RouteState Compute(IBackend backend, LocalNode me, IReadOnlyList<NodeRecord> nodes, IReadOnlyList<AllocationBlock> blocks,
        IReadOnlyList<WorkloadEndpoint> endpoints, IReadOnlyList<IPPool> pools)
    {
        var peers = new List<PeerStatus>();
        var programs = new List<PeerProgram>();
        var warnings = new SortedSet<string>(StringComparer.Ordinal);
        foreach (var peer in nodes.Where(n => n.Name != me.Name).OrderBy(n => n.Name, StringComparer.Ordinal))
        {
            var peerBlocks = blocks.Where(b => b.Affinity == peer.Name).OrderBy(b => b.Cidr, StringComparer.Ordinal).ToList();
            // A peer's pod whose address came from a block affine to another node (borrowed, or pinned with
            // cni.projectcalico.org/ipAddrs) needs its own host route, as Calico programs for borrowed IPs.
            var blockRoutes = peerBlocks.Select(b => (Cidr: b.Network, Pool: b.Pool)).ToList();
            foreach (var ep in endpoints.Where(e => e.Node == peer.Name))
                foreach (var a in ep.Addresses)
                    if (IPAddress.TryParse(a.Split('/')[0], out var ip) && ip.AddressFamily == AddressFamily.InterNetwork &&
                        !peerBlocks.Any(b => b.Network.Contains(ip)))
                        blockRoutes.Add((Cidr.Host(ip), blocks.Where(b => b.Network.Contains(ip)).Select(b => b.Pool).FirstOrDefault() ?? ""));
            // One route per prefix, in a stable order: the endpoints' order (or two endpoints claiming one address
            // during a move) must not change the desired state.
            blockRoutes = [.. blockRoutes.DistinctBy(r => r.Cidr).OrderBy(r => r.Cidr.ToString(), StringComparer.Ordinal)];
            try
            {
                // Each pool's encapsulation decides, per peer, whether its blocks go through the overlay or direct.
                var onSubnet = PoolEncapsulation.OnSubnet(me, peer);
                var overlay = new List<Cidr>();
                var direct = new List<Cidr>();
                foreach (var (cidr, poolName) in blockRoutes)
                {
                    var (path, warning) = PoolEncapsulation.For(PoolEncapsulation.PoolOf(cidr, pools, poolName), backend.Type, onSubnet, peer.Name);
                    if (warning is not null) warnings.Add(warning);
                    (path == BlockPath.Overlay ? overlay : direct).Add(cidr);
                }
                // Without an overlay PoolEncapsulation routes every block directly, so overlay is empty then.
                var program = backend.ProgramFor(me, peer, overlay);
                if (direct.Count > 0)
                    program = program with { Routes = [.. program.Routes, .. HostGwBackend.Direct(me, peer, direct).Routes] };
                programs.Add(program);
                peers.Add(new PeerStatus(peer.Name, peer.UnderlayAddress, peerBlocks.Count, "programmed", null));
            }
            catch (BackendException e)
            {
                peers.Add(new PeerStatus(peer.Name, peer.UnderlayAddress, peerBlocks.Count, "unreachable", e.Message));
            }
        }
        // This node's own blocks end in a blackhole (as Calico programs): an address of ours with no pod behind
        // it must not follow the default route out of the node. Pods' /32 routes are more specific; the high
        // metric keeps a bridge's connected route of the same prefix (bridge mode) in charge.
        var own = blocks.Where(b => b.Affinity == me.Name && b.Network.IsIPv4).OrderBy(b => b.Cidr, StringComparer.Ordinal)
            .Select(b => new RouteSpec(b.Network.NetworkAddress, b.Network.PrefixLength) { Type = RouteTypes.Blackhole, Priority = 1024, Protocol = RouteProtocols.Agent })
            .ToList();
        return new RouteState(programs, own, peers, [.. warnings]);
    }
}
