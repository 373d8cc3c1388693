using System.Text.Json;
using System.Text.Json.Nodes;
using Weft.Client.Documents;
using Weft.Resources;

namespace Weft.Lab;

/// <summary>
/// The lab's cluster description: a YAML stream of v1 Namespace and v1 Pod documents (labels, annotations,
/// spec.nodeName, container ports), or the default of pods spread over the nodes serving 80/TCP, 81/TCP, 80/UDP.
/// </summary>
public static class Topology
{
    public const string PinAnnotation = "cni.projectcalico.org/ipAddrs";

    public static (List<LabNamespace> Namespaces, List<LabPod> Pods) Default(string lab, IReadOnlyList<LabNode> nodes, int podsPerNode)
    {
        var pods = new List<LabPod>();
        var n = 0;
        for (var i = 0; i < podsPerNode; i++)
            foreach (var node in nodes)
            {
                n++;
                pods.Add(NewPod(lab, "default", $"pod-{n}", node.Name, new() { ["app"] = $"pod-{n}" }, [],
                    [new LabPort { Name = "http", ContainerPort = 80 }, new LabPort { Name = "alt", ContainerPort = 81 }, new LabPort { Name = "dns", ContainerPort = 80, Protocol = "UDP" }]));
            }
        return ([new LabNamespace { Name = "default", Labels = new() { ["kubernetes.io/metadata.name"] = "default" } }], pods);
    }

    public static (List<LabNamespace> Namespaces, List<LabPod> Pods) Load(string lab, string file, IReadOnlyList<LabNode> nodes)
    {
        var namespaces = new Dictionary<string, LabNamespace>(StringComparer.Ordinal);
        var pods = new List<LabPod>();
        var spread = 0;
        foreach (var (doc, source) in YamlDocuments.LoadPaths([file]))
        {
            var kind = doc["kind"]?.ToString();
            var meta = doc["metadata"] as JsonObject ?? throw new ResourceException($"{source}: metadata is missing");
            var name = meta["name"]?.ToString() ?? throw new ResourceException($"{source}: metadata.name is missing");
            var labels = Map(meta["labels"], source, "metadata.labels");
            switch (kind)
            {
                case "Namespace":
                    labels.TryAdd("kubernetes.io/metadata.name", name);
                    namespaces[name] = new LabNamespace { Name = name, Labels = labels };
                    break;
                case "Pod":
                    var ns = meta["namespace"]?.ToString() ?? "default";
                    var spec = doc["spec"] as JsonObject;
                    var nodeName = spec?["nodeName"]?.ToString();
                    if (nodeName is not null && nodes.All(x => x.Name != nodeName))
                        throw new ResourceException($"{source} (Pod {ns}/{name}): spec.nodeName '{nodeName}' is not a lab node ({string.Join(", ", nodes.Select(x => x.Name))})");
                    nodeName ??= nodes[spread++ % nodes.Count].Name;
                    var ports = new List<LabPort>();
                    if (spec?["containers"] is JsonArray containers)
                        foreach (var c in containers.OfType<JsonObject>())
                            if (c["ports"] is JsonArray ps)
                                foreach (var p in ps.OfType<JsonObject>())
                                {
                                    var port = p["containerPort"]?.GetValueKind() == JsonValueKind.Number ? p["containerPort"]!.GetValue<long>() : -1;
                                    if (port is < 1 or > 65535) throw new ResourceException($"{source} (Pod {ns}/{name}): containerPort {p["containerPort"]} is not a port");
                                    var proto = p["protocol"]?.ToString() ?? "TCP";
                                    if (proto is not ("TCP" or "UDP" or "SCTP")) throw new ResourceException($"{source} (Pod {ns}/{name}): protocol '{proto}' is not TCP, UDP or SCTP");
                                    ports.Add(new LabPort { Name = p["name"]?.ToString(), ContainerPort = (int)port, Protocol = proto });
                                }
                    var annotations = Map(meta["annotations"], source, "metadata.annotations");
                    if (pods.Any(x => x.Namespace == ns && x.Name == name)) throw new ResourceException($"{source}: Pod {ns}/{name} is defined twice");
                    pods.Add(NewPod(lab, ns, name, nodeName, labels, annotations, ports));
                    namespaces.TryAdd(ns, new LabNamespace { Name = ns, Labels = new() { ["kubernetes.io/metadata.name"] = ns } });
                    break;
                default:
                    throw new ResourceException($"{source}: kind '{kind}' is not a v1 Namespace or Pod");
            }
        }
        if (pods.Count == 0) throw new ResourceException($"{file}: no Pods");
        return (namespaces.Values.ToList(), pods);
    }

    public static LabPod NewPod(string lab, string ns, string name, string node, Dictionary<string, string> labels, Dictionary<string, string> annotations, List<LabPort> ports) => new()
    {
        Namespace = ns, Name = name, Node = node, Netns = $"{lab}-p-{ns}-{name}", ContainerId = $"{lab}-{ns}-{name}",
        Labels = labels, Annotations = annotations, Ports = ports,
    };

    private static Dictionary<string, string> Map(JsonNode? node, DocumentSource source, string field)
    {
        var result = new Dictionary<string, string>(StringComparer.Ordinal);
        if (node is null) return result;
        if (node is not JsonObject o) throw new ResourceException($"{source}: {field} must be a mapping");
        foreach (var (k, v) in o) result[k] = v?.ToString() ?? "";
        return result;
    }

    /// <summary>Calico's pinned-address annotation: a JSON list of addresses.</summary>
    public static IReadOnlyList<string> PinnedAddresses(LabPod pod)
    {
        if (!pod.Annotations.TryGetValue(PinAnnotation, out var text)) return [];
        try { return JsonSerializer.Deserialize(text, LabPinJson.Default.ListString) ?? []; }
        catch (JsonException) { throw new ResourceException($"Pod {pod.Key}: annotation {PinAnnotation} must be a JSON list like [\"10.244.1.10\"]"); }
    }
}

[System.Text.Json.Serialization.JsonSerializable(typeof(List<string>))]
internal sealed partial class LabPinJson : System.Text.Json.Serialization.JsonSerializerContext;
