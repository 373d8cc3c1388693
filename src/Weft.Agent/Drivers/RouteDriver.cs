using System.Net;
using System.Net.Sockets;
using Weft.Agent.Backends;
using Weft.Agent.Calculators;
using Weft.Netlink;

namespace Weft.Agent.Drivers;

/// <summary>Puts a node's desired routing state into the kernel: only the difference, never a gap.</summary>
public interface IRouteDriver
{
    /// <summary>Makes Weft's routes, neighbours and FDB entries exactly <paramref name="desired"/>; returns what changed.</summary>
    Delta<RouteSpec> Apply(RouteState desired);
}

/// <summary>
/// Over our rtnetlink client. Owned entries are routes with the agent's protocol and permanent neighbours and FDB
/// entries on the backend's own device, so a restarted agent reads back what it applied and adopts it.
/// Order: new routes, then neighbours and FDB (a moved block never points at a missing VTEP), then stale routes.
/// </summary>
public sealed class NetlinkRouteDriver(Func<int> ownedDevice) : IRouteDriver
{
    private sealed record Key(IPAddress Destination, int PrefixLength, IPAddress? Gateway, int OutputIndex, byte Type);

    private static Key KeyOf(RouteSpec r) => new(r.Destination, r.PrefixLength, r.Gateway, r.OutputIndex, r.Type);

    public Delta<RouteSpec> Apply(RouteState desired)
    {
        using var nl = RtNetlink.Open();
        var applied = nl.ListRoutes(AddressFamily.InterNetwork).Where(r => r.Protocol == RouteProtocols.Agent)
            .Select(h => new RouteSpec(h.Destination, h.PrefixLength)
            {
                Gateway = h.Gateway, OutputIndex = h.OutputIndex, Protocol = RouteProtocols.Agent, Type = h.Type,
                Priority = h.Type == RouteTypes.Blackhole ? 1024 : 0,
            });
        var routes = Delta.Compute(desired.AllRoutes, applied, KeyOf);
        foreach (var r in routes.Upserts) nl.ReplaceRoute(r);
        if (ownedDevice() is var dev and > 0)
        {
            var neighbours = Delta.Compute(desired.Programs.SelectMany(p => p.Neighbours),
                nl.ListNeighbours(dev, AddressFamily.InterNetwork).Where(n => n.State == NeighbourState.Permanent && n.Mac is not null)
                    .Select(n => new NeighbourEntry(n.Address, n.Mac!)),
                n => n.Address, EqualityComparer<NeighbourEntry>.Create((a, b) => a!.Mac.Equals(b!.Mac), n => n.Address.GetHashCode()));
            foreach (var n in neighbours.Upserts) nl.ReplaceNeighbour(dev, n.Address, n.Mac);
            foreach (var n in neighbours.Removals) nl.DeleteNeighbour(dev, n.Address);
            var fdb = Delta.Compute(desired.Programs.SelectMany(p => p.Fdb),
                nl.ListFdb(dev).Where(f => f.Destination is not null).Select(f => new FdbTarget(f.Mac, f.Destination!)),
                f => (f.Mac.ToString(), f.Destination));
            foreach (var f in fdb.Upserts) nl.AppendFdb(dev, f.Mac, f.Destination);
            foreach (var f in fdb.Removals) nl.DeleteFdb(dev, f.Mac, f.Destination);
        }
        foreach (var r in routes.Removals) nl.DeleteRoute(r);
        return routes;
    }
}
