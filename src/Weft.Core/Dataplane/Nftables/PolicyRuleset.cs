using System.Text.Json.Nodes;

namespace Weft.Dataplane.Nftables;

/// <summary>A named set; elements are kept as their JSON text so desired and applied sets diff by string.</summary>
public sealed record NftSet(string Name, JsonNode Type, SortedSet<string> Elements)
{
    /// <summary>Elements are prefixes and ranges (and concatenations of them).</summary>
    public bool Interval { get; init; }

    public string TypeText => Type.ToJsonString();
}

/// <summary>A verdict map from an address to the chain that decides for that endpoint.</summary>
public sealed record NftVerdictMap(string Name, string KeyType, SortedDictionary<string, string> Elements);

/// <summary>A chain: base chains carry their hook; rules are the JSON text of each rule's expression list.</summary>
public sealed record NftChain(string Name, IReadOnlyList<string> Rules, string? Hook = null, int Priority = 0)
{
    public bool SameAs(NftChain other) => Hook == other.Hook && Priority == other.Priority && Rules.SequenceEqual(other.Rules, StringComparer.Ordinal);
}

/// <summary>
/// The whole desired content of Weft's policy table for one node: what the compiler produces and the driver
/// diffs against what it applied last. Immutable once built.
/// </summary>
public sealed class PolicyRuleset
{
    public Dictionary<string, NftSet> Sets { get; } = new(StringComparer.Ordinal);
    public Dictionary<string, NftVerdictMap> Maps { get; } = new(StringComparer.Ordinal);
    /// <summary>In declaration order: chains that others jump to come first.</summary>
    public Dictionary<string, NftChain> Chains { get; } = new(StringComparer.Ordinal);
    public int Endpoints { get; set; }
    /// <summary>Flow log tokens (see <see cref="FlowLog"/>) → the policies they stand for, comma-separated ids ("" for none).</summary>
    public Dictionary<string, string> LogMeanings { get; } = new(StringComparer.Ordinal);
    public int RuleCount => Chains.Values.Sum(c => c.Rules.Count);
}
