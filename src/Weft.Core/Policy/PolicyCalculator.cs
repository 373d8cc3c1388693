using System.Net;
using System.Net.Sockets;
using Weft.Model;
using Weft.Policy.Ir;

namespace Weft.Policy;

/// <summary>The policies that apply to one endpoint in one direction, grouped by tier in tier order.</summary>
public sealed record TieredPolicies(Direction Direction, IReadOnlyList<(string Tier, IReadOnlyList<PolicyIr> Policies)> Tiers)
{
    /// <summary>No policy selects the endpoint in this direction: the namespace profile allows.</summary>
    public bool IsEmpty => Tiers.Count == 0;

    /// <summary>Equal exactly when two endpoints are decided by the same policies: dataplanes share one program per key.</summary>
    public string Key => (Direction == Direction.Egress ? "eg|" : "in|") +
                         string.Join("|", Tiers.Select(t => t.Tier + ":" + string.Join(",", t.Policies.Select(p => p.Id))));
}

/// <summary>
/// Pure policy calculation shared by the evaluator (simulate, trace, the tests' oracle) and every dataplane compiler:
/// tiers in order, and in each tier the policies that select the endpoint, by (order, name) as the set holds them.
/// </summary>
public static class PolicyCalculator
{
    public static TieredPolicies Applicable(PolicySet policies, PolicyWorld world, EndpointInfo endpoint, Direction direction)
    {
        var tiers = new List<(string, IReadOnlyList<PolicyIr>)>();
        foreach (var tier in policies.TierOrder)
        {
            var applicable = policies.InTier(tier).Where(p => p.AppliesTo(direction) && world.Applies(p, endpoint)).ToList();
            if (applicable.Count > 0) tiers.Add((tier, applicable));
        }
        return new TieredPolicies(direction, tiers);
    }

    /// <summary>
    /// A peer's selector parts resolved to addresses of one family: every endpoint in the cluster the peer's
    /// namespace, namespaceSelector and selector pick, or with <paramref name="negated"/> every endpoint its
    /// notSelector picks. Sorted and distinct, so equal worlds give equal sets whatever order endpoints came in.
    /// </summary>
    public static IReadOnlyList<IPAddress> SelectorAddresses(PolicyWorld world, PeerMatch peer, AddressFamily family, bool negated = false)
    {
        var positive = peer with { NotSelector = null };
        var addresses = new SortedSet<IPAddress>(AddressOrder);
        foreach (var ep in world.Endpoints)
        {
            var hit = negated ? peer.NotSelector!.Matches(world.LabelsOf(ep)) : world.MatchesEndpointParts(positive, ep);
            if (hit) addresses.UnionWith(ep.Addresses.Where(a => a.AddressFamily == family));
        }
        return [.. addresses];
    }

    /// <summary>Every endpoint address of one family with a container port of this name (and protocol, when given), with that port.</summary>
    public static IReadOnlyList<(IPAddress Address, int Port)> NamedPortAddresses(PolicyWorld world, string portName, int? protocol, AddressFamily family)
    {
        var pairs = new SortedSet<(IPAddress Address, int Port)>(Comparer<(IPAddress Address, int Port)>.Create((x, y) =>
            AddressOrder.Compare(x.Address, y.Address) is var c && c != 0 ? c : x.Port.CompareTo(y.Port)));
        foreach (var ep in world.Endpoints)
            foreach (var port in ep.Ports.Where(p => p.Name == portName && (protocol is null || p.Protocol == protocol)))
                foreach (var a in ep.Addresses.Where(a => a.AddressFamily == family)) pairs.Add((a, port.Port));
        return [.. pairs];
    }

    /// <summary>Addresses in Cidr's order (family, then address).</summary>
    private static readonly IComparer<IPAddress> AddressOrder = Comparer<IPAddress>.Create((x, y) => Cidr.Host(x).CompareTo(Cidr.Host(y)));
}
