using System.Net;
using Weft.Model;

namespace Weft.Agent.Backends;

/// <summary>How one block's traffic reaches its node: through this node's overlay device, or routed directly.</summary>
public enum BlockPath { Overlay, Direct }

/// <summary>
/// Calico's per-pool encapsulation (vxlanMode/ipipMode, or the operator's `encapsulation`), decided per peer:
/// Always encapsulates, CrossSubnet only towards a peer on another subnet, Never routes directly. Pure: the route
/// reconciler asks it for each block and groups the blocks by path.
/// </summary>
public static class PoolEncapsulation
{
    /// <summary>The path for a pool's blocks to a peer, and a warning when the pool asks for what this node cannot do.</summary>
    public static (BlockPath Path, string? Warning) For(IPPool? pool, string backendType, bool peerOnSubnet, string peerName)
    {
        var hasOverlay = backendType == "vxlan";
        if (pool is null) return (hasOverlay ? BlockPath.Overlay : BlockPath.Direct, null);
        var (vxlan, ipip) = (pool.VxlanMode, pool.IpipMode);
        var wantsOverlay = vxlan == "Always" || ipip == "Always" || (!peerOnSubnet && (vxlan == "CrossSubnet" || ipip == "CrossSubnet"));
        string? warning = null;
        if (wantsOverlay && ipip != "Never")
            warning = $"IPPool {pool.Name} asks for IPIP ({ipip}); Weft carries IPIP pools over " +
                      (hasOverlay ? "VXLAN" : "direct routes (no overlay on this node: start agents with --backend vxlan)");
        if (wantsOverlay && !hasOverlay)
            return (BlockPath.Direct, warning ?? $"IPPool {pool.Name} asks for VXLAN ({vxlan}) to {peerName}, but this agent runs {backendType}: routing directly (start agents with --backend vxlan)");
        if (!wantsOverlay && !peerOnSubnet)
            // Calico leaves an unencapsulated off-subnet route to the fabric (BGP); without one, the overlay is the only way there.
            return hasOverlay
                ? (BlockPath.Overlay, $"IPPool {pool.Name} has no encapsulation, but {peerName} is on another subnet: carried over VXLAN")
                : (BlockPath.Direct, null); // host-gw reports the unreachable peer itself
        return (wantsOverlay ? BlockPath.Overlay : BlockPath.Direct, warning);
    }

    /// <summary>The pool a block or a borrowed address belongs to.</summary>
    public static IPPool? PoolOf(Cidr block, IReadOnlyList<IPPool> pools, string? poolName) =>
        pools.FirstOrDefault(p => p.Name == poolName) ?? pools.FirstOrDefault(p => p.Network.Contains(block.NetworkAddress));

    public static bool OnSubnet(LocalNode me, NodeRecord peer) =>
        peer.UnderlayAddress is not null && IPAddress.TryParse(peer.UnderlayAddress.Split('/')[0], out var ip) && me.UnderlaySubnet.Contains(ip);
}
