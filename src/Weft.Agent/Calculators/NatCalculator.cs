using Weft.Model;

namespace Weft.Agent.Calculators;

/// <summary>
/// What natOutgoing works from, whichever dataplane masquerades: the enabled IPv4 pools that masquerade, and every
/// enabled IPv4 pool (destinations inside the cluster are never translated). Ordered, so equal sets compare equal.
/// </summary>
public sealed record NatPools(IReadOnlyList<Cidr> Masquerading, IReadOnlyList<Cidr> Cluster)
{
    public static NatPools From(IEnumerable<IPPool> pools)
    {
        var v4 = pools.Where(p => p.Network.IsIPv4 && !p.Disabled).ToList();
        return new(v4.Where(p => p.NatOutgoing).Select(p => p.Network).Order().ToList(), v4.Select(p => p.Network).Order().ToList());
    }

    /// <summary>A value that changes exactly when the pool sets do.</summary>
    public string Key => string.Join(",", Masquerading) + "|" + string.Join(",", Cluster);
}
