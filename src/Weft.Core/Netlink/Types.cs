using System.Net;
using System.Net.NetworkInformation;
using System.Net.Sockets;

namespace Weft.Netlink;

public sealed record LinkInfo(int Index, string Name, string? Kind, int Mtu, PhysicalAddress? Mac, bool IsUp, int MasterIndex, int PeerIndex, int? LinkNetnsId);

public sealed record AddressInfo(int Index, IPAddress Address, int PrefixLength, byte Scope, uint Flags);

public enum RouteScope : byte { Universe = 0, Link = 253, Host = 254 }

public enum NeighbourState : ushort { Reachable = 0x02, Stale = 0x04, NoArp = 0x40, Permanent = 0x80 }

/// <summary>A route to install or delete.</summary>
public sealed record RouteSpec(IPAddress Destination, int PrefixLength)
{
    public IPAddress? Gateway { get; init; }
    public int OutputIndex { get; init; }
    public RouteScope Scope { get; init; } = RouteScope.Universe;
    public bool OnLink { get; init; }
    public int Table { get; init; } = 254;
    public byte Protocol { get; init; } = 4; // RTPROT_STATIC
    public int Priority { get; init; }
    public IPAddress? PreferredSource { get; init; }
    /// <summary>rtm_type: 1 unicast (default), 6 blackhole (drop silently), 7 unreachable.</summary>
    public byte Type { get; init; } = RouteTypes.Unicast;
    public AddressFamily Family => Destination.AddressFamily;
}

/// <summary>A route as read back from the kernel.</summary>
public static class RouteTypes
{
    public const byte Unicast = 1, Blackhole = 6, Unreachable = 7;
}

public sealed record RouteInfo(IPAddress Destination, int PrefixLength, IPAddress? Gateway, int OutputIndex, RouteScope Scope, int Table, byte Protocol, byte Type, bool OnLink);

public sealed record NeighbourInfo(int Index, IPAddress Address, PhysicalAddress? Mac, NeighbourState State);

public sealed record FdbEntry(PhysicalAddress Mac, IPAddress? Destination);

public sealed record VxlanSpec(string Name, int Vni, int Port, IPAddress? Local, int UnderlayIndex, int Mtu, PhysicalAddress? Mac)
{
    public bool Learning { get; init; }
}
