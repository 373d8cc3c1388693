using Weft.Model;

namespace Weft.Agent.Calculators;

/// <summary>
/// What natOutgoing works from, whichever dataplane masquerades: the enabled IPv4 pools that masquerade, and every
/// enabled IPv4 pool (destinations inside the cluster are never translated). Ordered, so equal sets compare equal.
/// <see cref="PolicyConntrack"/>: policy enforcement uses the kernel's connection tracking (the nftables policy
/// dataplane), so what NAT untracks matters to it.
/// </summary>
public sealed record NatPools(IReadOnlyList<Cidr> Masquerading, IReadOnlyList<Cidr> Cluster, bool PolicyConntrack = true)
{
    public static NatPools From(IEnumerable<IPPool> pools, bool policyConntrack = true)
    {
        var v4 = pools.Where(p => p.Network.IsIPv4 && !p.Disabled).ToList();
        return new(v4.Where(p => p.NatOutgoing).Select(p => p.Network).Order().ToList(), v4.Select(p => p.Network).Order().ToList(), policyConntrack);
    }

    /// <summary>A value that changes exactly when the pool sets (or the policy's use of conntrack) do.</summary>
    public string Key => string.Join(",", Masquerading) + "|" + string.Join(",", Cluster) + (PolicyConntrack ? "|ct" : "");
}
