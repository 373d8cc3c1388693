using System.Net;
using Weft.Policy.Ir;

namespace Weft.Policy;

public sealed record NamedPort(string Name, int Port, int Protocol);

public sealed record NamespaceInfo(string Name, IReadOnlyDictionary<string, string> Labels);

/// <summary>A pod interface as policy sees it: who it is, its labels, its addresses and its named container ports.</summary>
public sealed record EndpointInfo(
    string Namespace, string Name, IReadOnlyDictionary<string, string> Labels, IReadOnlyList<IPAddress> Addresses,
    IReadOnlyList<NamedPort> Ports, string? Node = null, string? HostInterface = null)
{
    public string Key => $"{Namespace}/{Name}";

    /// <summary>The port number a named port has on this endpoint for a protocol, or null.</summary>
    public int? ResolvePort(string name, int protocol)
    {
        foreach (var p in Ports)
            if (p.Name == name && p.Protocol == protocol) return p.Port;
        return null;
    }
}

/// <summary>
/// The labelled world selectors are evaluated against: namespaces and endpoints, with the labels Calico adds
/// implicitly (<c>kubernetes.io/metadata.name</c> and <c>projectcalico.org/name</c> on namespaces,
/// <c>projectcalico.org/namespace</c> and <c>projectcalico.org/orchestrator</c> on endpoints). Immutable.
/// </summary>
public sealed class PolicyWorld
{
    private readonly Dictionary<string, NamespaceInfo> _namespaces;
    private readonly Dictionary<IPAddress, EndpointInfo> _byAddress = [];
    private readonly Dictionary<string, IReadOnlyDictionary<string, string>> _effectiveLabels = new(StringComparer.Ordinal);

    public IReadOnlyList<EndpointInfo> Endpoints { get; }

    public PolicyWorld(IEnumerable<NamespaceInfo> namespaces, IEnumerable<EndpointInfo> endpoints)
    {
        _namespaces = new Dictionary<string, NamespaceInfo>(StringComparer.Ordinal);
        foreach (var ns in namespaces) _namespaces[ns.Name] = WithImplicitLabels(ns);
        Endpoints = endpoints.ToList();
        foreach (var ep in Endpoints)
        {
            if (!_namespaces.ContainsKey(ep.Namespace)) _namespaces[ep.Namespace] = WithImplicitLabels(new NamespaceInfo(ep.Namespace, new Dictionary<string, string>()));
            foreach (var a in ep.Addresses) _byAddress.TryAdd(a, ep);
            var labels = new Dictionary<string, string>(ep.Labels, StringComparer.Ordinal)
            {
                ["projectcalico.org/namespace"] = ep.Namespace,
                ["projectcalico.org/orchestrator"] = "k8s",
            };
            _effectiveLabels[ep.Key] = labels;
        }
    }

    private static NamespaceInfo WithImplicitLabels(NamespaceInfo ns)
    {
        var labels = new Dictionary<string, string>(ns.Labels, StringComparer.Ordinal);
        labels.TryAdd("kubernetes.io/metadata.name", ns.Name);
        labels.TryAdd("projectcalico.org/name", ns.Name);
        return ns with { Labels = labels };
    }

    public IEnumerable<NamespaceInfo> Namespaces => _namespaces.Values;

    public EndpointInfo? EndpointAt(IPAddress address) => _byAddress.GetValueOrDefault(address);

    public IReadOnlyDictionary<string, string> LabelsOf(EndpointInfo ep) => _effectiveLabels.GetValueOrDefault(ep.Key) ?? ep.Labels;

    public IReadOnlyDictionary<string, string> NamespaceLabels(string ns) =>
        _namespaces.TryGetValue(ns, out var n) ? n.Labels : new Dictionary<string, string> { ["kubernetes.io/metadata.name"] = ns, ["projectcalico.org/name"] = ns };

    /// <summary>Does this policy apply to the endpoint (namespace, selector, GlobalNetworkPolicy namespaceSelector)?</summary>
    public bool Applies(PolicyIr policy, EndpointInfo ep) =>
        (policy.Namespace is null || policy.Namespace == ep.Namespace) &&
        policy.Selector.Matches(LabelsOf(ep)) &&
        (policy.NamespaceSelector is null || policy.NamespaceSelector.Matches(NamespaceLabels(ep.Namespace)));

    /// <summary>Does the endpoint satisfy the selector parts of a peer (ignoring nets and ports)?</summary>
    public bool MatchesEndpointParts(PeerMatch peer, EndpointInfo? ep)
    {
        if (peer.RequiresEndpoint)
        {
            if (ep is null) return false;
            if (peer.Namespace is not null && peer.Namespace != ep.Namespace) return false;
            if (peer.NamespaceSelector is not null && !peer.NamespaceSelector.Matches(NamespaceLabels(ep.Namespace))) return false;
            if (peer.Selector is not null && !peer.Selector.Matches(LabelsOf(ep))) return false;
        }
        if (peer.NotSelector is not null && ep is not null && peer.NotSelector.Matches(LabelsOf(ep))) return false;
        return true;
    }
}
