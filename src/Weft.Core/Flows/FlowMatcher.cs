using System.Net;
using Weft.Flows.Api;
using Weft.Model;

namespace Weft.Flows;

/// <summary>
/// Hubble's filter semantics: a flow passes when it matches any whitelist filter (or there is none) and no blacklist
/// filter. Within one filter every field set must match; within one field any value may.
/// </summary>
public sealed class FlowMatcher
{
    private readonly CompiledFilter[] _white, _black;

    public FlowMatcher(IEnumerable<FlowFilter> whitelist, IEnumerable<FlowFilter> blacklist)
    {
        _white = whitelist.Select(f => new CompiledFilter(f)).ToArray();
        _black = blacklist.Select(f => new CompiledFilter(f)).ToArray();
    }

    public static FlowMatcher All { get; } = new([], []);

    public bool Matches(Flow flow)
    {
        if (_white.Length > 0 && !_white.Any(f => f.Matches(flow))) return false;
        return !_black.Any(f => f.Matches(flow));
    }

    /// <summary>Throws <see cref="ArgumentException"/> naming the field when a filter value is malformed.</summary>
    public static void Validate(IEnumerable<FlowFilter> filters)
    {
        foreach (var f in filters) _ = new CompiledFilter(f);
    }

    private sealed class CompiledFilter
    {
        private readonly FlowFilter _f;
        private readonly Cidr[] _srcIp, _dstIp;
        private readonly LabelTerm[][] _srcLabels, _dstLabels;

        public CompiledFilter(FlowFilter f)
        {
            _f = f;
            _srcIp = f.SourceIp.Select(s => ParseIp(s, "source_ip")).ToArray();
            _dstIp = f.DestinationIp.Select(s => ParseIp(s, "destination_ip")).ToArray();
            _srcLabels = f.SourceLabel.Select(LabelTerm.ParseSelector).ToArray();
            _dstLabels = f.DestinationLabel.Select(LabelTerm.ParseSelector).ToArray();
            foreach (var v in f.Verdict)
                if (v is not ("FORWARDED" or "DROPPED")) throw new ArgumentException($"verdict '{v}': expected FORWARDED or DROPPED");
            foreach (var d in f.TrafficDirection)
                if (d is not ("INGRESS" or "EGRESS")) throw new ArgumentException($"traffic direction '{d}': expected ingress or egress");
            foreach (var p in f.Protocol)
                if (ProtocolNumber(p) < 0) throw new ArgumentException($"protocol '{p}': expected TCP, UDP, SCTP, ICMPv4 or ICMPv6");
        }

        public bool Matches(Flow flow) =>
            AnyPod(_f.SourcePod, flow.Source) && AnyPod(_f.DestinationPod, flow.Destination)
            && AnyIp(_srcIp, flow.IpSource) && AnyIp(_dstIp, flow.IpDestination)
            && AnyLabels(_srcLabels, flow.Source) && AnyLabels(_dstLabels, flow.Destination)
            && (_f.Verdict.Count == 0 || _f.Verdict.Contains(flow.Verdict))
            && (_f.Protocol.Count == 0 || _f.Protocol.Any(p => ProtocolNumber(p) == flow.Protocol || (p.Equals("icmp", StringComparison.OrdinalIgnoreCase) && flow.Protocol == 58)))
            && (_f.SourcePort.Count == 0 || _f.SourcePort.Contains(flow.SourcePort))
            && (_f.DestinationPort.Count == 0 || _f.DestinationPort.Contains(flow.DestinationPort))
            && (_f.TrafficDirection.Count == 0 || _f.TrafficDirection.Contains(flow.TrafficDirection))
            && (_f.NodeName.Count == 0 || _f.NodeName.Any(n => n == flow.NodeName || (n.EndsWith('*') && flow.NodeName.StartsWith(n[..^1], StringComparison.Ordinal))));

        private static bool AnyPod(IList<string> pods, Endpoint? ep)
        {
            if (pods.Count == 0) return true;
            if (ep is null || ep.Namespace.Length == 0) return false;
            foreach (var p in pods)
            {
                var slash = p.IndexOf('/', StringComparison.Ordinal);
                if (slash < 0 ? ep.PodName.StartsWith(p, StringComparison.Ordinal)
                    : ep.Namespace == p[..slash] && ep.PodName.StartsWith(p[(slash + 1)..], StringComparison.Ordinal)) return true;
            }
            return false;
        }

        private static bool AnyIp(Cidr[] nets, string ip)
        {
            if (nets.Length == 0) return true;
            if (!IPAddress.TryParse(ip, out var addr)) return false;
            return nets.Any(n => n.Contains(addr));
        }

        private static bool AnyLabels(LabelTerm[][] selectors, Endpoint? ep) =>
            selectors.Length == 0 || (ep is not null && selectors.Any(terms => terms.All(t => t.Matches(ep.Labels))));

        private static Cidr ParseIp(string text, string field)
        {
            if (text.Contains('/', StringComparison.Ordinal))
                return Cidr.TryParse(text, out var c) ? c : throw new ArgumentException($"{field} '{text}' is not an address or CIDR");
            return IPAddress.TryParse(text, out var a) ? new Cidr(a, a.AddressFamily == System.Net.Sockets.AddressFamily.InterNetwork ? 32 : 128)
                : throw new ArgumentException($"{field} '{text}' is not an address or CIDR");
        }
    }

    public static int ProtocolNumber(string name) => name.ToUpperInvariant() switch
    {
        "TCP" => 6, "UDP" => 17, "SCTP" => 132, "ICMPV4" or "ICMP" => 1, "ICMPV6" => 58, _ => -1,
    };

    /// <summary>One term of a label selector: "k=v", "k!=v", "k" (exists) or "!k"; an optional "k8s:" source prefix is ignored.</summary>
    private readonly record struct LabelTerm(string Key, string? Value, bool Negated)
    {
        public static LabelTerm[] ParseSelector(string text)
        {
            var terms = text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(Parse).ToArray();
            return terms.Length > 0 ? terms : throw new ArgumentException($"label selector '{text}' is empty");
        }

        private static LabelTerm Parse(string t)
        {
            var negated = false;
            string key; string? value = null;
            var ne = t.IndexOf("!=", StringComparison.Ordinal);
            var eq = t.IndexOf('=', StringComparison.Ordinal);
            if (ne > 0) { key = t[..ne]; value = t[(ne + 2)..]; negated = true; }
            else if (eq > 0) { key = t[..eq]; value = t[(eq + 1)..].TrimStart('='); }
            else if (t.StartsWith('!')) { key = t[1..]; negated = true; }
            else key = t;
            key = Strip(key.Trim());
            if (key.Length == 0 || key.Any(c => char.IsWhiteSpace(c) || c is '(' or ')' or '!')) throw new ArgumentException($"label selector term '{t}' is not k=v, k!=v, k or !k");
            return new LabelTerm(key, value?.Trim(), negated);
        }

        private static string Strip(string key) => key.StartsWith("k8s:", StringComparison.Ordinal) ? key[4..] : key;

        public bool Matches(IList<string> labels)
        {
            foreach (var l in labels)
            {
                var s = Strip(l);
                var eq = s.IndexOf('=', StringComparison.Ordinal);
                var k = eq < 0 ? s : s[..eq];
                if (k != Key) continue;
                var v = eq < 0 ? "" : s[(eq + 1)..];
                return Value is null ? !Negated : (v == Value) != Negated;
            }
            return Negated; // absent key: "!k" and "k!=v" match
        }
    }
}
