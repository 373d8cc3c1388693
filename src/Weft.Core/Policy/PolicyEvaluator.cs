using System.Net;
using System.Net.Sockets;
using Weft.Policy.Ir;

namespace Weft.Policy;

/// <summary>A connection attempt: the first packet's addresses, protocol and ports.</summary>
public sealed record Connection(IPAddress Source, IPAddress Destination, int Protocol, int? SourcePort, int? DestinationPort,
    int? IcmpType = null, int? IcmpCode = null);

/// <summary>What decided one direction, for `policy trace` and flow logs.</summary>
public sealed record DirectionVerdict(Direction Direction, bool Allowed, string Reason, PolicyIr? Policy, int? RuleIndex, PolicyRule? Rule,
    IReadOnlyList<string> Steps)
{
    /// <summary>The tier that decided (null when the profile allowed).</summary>
    public string? Tier { get; init; }
    /// <summary>The tier's applicable policies when it ended in a drop (nothing allowed).</summary>
    public IReadOnlyList<PolicyIr>? TierPolicies { get; init; }
    /// <summary>The first Log rule the connection matched on the way, if any.</summary>
    public (PolicyIr Policy, PolicyRule Rule)? Logged { get; init; }
}

public sealed record ConnectionVerdict(bool Allowed, DirectionVerdict? Egress, DirectionVerdict? Ingress)
{
    /// <summary>The direction that denied, or the one that allowed last.</summary>
    public DirectionVerdict? Deciding => Egress is { Allowed: false } ? Egress : Ingress is { Allowed: false } ? Ingress : Ingress ?? Egress;
}

/// <summary>
/// The reference semantics of the policy IR (see PolicyIr.cs): the oracle behind `weftctl policy simulate` and
/// `trace`, and the model the dataplane compilers are tested against. Pure: no I/O, no kernel.
/// </summary>
public sealed class PolicyEvaluator(PolicySet policies, PolicyWorld world)
{
    public ConnectionVerdict Evaluate(Connection c)
    {
        var src = world.EndpointAt(c.Source);
        var dst = world.EndpointAt(c.Destination);
        // A pod talking to itself never leaves its namespace: no dataplane sees it (upstream e2e ignores it too).
        if (src is not null && ReferenceEquals(src, dst))
        {
            var self = new DirectionVerdict(Direction.Ingress, true, "pod to itself: traffic stays inside the pod", null, null, null, []);
            return new ConnectionVerdict(true, null, self);
        }
        var egress = src is null ? null : EvaluateDirection(Direction.Egress, src, c, src, dst);
        if (egress is { Allowed: false }) return new ConnectionVerdict(false, egress, null);
        var ingress = dst is null ? null : EvaluateDirection(Direction.Ingress, dst, c, src, dst);
        return new ConnectionVerdict((egress?.Allowed ?? true) && (ingress?.Allowed ?? true), egress, ingress);
    }

    public DirectionVerdict EvaluateDirection(Direction direction, EndpointInfo subject, Connection c, EndpointInfo? src, EndpointInfo? dst) =>
        EvaluateDirection(PolicyCalculator.Applicable(policies, world, subject, direction), subject, c, src, dst, trace: true);

    /// <summary>
    /// One direction against policies already worked out for the subject (dataplane compilers evaluate many
    /// connections per endpoint); <paramref name="trace"/> false skips the step texts.
    /// </summary>
    public DirectionVerdict EvaluateDirection(TieredPolicies tiered, EndpointInfo subject, Connection c, EndpointInfo? src, EndpointInfo? dst, bool trace)
    {
        var direction = tiered.Direction;
        var steps = new List<string>();
        var anyApplied = false;
        (PolicyIr, PolicyRule)? logged = null;
        foreach (var (tier, applicable) in tiered.Tiers)
        {
            anyApplied = true;
            if (trace) steps.Add($"tier {tier}: {applicable.Count} {direction.ToString().ToLowerInvariant()} polic{(applicable.Count == 1 ? "y selects" : "ies select")} {subject.Key}: {string.Join(", ", applicable.Select(p => p.Display))}");
            var passed = false;
            foreach (var policy in applicable)
            {
                var rules = policy.Rules(direction);
                for (var i = 0; i < rules.Count && !passed; i++)
                {
                    var rule = rules[i];
                    if (!Matches(rule, c, src, dst)) continue;
                    var where = trace ? $"{policy.Display} rule {rule.Origin}" : rule.Origin;
                    switch (rule.Action)
                    {
                        case RuleAction.Allow:
                            if (trace) steps.Add($"{where}: Allow");
                            return new(direction, true, $"allowed by {where}", policy, i, rule, steps) { Tier = tier, Logged = logged };
                        case RuleAction.Deny:
                            if (trace) steps.Add($"{where}: Deny");
                            return new(direction, false, $"denied by {where}", policy, i, rule, steps) { Tier = tier, Logged = logged };
                        case RuleAction.Log:
                            if (trace) steps.Add($"{where}: Log (continues)");
                            logged ??= (policy, rule);
                            break;
                        case RuleAction.Pass:
                            if (trace) steps.Add($"{where}: Pass (skips to the next tier)");
                            passed = true;
                            break;
                    }
                }
                if (passed) break;
                if (trace) steps.Add($"{policy.Display}: no {direction.ToString().ToLowerInvariant()} rule matched");
            }
            if (!passed)
            {
                var last = applicable[^1];
                return new(direction, false,
                    trace ? $"denied: {subject.Key} is selected by {string.Join(", ", applicable.Select(p => p.Display))} in tier {tier} and no rule allows this {direction.ToString().ToLowerInvariant()} traffic" : "denied: end of tier",
                    last, null, null, steps) { Tier = tier, TierPolicies = applicable, Logged = logged };
            }
        }
        return anyApplied
            ? new(direction, true, "allowed: every applicable tier passed; the namespace profile allows", null, null, null, steps) { Logged = logged }
            : new(direction, true, $"allowed: no {direction.ToString().ToLowerInvariant()} policy selects {subject.Key}", null, null, null, steps);
    }

    private bool Matches(PolicyRule rule, Connection c, EndpointInfo? src, EndpointInfo? dst)
    {
        if (rule.Protocol is { } p && p != c.Protocol) return false;
        if (rule.NotProtocol is { } np && np == c.Protocol) return false;
        if (rule.IpVersion is { } v && v != (c.Source.AddressFamily == AddressFamily.InterNetwork ? 4 : 6)) return false;
        if (rule.Icmp is { } icmp && !IcmpMatches(icmp, c)) return false;
        if (rule.NotIcmp is { } notIcmp && IcmpMatches(notIcmp, c)) return false;
        return PeerMatches(rule.Source, c.Source, src, c.SourcePort, c.Protocol) &&
               PeerMatches(rule.Destination, c.Destination, dst, c.DestinationPort, c.Protocol);
    }

    private static bool IcmpMatches(IcmpMatch m, Connection c) =>
        c.Protocol is Protocols.Icmp or Protocols.Icmpv6 && (m.Type is null || m.Type == c.IcmpType) && (m.Code is null || m.Code == c.IcmpCode);

    private bool PeerMatches(PeerMatch peer, IPAddress address, EndpointInfo? ep, int? port, int protocol)
    {
        if (peer.Nets.Count > 0 && !peer.Nets.Any(n => n.Contains(address))) return false;
        if (peer.NotNets.Count > 0 && peer.NotNets.Any(n => n.Contains(address))) return false;
        if (!world.MatchesEndpointParts(peer, ep)) return false;
        if (peer.Ports.Count > 0 && !peer.Ports.Any(m => PortMatches(m, port, protocol, ep))) return false;
        if (peer.NotPorts.Count > 0 && peer.NotPorts.Any(m => PortMatches(m, port, protocol, ep))) return false;
        return true;
    }

    /// <summary>A named port matches when the endpoint owning that side of the connection has it for this protocol.</summary>
    internal static bool PortMatches(PortMatch m, int? port, int protocol, EndpointInfo? owner)
    {
        if (port is not { } p) return false;
        if (!m.IsNamed) return p >= m.From && p <= m.To;
        return owner?.ResolvePort(m.Name!, protocol) == p;
    }
}
