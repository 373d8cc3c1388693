using System.Text.Json.Nodes;
using Weft.Client.Documents;
using Weft.Tests.Support;

namespace Weft.Tests.Policy;

/// <summary>One probe of a step: the expected matrix, rows = from, columns = to, in pod order.</summary>
public sealed record NetpolProbe(int Port, string Protocol, bool[][] Expected);

public sealed record NetpolStep(string Description, IReadOnlyList<JsonObject> Actions, IReadOnlyList<NetpolProbe> Probes);

/// <summary>
/// A conformance case (tests/conformance/netpol, format in its README) and the cluster it describes, kept as the
/// v1 Namespace, v1 Pod and NetworkPolicy documents an operator would apply, so the same case drives both
/// `policy simulate` and a real lab through `weftctl apply`.
/// </summary>
public sealed class NetpolCase
{
    public static string Dir => Path.Combine(TestEnv.RepoRoot, "tests", "conformance", "netpol", "k8s-e2e");

    public required string Id { get; init; }
    public required IReadOnlyList<string> PodOrder { get; init; }
    public required IReadOnlyList<NetpolStep> Steps { get; init; }
    public required IReadOnlyList<(int Port, string Protocol)> Model { get; init; }

    // The cluster as it is after the actions so far.
    public Dictionary<string, JsonObject> Namespaces { get; } = new(StringComparer.Ordinal);
    public Dictionary<string, JsonObject> Pods { get; } = new(StringComparer.Ordinal);
    public Dictionary<string, JsonObject> Policies { get; } = new(StringComparer.Ordinal);

    public static IEnumerable<string> Files() => Directory.EnumerateFiles(Dir, "*.yaml").Order(StringComparer.Ordinal);

    public static NetpolCase Load(string file)
    {
        var doc = YamlDocuments.Load(File.ReadAllText(file), file)[0].Doc;
        var cluster = (JsonObject)doc["cluster"]!;
        var c = new NetpolCase
        {
            Id = doc["id"]!.ToString(),
            PodOrder = ((JsonArray)doc["pod_order"]!).Select(p => p!.ToString()).ToList(),
            Model = ((JsonArray)doc["model"]!["ports"]!).SelectMany(p => ((JsonArray)doc["model"]!["protocols"]!).Select(pr => ((int)(long)p!, pr!.ToString()))).ToList(),
            Steps = ((JsonArray)doc["steps"]!).Select(s => new NetpolStep(
                s!["description"]?.ToString() ?? "",
                ((JsonArray?)s["actions"] ?? []).Select(a => (JsonObject)a!).ToList(),
                ((JsonArray?)s["probes"] ?? []).Select(p => Probe((JsonObject)p!, ((JsonArray)doc["pod_order"]!).Select(x => x!.ToString()).ToList())).ToList())).ToList(),
        };
        foreach (var ns in (JsonArray)cluster["namespaces"]!)
        {
            var name = ns!["name"]!.ToString();
            c.Namespaces[name] = new JsonObject
            {
                ["apiVersion"] = "v1", ["kind"] = "Namespace",
                ["metadata"] = new JsonObject { ["name"] = name, ["labels"] = ns["labels"]!.DeepClone() },
            };
        }
        foreach (var pod in (JsonArray)cluster["pods"]!)
        {
            var ns = pod!["namespace"]!.ToString();
            var name = pod["name"]!.ToString();
            var ip = pod["ip"]!.ToString();
            c.Pods[$"{ns}/{name}"] = new JsonObject
            {
                ["apiVersion"] = "v1", ["kind"] = "Pod",
                ["metadata"] = new JsonObject
                {
                    ["name"] = name, ["namespace"] = ns, ["labels"] = pod["labels"]!.DeepClone(),
                    ["annotations"] = new JsonObject { ["cni.projectcalico.org/ipAddrs"] = $"[\"{ip}\"]" },
                },
                ["spec"] = new JsonObject { ["containers"] = new JsonArray(new JsonObject { ["name"] = "serve", ["image"] = "lab", ["ports"] = pod["ports"]!.DeepClone() }) },
                ["status"] = new JsonObject { ["podIP"] = ip },
            };
        }
        return c;
    }

    private static NetpolProbe Probe(JsonObject p, IReadOnlyList<string> order)
    {
        var expected = (JsonObject)p["expected"]!;
        var rows = order.Select(from =>
        {
            var row = expected[from]!.ToString().Replace(" ", "", StringComparison.Ordinal);
            if (row.Length != order.Count) throw new InvalidDataException($"row {from}: '{row}' has {row.Length} cells, expected {order.Count}");
            return row.Select(ch => ch == '1').ToArray();
        }).ToArray();
        return new NetpolProbe((int)(long)p["port"]!, p["protocol"]!.ToString(), rows);
    }

    /// <summary>Applies one action to the cluster model; returns the documents that changed (for `weftctl apply`) or deletions.</summary>
    public (IReadOnlyList<JsonObject> Changed, IReadOnlyList<(string Kind, string Name)> Deleted) Apply(JsonObject action)
    {
        var (verb, body) = action.Single();
        switch (verb)
        {
            case "createPolicy" or "updatePolicy":
            {
                var policy = (JsonObject)body!.DeepClone();
                var key = $"{policy["metadata"]!["namespace"]}/{policy["metadata"]!["name"]}";
                Policies[key] = policy;
                return ([policy], []);
            }
            case "deletePolicy":
            {
                var key = $"{body!["namespace"]}/{body["name"]}";
                Policies.Remove(key);
                return ([], [("networkpolicy", key)]);
            }
            case "deleteAllPolicies":
            {
                var keys = Policies.Keys.ToList();
                Policies.Clear();
                return ([], keys.Select(k => ("networkpolicy", k)).ToList());
            }
            case "addPodLabels":
            {
                var pod = Pods[$"{body!["namespace"]}/{body["pod"]}"];
                var labels = (JsonObject)pod["metadata"]!["labels"]!;
                foreach (var (k, v) in (JsonObject)body["labels"]!) labels[k] = v!.DeepClone();
                return ([pod], []);
            }
            case "addNamespaceLabels":
            {
                var ns = Namespaces[body!["namespace"]!.ToString()];
                var labels = (JsonObject)ns["metadata"]!["labels"]!;
                foreach (var (k, v) in (JsonObject)body["labels"]!) labels[k] = v!.DeepClone();
                return ([ns], []);
            }
            default: throw new InvalidDataException($"unknown action {verb}");
        }
    }

    /// <summary>Every document of the current cluster: namespaces, pods in pod order, policies.</summary>
    public IEnumerable<JsonObject> Documents() =>
        Namespaces.Values.Concat(PodOrder.Select(k => Pods[k])).Concat(Policies.Values);

    /// <summary>Cells that differ from the expectation (the diagonal is ignored, as upstream does).</summary>
    public IReadOnlyList<string> Mismatches(NetpolProbe probe, IReadOnlyList<string> pods, bool[][] actual)
    {
        var list = new List<string>();
        for (var i = 0; i < PodOrder.Count; i++)
            for (var j = 0; j < PodOrder.Count; j++)
            {
                if (i == j) continue;
                var ai = IndexOf(pods, PodOrder[i]);
                var aj = IndexOf(pods, PodOrder[j]);
                if (actual[ai][aj] != probe.Expected[i][j])
                    list.Add($"{PodOrder[i]} -> {PodOrder[j]} {probe.Protocol}/{probe.Port}: expected {(probe.Expected[i][j] ? "connected" : "blocked")}, got {(actual[ai][aj] ? "connected" : "blocked")}");
            }
        return list;
    }

    private static int IndexOf(IReadOnlyList<string> pods, string key)
    {
        for (var i = 0; i < pods.Count; i++) if (pods[i] == key) return i;
        throw new InvalidDataException($"pod {key} missing from the matrix");
    }
}
