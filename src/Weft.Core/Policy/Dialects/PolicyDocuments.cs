using System.Net;
using System.Text.Json.Nodes;
using Weft.Policy.Dialects.Calico;
using Weft.Policy.Dialects.Kubernetes;
using Weft.Policy.Ir;
using Weft.Resources;

namespace Weft.Policy.Dialects;

/// <summary>A Kubernetes Pod as policy needs it: identity, labels, named ports, and its address when the document has one.</summary>
public sealed record PodDocument(string Namespace, string Name, IReadOnlyDictionary<string, string> Labels,
    IReadOnlyList<NamedPort> Ports, IReadOnlyList<IPAddress> Addresses, string? NodeName)
{
    public EndpointInfo ToEndpoint(IReadOnlyList<IPAddress>? addresses = null, string? node = null, string? hostInterface = null) =>
        new(Namespace, Name, Labels, addresses ?? Addresses, Ports, node ?? NodeName, hostInterface);
}

/// <summary>
/// The one entry point from a decoded document (any dialect) to the policy model: which kinds are policy kinds,
/// and readers for them and for the v1 Namespace and Pod documents that carry the labels selectors match.
/// </summary>
public static class PolicyDocuments
{
    public const string CalicoApiVersion = "projectcalico.org/v3";

    /// <summary>True when (apiVersion, kind) is a policy document: Kubernetes or Calico NetworkPolicy, GlobalNetworkPolicy.</summary>
    public static bool IsPolicy(string apiVersion, string kind) =>
        (kind == "NetworkPolicy" && apiVersion is KubernetesPolicyReader.ApiVersion or CalicoApiVersion) ||
        (kind == "GlobalNetworkPolicy" && apiVersion == CalicoApiVersion);

    /// <summary>The store/id prefix of a policy document: knp (Kubernetes), np (Calico namespaced), gnp (global).</summary>
    public static string IdFor(string apiVersion, string kind, string? ns, string name) =>
        kind == "GlobalNetworkPolicy" ? $"gnp/{name}" : apiVersion == CalicoApiVersion ? $"np/{ns}/{name}" : $"knp/{ns}/{name}";

    /// <summary>Reads a policy document; <paramref name="where"/> prefixes every error ("file, document 2 (NetworkPolicy x/web)").</summary>
    public static PolicyIr ReadPolicy(JsonObject doc, string where)
    {
        var apiVersion = doc["apiVersion"]?.ToString() ?? "";
        var kind = doc["kind"]?.ToString() ?? "";
        var meta = new Fields(doc["metadata"] as JsonObject ?? throw new ResourceException($"{where}: metadata is missing"), where, "metadata");
        var name = meta.String("name") ?? throw meta.Error("name", "is required");
        var spec = new Fields(doc["spec"] as JsonObject ?? throw new ResourceException($"{where}: spec is missing or not a mapping"), where, "spec");
        if (kind == "GlobalNetworkPolicy")
        {
            if (meta.Has("namespace")) throw meta.Error("namespace", "GlobalNetworkPolicy is not namespaced; remove metadata.namespace");
            return CalicoPolicyReader.Read(spec, kind, null, name);
        }
        var ns = meta.String("namespace") ?? "default";
        return apiVersion == CalicoApiVersion ? CalicoPolicyReader.Read(spec, kind, ns, name) : KubernetesPolicyReader.Read(spec, ns, name);
    }

    public static NamespaceInfo ReadNamespace(JsonObject doc, string where)
    {
        var meta = new Fields(doc["metadata"] as JsonObject ?? throw new ResourceException($"{where}: metadata is missing"), where, "metadata");
        return new NamespaceInfo(meta.String("name") ?? throw meta.Error("name", "is required"), meta.StringMap("labels"));
    }

    /// <summary>A v1 Pod: metadata (name, namespace, labels), spec.nodeName, spec.containers[].ports, status.podIP(s).
    /// Other Pod fields are Kubernetes' business and are ignored, so `kubectl get pod -o yaml` output works.</summary>
    public static PodDocument ReadPod(JsonObject doc, string where)
    {
        var meta = new Fields(doc["metadata"] as JsonObject ?? throw new ResourceException($"{where}: metadata is missing"), where, "metadata");
        var name = meta.String("name") ?? throw meta.Error("name", "is required");
        var ns = meta.String("namespace") ?? "default";
        var spec = doc["spec"] is JsonObject s ? new Fields(s, where, "spec") : (Fields?)null;
        var ports = new List<NamedPort>();
        if (spec?.Objects("containers") is { } containers)
            foreach (var c in containers)
                foreach (var p in c.Objects("ports") ?? [])
                {
                    var number = p.Int("containerPort") ?? throw p.Error("containerPort", "is required");
                    Fields.CheckPort(p, "containerPort", number);
                    var protoText = p.String("protocol") ?? "TCP";
                    if (protoText is not ("TCP" or "UDP" or "SCTP")) throw p.Error("protocol", $"'{protoText}' is not TCP, UDP or SCTP");
                    var proto = protoText switch { "TCP" => Protocols.Tcp, "UDP" => Protocols.Udp, _ => Protocols.Sctp };
                    if (p.String("name") is { } portName) ports.Add(new NamedPort(portName, number, proto));
                    else ports.Add(new NamedPort("", number, proto));
                }
        var addresses = new List<IPAddress>();
        // A pod that ended (Succeeded, Failed) keeps its status.podIP in the API while the address goes to another pod;
        // a host-network pod's podIP is its node's. Neither is a pod peer at that address (Calico and Cilium skip both).
        var ended = doc["status"] is JsonObject so && so["phase"] is JsonValue pv && pv.TryGetValue<string>(out var phase) && phase is "Succeeded" or "Failed";
        if (doc["status"] is JsonObject st && !ended && spec?.Bool("hostNetwork") != true)
        {
            var status = new Fields(st, where, "status");
            if (status.String("podIP") is { } ip) addresses.Add(ParseIp(status, "podIP", ip));
            foreach (var entry in status.Objects("podIPs") ?? [])
                if (entry.String("ip") is { } more && ParseIp(entry, "ip", more) is var a && !addresses.Contains(a)) addresses.Add(a);
        }
        return new PodDocument(ns, name, meta.StringMap("labels"), ports, addresses, spec?.String("nodeName"));
    }

    private static IPAddress ParseIp(Fields f, string field, string text) =>
        IPAddress.TryParse(text, out var a) && !text.Contains('/', StringComparison.Ordinal) ? a : throw f.Error(field, $"'{text}' is not an IP address");

    /// <summary>A Calico Tier: its order decides when its policies run (lower first).</summary>
    public static (string Name, double Order) ReadTier(JsonObject doc, string where)
    {
        var meta = new Fields(doc["metadata"] as JsonObject ?? throw new ResourceException($"{where}: metadata is missing"), where, "metadata");
        var name = meta.String("name") ?? throw meta.Error("name", "is required");
        var spec = new Fields(doc["spec"] as JsonObject ?? new JsonObject(), where, "spec");
        spec.RejectUnknown("order", "defaultAction");
        var order = spec.Number("order") ?? (name == PolicySet.DefaultTier ? 1_000_000 : throw spec.Error("order", "is required"));
        if (spec.String("defaultAction") is { } a && a != "Deny") throw spec.Error("defaultAction", "only Deny (the end-of-tier drop) is supported");
        return (name, order);
    }
}
