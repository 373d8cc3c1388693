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
}
