using System.Text.Json;
using Weft.Model;
using Weft.Model.Selectors;
using Weft.Policy.Ir;

namespace Weft.Policy.Dialects.Kubernetes;

/// <summary>
/// networking.k8s.io/v1 NetworkPolicy → IR. Every rule becomes Allow rules in the default tier at order 1000, one
/// per (peer, protocol group), so the IR's end-of-tier drop gives Kubernetes' "selected ⇒ isolated" semantics.
/// Defaults as the API server applies them: policyTypes = [Ingress] plus Egress when egress rules exist; a port
/// without protocol is TCP; an empty or missing `from`/`to` matches everything; missing `ports` matches every port.
/// </summary>
public static class KubernetesPolicyReader
{
    public const string ApiVersion = "networking.k8s.io/v1";
    public const double Order = 1000;

    internal static PolicyIr Read(Fields spec, string ns, string name)
    {
        spec.RejectUnknown("podSelector", "policyTypes", "ingress", "egress");
        var podSelector = spec.Child("podSelector") is { } ps ? LabelSelector(ps) : throw spec.Error("podSelector", "is required (use {} to select every pod in the namespace)");
        var ingressRules = spec.Objects("ingress");
        var egressRules = spec.Objects("egress");
        var types = spec.Strings("policyTypes");
        bool ingress, egress;
        if (types is null || types.Count == 0)
        {
            ingress = true;
            egress = egressRules is { Count: > 0 };
        }
        else
        {
            ingress = egress = false;
            for (var i = 0; i < types.Count; i++)
            {
                if (types[i] == "Ingress") ingress = true;
                else if (types[i] == "Egress") egress = true;
                else throw spec.Error($"policyTypes[{i}]", $"'{types[i]}' is not Ingress or Egress");
            }
        }
        return new PolicyIr
        {
            Id = $"knp/{ns}/{name}", Dialect = "kubernetes", Kind = "NetworkPolicy", Namespace = ns, Name = name,
            Order = Order, Selector = podSelector, AppliesToIngress = ingress, AppliesToEgress = egress,
            Ingress = ingress ? Rules(ingressRules ?? [], "from", ns, Direction.Ingress) : [],
            Egress = egress ? Rules(egressRules ?? [], "to", ns, Direction.Egress) : [],
        };
    }

    private static List<PolicyRule> Rules(IReadOnlyList<Fields> rules, string peersField, string ns, Direction direction)
    {
        var result = new List<PolicyRule>();
        for (var r = 0; r < rules.Count; r++)
        {
            var rule = rules[r];
            rule.RejectUnknown(peersField, "ports");
            var peers = rule.Objects(peersField);
            var portGroups = PortGroups(rule.Objects("ports"));
            var peerMatches = peers is null || peers.Count == 0
                ? [(PeerMatch.Any, "")]
                : peers.Select((p, i) => (Peer(p, ns), $".{peersField}[{i}]")).ToList();
            foreach (var (peer, peerOrigin) in peerMatches)
                foreach (var (protocol, ports) in portGroups)
                {
                    var portPeer = new PeerMatch { Ports = ports };
                    result.Add(new PolicyRule
                    {
                        Action = RuleAction.Allow, Protocol = protocol,
                        // Ingress: the peer is the source and the ports are the protected pod's; egress: both are the destination's.
                        Source = direction == Direction.Ingress ? peer : PeerMatch.Any,
                        Destination = direction == Direction.Ingress ? portPeer : peer with { Ports = ports },
                        Origin = $"{direction.ToString().ToLowerInvariant()}[{r}]{peerOrigin}",
                    });
                }
        }
        return result;
    }

    /// <summary>Ports grouped by protocol, since an IR rule has one protocol. No ports: one group, any protocol.</summary>
    private static List<(int? Protocol, IReadOnlyList<PortMatch> Ports)> PortGroups(IReadOnlyList<Fields>? ports)
    {
        if (ports is null || ports.Count == 0) return [(null, [])];
        var groups = new Dictionary<int, List<PortMatch>?>();
        foreach (var p in ports)
        {
            p.RejectUnknown("protocol", "port", "endPort");
            var protoText = p.String("protocol") ?? "TCP";
            var protocol = protoText switch
            {
                "TCP" => Protocols.Tcp, "UDP" => Protocols.Udp, "SCTP" => Protocols.Sctp,
                _ => throw p.Error("protocol", $"'{protoText}' is not TCP, UDP or SCTP"),
            };
            PortMatch? match = null;
            var portNode = p.Object["port"];
            var endPort = p.Int("endPort");
            if (portNode is not null)
            {
                if (portNode.GetValueKind() == JsonValueKind.String)
                {
                    var name = portNode.GetValue<string>();
                    if (int.TryParse(name, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var numeric))
                        match = PortMatch.Single(Fields.CheckPort(p, "port", numeric));
                    else
                    {
                        if (name.Length is 0 or > 15 || !name.All(c => char.IsAsciiLetterLower(c) || char.IsAsciiDigit(c) || c == '-') || !name.Any(char.IsAsciiLetterLower))
                            throw p.Error("port", $"'{name}' is not a valid port name (IANA_SVC_NAME: 1-15 lower-case letters, digits, '-')");
                        if (endPort is not null) throw p.Error("endPort", "cannot be used with a named port");
                        match = PortMatch.Named(name);
                    }
                }
                else
                {
                    var port = Fields.CheckPort(p, "port", p.Int("port")!.Value);
                    if (endPort is { } end)
                    {
                        Fields.CheckPort(p, "endPort", end);
                        if (end < port) throw p.Error("endPort", $"{end} is below port {port}");
                        match = PortMatch.Range(port, end);
                    }
                    else match = PortMatch.Single(port);
                }
            }
            else if (endPort is not null) throw p.Error("endPort", "needs a numeric port");
            if (match is null) groups[protocol] = null; // protocol only: every port
            else if (!groups.TryGetValue(protocol, out var list)) groups[protocol] = [match];
            else list?.Add(match);
        }
        return groups.Select(g => ((int?)g.Key, (IReadOnlyList<PortMatch>)(g.Value ?? []))).ToList();
    }

    private static PeerMatch Peer(Fields p, string ns)
    {
        p.RejectUnknown("podSelector", "namespaceSelector", "ipBlock");
        if (p.Child("ipBlock") is { } block)
        {
            if (p.Has("podSelector") || p.Has("namespaceSelector"))
                throw p.Error("ipBlock cannot be combined with podSelector or namespaceSelector in one peer; use two peers");
            block.RejectUnknown("cidr", "except");
            var cidrText = block.String("cidr") ?? throw block.Error("cidr", "is required");
            var cidr = block.Cidr("cidr", cidrText);
            var except = new List<Cidr>();
            var exceptTexts = block.Strings("except") ?? [];
            for (var i = 0; i < exceptTexts.Count; i++)
            {
                var e = block.Cidr($"except[{i}]", exceptTexts[i]);
                // Kubernetes' ValidateIPBlock: a strict subset, so an except equal to the cidr is refused too.
                if (e.Family != cidr.Family || !cidr.Contains(e) || e.PrefixLength <= cidr.PrefixLength)
                    throw block.Error($"except[{i}]", $"{e} must be a strict subset of cidr {cidr}");
                except.Add(e);
            }
            return new PeerMatch { Nets = [cidr], NotNets = except };
        }
        var pods = p.Child("podSelector") is { } ps ? LabelSelector(ps) : null;
        var nss = p.Child("namespaceSelector") is { } nsSel ? LabelSelector(nsSel) : null;
        if (pods is null && nss is null) throw p.Error("a peer needs podSelector, namespaceSelector or ipBlock");
        return nss is null
            ? new PeerMatch { Selector = pods, Namespace = ns }
            : new PeerMatch { Selector = pods, NamespaceSelector = nss };
    }

    /// <summary>A Kubernetes LabelSelector as a Calico selector: matchLabels AND every matchExpression; {} is all().</summary>
    internal static Selector LabelSelector(Fields sel)
    {
        sel.RejectUnknown("matchLabels", "matchExpressions");
        var parts = new List<string>();
        foreach (var (k, v) in sel.StringMap("matchLabels").OrderBy(kv => kv.Key, StringComparer.Ordinal))
        {
            CheckLabelKey(sel, "matchLabels", k);
            parts.Add($"{k} == {Quote(v)}");
        }
        var exprs = sel.Objects("matchExpressions") ?? [];
        foreach (var e in exprs)
        {
            e.RejectUnknown("key", "operator", "values");
            var key = e.String("key") ?? throw e.Error("key", "is required");
            CheckLabelKey(e, "key", key);
            var op = e.String("operator") ?? throw e.Error("operator", "is required");
            var values = e.Strings("values") ?? [];
            switch (op)
            {
                case "In" or "NotIn":
                    if (values.Count == 0) throw e.Error("values", $"must not be empty for operator {op}");
                    parts.Add($"{key} {(op == "In" ? "in" : "not in")} {{{string.Join(", ", values.Select(Quote))}}}");
                    break;
                case "Exists" or "DoesNotExist":
                    if (values.Count > 0) throw e.Error("values", $"must be empty for operator {op}");
                    parts.Add(op == "Exists" ? $"has({key})" : $"!has({key})");
                    break;
                default:
                    throw e.Error("operator", $"'{op}' is not In, NotIn, Exists or DoesNotExist");
            }
        }
        return parts.Count == 0 ? Selector.All : sel.Selector(sel.Path, string.Join(" && ", parts));
    }

    private static void CheckLabelKey(Fields f, string field, string key)
    {
        if (key.Length is 0 or > 316 || !key.All(c => char.IsAsciiLetterOrDigit(c) || c is '_' or '-' or '.' or '/'))
            throw f.Error(field, $"'{key}' is not a valid label key");
    }

    private static string Quote(string v) => v.Contains('\'', StringComparison.Ordinal) ? "\"" + v + "\"" : "'" + v + "'";
}
