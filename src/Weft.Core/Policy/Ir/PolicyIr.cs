using Weft.Model;
using Weft.Model.Selectors;

namespace Weft.Policy.Ir;

// The one policy IR every dialect (Kubernetes, Calico, later Cilium) compiles into, and every consumer (the
// evaluator behind `policy simulate`/`trace`, the nftables compiler, later eBPF) reads.
//
// Semantics (Calico's model, which subsumes Kubernetes'):
// - Policies live in tiers, evaluated in tier order. Within a tier, the policies that apply to an endpoint (selector
//   matches, type includes the direction) run in (order, name) order; nil order sorts last.
// - In a policy, rules run in order. The first rule that matches decides: Allow ends evaluation with "allowed",
//   Deny with "denied", Pass skips the rest of this tier and continues with the next one, Log records and goes on.
// - A tier in which at least one policy applied but no rule decided ends in "denied" (the end-of-tier drop).
// - An endpoint no policy applies to (or whose every applicable tier passed) is allowed: the namespace profile.
// - A connection needs both: egress allowed at the source endpoint and ingress allowed at the destination endpoint;
//   an address that is not an endpoint has no policy of its own.
// Kubernetes NetworkPolicies become Allow-only policies in the "default" tier with order 1000 (as Calico does), so
// "selected by any policy ⇒ isolated; allowed if any rule of any of them allows" falls out of the end-of-tier drop.

public enum RuleAction { Allow, Deny, Pass, Log }

public enum Direction { Ingress, Egress }

/// <summary>IP protocol numbers the dialects name.</summary>
public static class Protocols
{
    public const int Icmp = 1, Tcp = 6, Udp = 17, Icmpv6 = 58, Sctp = 132, UdpLite = 136;

    public static bool HasPorts(int protocol) => protocol is Tcp or Udp or Sctp or UdpLite;

    public static string Name(int protocol) => protocol switch
    {
        Tcp => "TCP", Udp => "UDP", Sctp => "SCTP", Icmp => "ICMP", Icmpv6 => "ICMPv6", UdpLite => "UDPLite",
        _ => protocol.ToString(System.Globalization.CultureInfo.InvariantCulture),
    };

    public static bool TryParse(string text, out int protocol)
    {
        protocol = text.ToUpperInvariant() switch
        {
            "TCP" => Tcp, "UDP" => Udp, "SCTP" => Sctp, "ICMP" => Icmp, "ICMPV6" => Icmpv6, "UDPLITE" => UdpLite,
            _ => int.TryParse(text, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var n) && n is >= 1 and <= 255 ? n : -1,
        };
        return protocol > 0;
    }
}

/// <summary>A port or port range, or a named container port resolved against the endpoint that owns the port.</summary>
public sealed record PortMatch(int From, int To, string? Name)
{
    public static PortMatch Single(int port) => new(port, port, null);
    public static PortMatch Range(int from, int to) => new(from, to, null);
    public static PortMatch Named(string name) => new(0, 0, name);

    public bool IsNamed => Name is not null;

    public override string ToString() => Name ?? (From == To ? From.ToString(System.Globalization.CultureInfo.InvariantCulture) : $"{From}:{To}");
}

public sealed record IcmpMatch(int? Type, int? Code);

/// <summary>
/// One side (source or destination) of a rule. Every field present must match (AND); lists match when any element
/// does. <see cref="Selector"/>, <see cref="NamespaceSelector"/> and <see cref="Namespace"/> can only match an
/// address that belongs to a known endpoint; nets match any address.
/// </summary>
public sealed record PeerMatch
{
    public static PeerMatch Any { get; } = new();

    /// <summary>Endpoint labels (Calico selector; Kubernetes label selectors are translated into it).</summary>
    public Selector? Selector { get; init; }
    public Selector? NotSelector { get; init; }
    /// <summary>Namespace labels; the endpoint's namespace must match.</summary>
    public Selector? NamespaceSelector { get; init; }
    /// <summary>The endpoint must be in this namespace (a namespaced policy's selector without a namespaceSelector).</summary>
    public string? Namespace { get; init; }
    public IReadOnlyList<Cidr> Nets { get; init; } = [];
    public IReadOnlyList<Cidr> NotNets { get; init; } = [];
    public IReadOnlyList<PortMatch> Ports { get; init; } = [];
    public IReadOnlyList<PortMatch> NotPorts { get; init; } = [];

    public bool RequiresEndpoint => Selector is not null || NamespaceSelector is not null || Namespace is not null;
    public bool SelectsAddresses => RequiresEndpoint || NotSelector is not null || Nets.Count > 0 || NotNets.Count > 0;
    public bool IsAny => !SelectsAddresses && Ports.Count == 0 && NotPorts.Count == 0;

    public override string ToString()
    {
        var parts = new List<string>();
        if (Namespace is not null) parts.Add($"namespace {Namespace}");
        if (NamespaceSelector is not null) parts.Add($"namespaceSelector {NamespaceSelector.Text}");
        if (Selector is not null) parts.Add($"selector {Selector.Text}");
        if (NotSelector is not null) parts.Add($"notSelector {NotSelector.Text}");
        if (Nets.Count > 0) parts.Add("nets " + string.Join(",", Nets));
        if (NotNets.Count > 0) parts.Add("notNets " + string.Join(",", NotNets));
        if (Ports.Count > 0) parts.Add("ports " + string.Join(",", Ports));
        if (NotPorts.Count > 0) parts.Add("notPorts " + string.Join(",", NotPorts));
        return parts.Count == 0 ? "any" : string.Join(", ", parts);
    }
}

/// <summary>One rule. <see cref="Origin"/> says where it came from in the document, for traces: "ingress[0].from[1]".</summary>
public sealed record PolicyRule
{
    public RuleAction Action { get; init; } = RuleAction.Allow;
    public int? Protocol { get; init; }
    public int? NotProtocol { get; init; }
    public IcmpMatch? Icmp { get; init; }
    public IcmpMatch? NotIcmp { get; init; }
    /// <summary>4 or 6 when the rule applies to one family only.</summary>
    public int? IpVersion { get; init; }
    public PeerMatch Source { get; init; } = PeerMatch.Any;
    public PeerMatch Destination { get; init; } = PeerMatch.Any;
    public string Origin { get; init; } = "";
}

/// <summary>A policy in IR form. <see cref="Id"/> is unique across dialects: "knp/x/allow-web", "np/x/db", "gnp/deny-all".</summary>
public sealed record PolicyIr
{
    public required string Id { get; init; }
    /// <summary>"kubernetes" or "calico" (later "cilium").</summary>
    public required string Dialect { get; init; }
    /// <summary>The document's kind as the operator wrote it: NetworkPolicy, GlobalNetworkPolicy.</summary>
    public required string Kind { get; init; }
    public string? Namespace { get; init; }
    public required string Name { get; init; }
    public string Tier { get; init; } = PolicySet.DefaultTier;
    public double? Order { get; init; }
    /// <summary>The endpoints the policy applies to (within <see cref="Namespace"/> when namespaced).</summary>
    public Selector Selector { get; init; } = Selector.All;
    /// <summary>GlobalNetworkPolicy's namespaceSelector: the endpoint's namespace labels must match too.</summary>
    public Selector? NamespaceSelector { get; init; }
    public bool AppliesToIngress { get; init; }
    public bool AppliesToEgress { get; init; }
    public IReadOnlyList<PolicyRule> Ingress { get; init; } = [];
    public IReadOnlyList<PolicyRule> Egress { get; init; } = [];
    /// <summary>Changes whenever the policy's content does (its datastore mod revision); 0 = unknown. Lets compilers reuse work.</summary>
    public long Version { get; init; }

    /// <summary>A name for people: "NetworkPolicy x/allow-web (kubernetes)".</summary>
    public string Display => $"{Kind} {(Namespace is null ? "" : Namespace + "/")}{Name}" + (Dialect == "kubernetes" ? " (kubernetes)" : "");

    public IReadOnlyList<PolicyRule> Rules(Direction d) => d == Direction.Ingress ? Ingress : Egress;
    public bool AppliesTo(Direction d) => d == Direction.Ingress ? AppliesToIngress : AppliesToEgress;
}

/// <summary>An immutable, ordered set of policies: what the evaluator and the compilers read. Built once per change.</summary>
public sealed class PolicySet
{
    public const string DefaultTier = "default";

    /// <summary>Tiers by evaluation order; the default tier is last unless a Tier resource says otherwise (Calico: 1,000,000).</summary>
    public IReadOnlyList<string> TierOrder { get; }
    public IReadOnlyList<PolicyIr> Policies { get; }

    public PolicySet(IEnumerable<PolicyIr> policies, IReadOnlyDictionary<string, double>? tierOrders = null)
    {
        var orders = new Dictionary<string, double>(tierOrders ?? new Dictionary<string, double>(), StringComparer.Ordinal);
        orders.TryAdd(DefaultTier, 1_000_000);
        Policies = policies
            .OrderBy(p => orders.TryGetValue(p.Tier, out var o) ? o : double.MaxValue)
            .ThenBy(p => p.Tier, StringComparer.Ordinal)
            .ThenBy(p => p.Order ?? double.PositiveInfinity)
            .ThenBy(p => SortName(p), StringComparer.Ordinal)
            .ToList();
        TierOrder = Policies.Select(p => p.Tier).Distinct(StringComparer.Ordinal).ToList();
    }

    public static PolicySet Empty { get; } = new([]);

    /// <summary>Calico sorts equal-order policies by name; Kubernetes ones are named "knp.default.NAME" there.</summary>
    private static string SortName(PolicyIr p) => p.Dialect == "kubernetes" ? $"knp.default.{p.Namespace}/{p.Name}" : $"{p.Namespace}/{p.Name}";

    public IEnumerable<PolicyIr> InTier(string tier) => Policies.Where(p => p.Tier == tier);
}
