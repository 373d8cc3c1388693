using System.Net;
using System.Net.NetworkInformation;
using Weft.Model;
using Weft.Netlink;

namespace Weft.Agent.Backends;

/// <summary>This node as the backends see it: its underlay link and, for overlays, its tunnel endpoint.</summary>
public sealed record LocalNode(string Name, int UnderlayIndex, string UnderlayName, IPAddress UnderlayAddress, int UnderlayPrefix, int UnderlayMtu)
{
    public PhysicalAddress? VtepMac { get; init; }
    public IPAddress? VtepAddress { get; init; }
    public Cidr UnderlaySubnet => new(UnderlayAddress, UnderlayPrefix);
}

/// <summary>What one peer node needs in this node's kernel: routes to its blocks, and for overlays the neighbour and FDB entries.</summary>
public sealed record PeerProgram(IReadOnlyList<RouteSpec> Routes, IReadOnlyList<NeighbourEntry> Neighbours, IReadOnlyList<FdbTarget> Fdb)
{
    public static readonly PeerProgram Empty = new([], [], []);
}

public sealed record NeighbourEntry(IPAddress Address, PhysicalAddress Mac);

public sealed record FdbTarget(PhysicalAddress Mac, IPAddress Destination);

/// <summary>A peer this backend cannot reach (e.g. host-gw across subnets); the message says what to change.</summary>
public sealed class BackendException(string message) : Exception(message);

/// <summary>
/// How pod traffic crosses nodes (Flannel's idea: one small interface, chosen by configuration at start). A backend
/// prepares its device once and says what each peer needs; the shared reconciler diffs and applies it.
/// </summary>
public interface IBackend
{
    string Type { get; }

    /// <summary>Bytes of encapsulation per packet: pod MTU = underlay MTU - overhead.</summary>
    int Overhead { get; }

    /// <summary>Creates or adopts the backend's device. Idempotent, and never disturbs an existing healthy device.</summary>
    LocalNode Prepare(RtNetlink netlink, LocalNode me);

    /// <summary>The kernel entries that send traffic for the peer's blocks to the peer.</summary>
    PeerProgram ProgramFor(LocalNode me, NodeRecord peer, IReadOnlyList<Cidr> peerBlocks);

    /// <summary>The UDP port of the encapsulation between nodes (VXLAN), or null: such packets skip conntrack.</summary>
    int? TunnelPort { get; }

    /// <summary>The device whose neighbour and FDB entries this backend owns, if any.</summary>
    int OwnedDeviceIndex { get; }
}

public static class RouteProtocols
{
    /// <summary>Routes the agent owns (the plugin's host routes use 87): what a restart reads back and adopts.</summary>
    public const byte Agent = Ownership.AgentRouteProtocol;
}
