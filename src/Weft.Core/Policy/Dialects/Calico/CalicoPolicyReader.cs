using System.Globalization;
using System.Text.Json;
using Weft.Model;
using Weft.Policy.Ir;

namespace Weft.Policy.Dialects.Calico;

/// <summary>
/// projectcalico.org/v3 NetworkPolicy and GlobalNetworkPolicy → IR. Actions Allow/Deny/Pass/Log, order and tier,
/// the selector language, namespaceSelector, nets/notNets, ports/notPorts (numbers, "80:90" ranges, named ports),
/// protocol/notProtocol, icmp/notICMP, ipVersion. Defaults as Calico applies them: selector all(); types from the
/// rules present (egress only ⇒ [Egress]; both ⇒ both; otherwise [Ingress]).
/// </summary>
public static class CalicoPolicyReader
{
    private static readonly string[] SpecFields =
    [
        "order", "tier", "selector", "types", "ingress", "egress", "serviceAccountSelector", "doNotTrack", "preDNAT",
        "applyOnForward", "performanceHints", "namespaceSelector",
    ];

    internal static PolicyIr Read(Fields spec, string kind, string? ns, string name)
    {
        var global = kind == "GlobalNetworkPolicy";
        spec.RejectUnknown(global ? SpecFields : SpecFields.Where(f => f != "namespaceSelector").ToArray());
        foreach (var unsupported in new[] { "doNotTrack", "preDNAT" })
            if (spec.Bool(unsupported) == true) throw spec.Error(unsupported, "host-endpoint policies are not supported by weft yet; remove it");
        if (spec.String("serviceAccountSelector") is { Length: > 0 })
            throw spec.Error("serviceAccountSelector", "service-account selection is not supported yet; select by pod labels");
        var tier = spec.String("tier") ?? PolicySet.DefaultTier;
        var ingress = spec.Objects("ingress") ?? [];
        var egress = spec.Objects("egress") ?? [];
        var types = spec.Strings("types");
        bool appliesIn, appliesEg;
        if (types is null || types.Count == 0)
        {
            appliesEg = egress.Count > 0;
            appliesIn = ingress.Count > 0 || !appliesEg;
        }
        else
        {
            appliesIn = appliesEg = false;
            for (var i = 0; i < types.Count; i++)
            {
                if (types[i] == "Ingress") appliesIn = true;
                else if (types[i] == "Egress") appliesEg = true;
                else throw spec.Error($"types[{i}]", $"'{types[i]}' is not Ingress or Egress");
            }
        }
        if (!appliesIn && ingress.Count > 0) throw spec.Error("ingress", "has rules but types does not include Ingress");
        if (!appliesEg && egress.Count > 0) throw spec.Error("egress", "has rules but types does not include Egress");
        var order = spec.Number("order");
        if (order is < 0) throw spec.Error("order", $"{order} must not be negative");
        return new PolicyIr
        {
            Id = global ? $"gnp/{name}" : $"np/{ns}/{name}", Dialect = "calico", Kind = kind, Namespace = global ? null : ns, Name = name,
            Tier = tier, Order = order,
            Selector = spec.String("selector") is { } sel ? spec.Selector("selector", sel) : Model.Selectors.Selector.All,
            NamespaceSelector = global && spec.String("namespaceSelector") is { } nsSel ? spec.Selector("namespaceSelector", nsSel) : null,
            AppliesToIngress = appliesIn, AppliesToEgress = appliesEg,
            Ingress = ingress.Select((r, i) => Rule(r, global ? null : ns, $"ingress[{i}]")).ToList(),
            Egress = egress.Select((r, i) => Rule(r, global ? null : ns, $"egress[{i}]")).ToList(),
        };
    }

    private static PolicyRule Rule(Fields r, string? ns, string origin)
    {
        r.RejectUnknown("action", "protocol", "notProtocol", "icmp", "notICMP", "ipVersion", "source", "destination", "http", "metadata");
        var actionText = r.String("action") ?? throw r.Error("action", "is required (Allow, Deny, Log or Pass)");
        var action = actionText switch
        {
            "Allow" => RuleAction.Allow, "Deny" => RuleAction.Deny, "Log" => RuleAction.Log, "Pass" => RuleAction.Pass,
            _ => throw r.Error("action", $"'{actionText}' is not Allow, Deny, Log or Pass"),
        };
        if (r.Has("http")) throw r.Error("http", "HTTP match rules need weft's L7 proxy, which this build does not have yet");
        var protocol = Protocol(r, "protocol");
        var notProtocol = Protocol(r, "notProtocol");
        var ipVersion = r.Int("ipVersion");
        if (ipVersion is not (null or 4 or 6)) throw r.Error("ipVersion", $"{ipVersion} is not 4 or 6");
        var source = Entity(r.Child("source"), ns);
        var destination = Entity(r.Child("destination"), ns);
        foreach (var (side, peer) in new[] { ("source", source), ("destination", destination) })
            if ((peer.Ports.Count > 0 || peer.NotPorts.Count > 0) && protocol is not (Protocols.Tcp or Protocols.Udp or Protocols.Sctp or Protocols.UdpLite))
                throw r.Error($"{side}.{(peer.Ports.Count > 0 ? "ports" : "notPorts")}", "rules with ports must set protocol to TCP, UDP, UDPLite or SCTP");
        var icmp = Icmp(r, "icmp");
        var notIcmp = Icmp(r, "notICMP");
        if (notIcmp is { Code: not null }) throw r.Error("notICMP.code", "is not supported; match notICMP by type only");
        if ((icmp is not null || notIcmp is not null) && protocol is not (Protocols.Icmp or Protocols.Icmpv6))
            throw r.Error(icmp is not null ? "icmp" : "notICMP", "needs protocol ICMP or ICMPv6");
        foreach (var net in source.Nets.Concat(source.NotNets).Concat(destination.Nets).Concat(destination.NotNets))
            if (ipVersion is { } v && (v == 4) != net.IsIPv4) throw r.Error("ipVersion", $"{v} conflicts with net {net}");
        return new PolicyRule
        {
            Action = action, Protocol = protocol, NotProtocol = notProtocol, Icmp = icmp, NotIcmp = notIcmp, IpVersion = ipVersion,
            Source = source, Destination = destination, Origin = origin,
        };
    }

    private static int? Protocol(Fields r, string field)
    {
        var node = r.Object[field];
        if (node is null) return null;
        var text = node.GetValueKind() == JsonValueKind.Number ? node.ToJsonString() : node.GetValueKind() == JsonValueKind.String ? node.GetValue<string>() : "";
        return Protocols.TryParse(text, out var p) ? p : throw r.Error(field, $"'{node.ToJsonString()}' is not TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite or a number 1-255");
    }

    private static IcmpMatch? Icmp(Fields r, string field)
    {
        if (r.Child(field) is not { } f) return null;
        f.RejectUnknown("type", "code");
        var type = f.Int("type");
        var code = f.Int("code");
        if (type is < 0 or > 254) throw f.Error("type", $"{type} is out of range (0-254)");
        if (code is < 0 or > 255) throw f.Error("code", $"{code} is out of range (0-255)");
        if (code is not null && type is null) throw f.Error("code", "needs a type");
        return new IcmpMatch(type, code);
    }

    private static PeerMatch Entity(Fields? e, string? ns)
    {
        if (e is not { } f) return PeerMatch.Any;
        f.RejectUnknown("nets", "notNets", "selector", "notSelector", "namespaceSelector", "ports", "notPorts", "serviceAccounts", "services");
        if (f.Has("serviceAccounts") || f.Has("services"))
            throw f.Error(f.Has("services") ? "services" : "serviceAccounts", "is not supported by weft yet");
        var selector = f.String("selector") is { } s ? f.Selector("selector", s) : null;
        var nsSelector = f.String("namespaceSelector") is { } n ? f.Selector("namespaceSelector", n) : null;
        var notSelector = f.String("notSelector") is { } ns2 ? f.Selector("notSelector", ns2) : null;
        return new PeerMatch
        {
            Selector = selector,
            NotSelector = notSelector,
            NamespaceSelector = nsSelector,
            // A namespaced policy's selector or notSelector picks endpoints of its own namespace unless a
            // namespaceSelector widens it (libcalico-go updateprocessors/rules.go, getEndpointSelector).
            Namespace = ns is not null && (selector is not null || notSelector is not null) && nsSelector is null ? ns : null,
            Nets = Nets(f, "nets"), NotNets = Nets(f, "notNets"),
            Ports = Ports(f, "ports"), NotPorts = Ports(f, "notPorts"),
        };
    }

    private static List<Cidr> Nets(Fields f, string field)
    {
        var list = f.Strings(field) ?? [];
        return list.Select((t, i) => f.Cidr($"{field}[{i}]", t)).ToList();
    }

    private static List<PortMatch> Ports(Fields f, string field)
    {
        if (f.Object[field] is null) return [];
        if (f.Object[field] is not System.Text.Json.Nodes.JsonArray arr) throw f.Error(field, "must be a list");
        var result = new List<PortMatch>();
        for (var i = 0; i < arr.Count; i++)
        {
            var node = arr[i];
            var at = $"{field}[{i}]";
            if (node?.GetValueKind() == JsonValueKind.Number && int.TryParse(node.ToJsonString(), out var n))
            {
                result.Add(PortMatch.Single(CheckPort(f, at, n)));
                continue;
            }
            var text = node?.GetValueKind() == JsonValueKind.String ? node.GetValue<string>() : throw f.Error(at, "must be a port number, a range \"80:90\" or a port name");
            var colon = text.IndexOf(':', StringComparison.Ordinal);
            if (colon > 0 && int.TryParse(text[..colon], NumberStyles.None, CultureInfo.InvariantCulture, out var from) &&
                int.TryParse(text[(colon + 1)..], NumberStyles.None, CultureInfo.InvariantCulture, out var to))
            {
                CheckPort(f, at, from);
                CheckPort(f, at, to);
                if (to < from) throw f.Error(at, $"range {text} ends before it starts");
                result.Add(PortMatch.Range(from, to));
            }
            else if (int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var single))
                result.Add(PortMatch.Single(CheckPort(f, at, single)));
            else if (text.Length is > 0 and <= 15 && text.All(c => char.IsAsciiLetterOrDigit(c) || c == '-'))
                result.Add(PortMatch.Named(text));
            else throw f.Error(at, $"'{text}' is not a port, a range like 80:90 or a port name");
        }
        return result;
    }

    // libcalico-go's validatePort refuses 0, in a range too ("port number must be between 1 and 65535").
    private static int CheckPort(Fields f, string at, int port) =>
        port is >= 1 and <= 65535 ? port : throw f.Error(at, $"{port} is out of range (1-65535)");
}
