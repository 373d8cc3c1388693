using System.Net;
using System.Text.Json;
using System.Text.Json.Nodes;
using Weft.Client.Documents;
using Weft.Client.Output;
using Weft.Policy;
using Weft.Policy.Dialects;
using Weft.Policy.Ir;
using Weft.Resources;

namespace Weft.Ctl.Commands;

/// <summary>A cluster described by documents: namespaces, pods (in the order given) and policies.</summary>
public sealed record PolicyScenario(PolicySet Policies, PolicyWorld World, IReadOnlyList<EndpointInfo> Pods)
{
    /// <summary>Later documents replace earlier ones of the same kind and name (as successive applies would).</summary>
    public static PolicyScenario FromResources(IEnumerable<Resource> resources, TextWriter? notes = null)
    {
        var namespaces = new Dictionary<string, NamespaceInfo>(StringComparer.Ordinal);
        var pods = new Dictionary<string, PodDocument>(StringComparer.Ordinal);
        var order = new List<string>();
        var policies = new Dictionary<string, PolicyIr>(StringComparer.Ordinal);
        var tiers = new Dictionary<string, double>(StringComparer.Ordinal);
        foreach (var r in resources)
        {
            switch (r)
            {
                case NamespaceResource n: namespaces[n.Namespace.Name] = n.Namespace; break;
                case PodResource p:
                    var key = $"{p.Pod.Namespace}/{p.Pod.Name}";
                    if (!pods.ContainsKey(key)) order.Add(key);
                    pods[key] = p.Pod;
                    break;
                case PolicyResource pol: policies[pol.Policy.Id] = pol.Policy; break;
                case TierResource t: tiers[t.TierName] = t.Order; break;
                default: notes?.WriteLine($"note: {r.Source}: {r.Kind} {r.Name} does not affect policy; ignored"); break;
            }
        }
        var missing = order.Where(k => pods[k].Addresses.Count == 0).ToList();
        if (missing.Count > 0)
            throw new ResourceException($"pod(s) {string.Join(", ", missing)} have no status.podIP; give every pod an address so ipBlock rules can be decided");
        var endpoints = order.Select(k => pods[k].ToEndpoint()).ToList();
        var duplicates = endpoints.SelectMany(e => e.Addresses.Select(a => (a, e.Key))).GroupBy(x => x.a).Where(g => g.Count() > 1).ToList();
        if (duplicates.Count > 0)
            throw new ResourceException($"address {duplicates[0].Key} is given to more than one pod: {string.Join(", ", duplicates[0].Select(x => x.Key))}");
        return new PolicyScenario(new PolicySet(policies.Values, tiers), new PolicyWorld(namespaces.Values, endpoints), endpoints);
    }

    public static PolicyScenario FromSnapshot(PolicySnapshot s) => new(s.Policies, s.World, s.World.Endpoints);
}

/// <summary>`weftctl policy simulate` and `weftctl policy trace`.</summary>
public static class PolicyCommands
{
    private const int ClientPort = 40000;

    public static Task<int> SimulateAsync(CtlContext ctx, IReadOnlyList<string> files, int port, string protocol, string output)
    {
        var proto = ParseProtocol(protocol);
        CheckPort(port);
        var resources = YamlDocuments.ResourcesFrom(files);
        var scenario = PolicyScenario.FromResources(resources, ctx.Err);
        var allowed = Matrix(scenario, port, proto);
        var names = scenario.Pods.Select(p => p.Key).ToList();
        switch (output)
        {
            case "json": ctx.Out.WriteLine(MatrixView.Json(port, Protocols.Name(proto), names, allowed)); break;
            case "table" or "": MatrixView.Render(ctx.Out, port, Protocols.Name(proto), names, allowed); break;
            default: throw new ArgumentException($"-o {output}: use table or json");
        }
        return Task.FromResult(0);
    }

    /// <summary>allowed[i][j]: may pods[i] open a connection to pods[j] on this port?</summary>
    public static bool[][] Matrix(PolicyScenario scenario, int port, int protocol)
    {
        var evaluator = new PolicyEvaluator(scenario.Policies, scenario.World);
        var pods = scenario.Pods;
        var allowed = new bool[pods.Count][];
        for (var i = 0; i < pods.Count; i++)
        {
            allowed[i] = new bool[pods.Count];
            for (var j = 0; j < pods.Count; j++)
                allowed[i][j] = evaluator.Evaluate(ConnectionFor(pods[i], pods[j], port, protocol)).Allowed;
        }
        return allowed;
    }

    private static Connection ConnectionFor(EndpointInfo from, EndpointInfo to, int port, int protocol)
    {
        // Same family on both ends: IPv4 when both have one.
        var dst = to.Addresses.FirstOrDefault(a => a.AddressFamily == System.Net.Sockets.AddressFamily.InterNetwork) ?? to.Addresses[0];
        var src = from.Addresses.FirstOrDefault(a => a.AddressFamily == dst.AddressFamily) ?? from.Addresses[0];
        return new Connection(src, dst, protocol, ClientPort, port);
    }

    public static async Task<int> TraceAsync(CtlContext ctx, IReadOnlyList<string> files, string from, string to, int port, string protocol, string output, CancellationToken ct)
    {
        var proto = ParseProtocol(protocol);
        CheckPort(port);
        PolicyScenario scenario;
        if (files.Count > 0)
            scenario = PolicyScenario.FromResources(YamlDocuments.ResourcesFrom(files), ctx.Err);
        else
        {
            using var store = ctx.OpenStore();
            var snapshot = await PolicyStore.LoadAsync(store, ct).ConfigureAwait(false);
            foreach (var e in snapshot.Errors) await ctx.Err.WriteLineAsync("warning: " + e).ConfigureAwait(false);
            scenario = PolicyScenario.FromSnapshot(snapshot);
        }
        var src = Resolve(scenario, from, "--from");
        var dst = Resolve(scenario, to, "--to");
        var connection = ConnectionFor(src, dst, port, proto);
        var verdict = new PolicyEvaluator(scenario.Policies, scenario.World).Evaluate(connection);
        if (output == "json")
        {
            JsonObject Side(DirectionVerdict? d) => d is null ? new JsonObject { ["evaluated"] = false } : new JsonObject
            {
                ["evaluated"] = true, ["allowed"] = d.Allowed, ["reason"] = d.Reason, ["policy"] = d.Policy?.Display,
                ["rule"] = d.Rule?.Origin, ["steps"] = new JsonArray(d.Steps.Select(s => (JsonNode?)s).ToArray()),
            };
            var doc = new JsonObject
            {
                ["from"] = src.Key, ["to"] = dst.Key, ["source"] = connection.Source.ToString(), ["destination"] = connection.Destination.ToString(),
                ["protocol"] = Protocols.Name(proto), ["port"] = port, ["allowed"] = verdict.Allowed,
                ["egress"] = Side(verdict.Egress), ["ingress"] = Side(verdict.Ingress),
            };
            await ctx.Out.WriteLineAsync(doc.ToJsonString(new JsonSerializerOptions { WriteIndented = true })).ConfigureAwait(false);
            return 0;
        }
        await ctx.Out.WriteLineAsync($"{src.Key} ({connection.Source}) -> {dst.Key} ({connection.Destination}) {Protocols.Name(proto)}/{port}").ConfigureAwait(false);
        foreach (var (label, d) in new[] { ("egress at " + src.Key, verdict.Egress), ("ingress at " + dst.Key, verdict.Ingress) })
        {
            if (d is null)
            {
                await ctx.Out.WriteLineAsync($"  {label}: not evaluated (the connection was already decided)").ConfigureAwait(false);
                continue;
            }
            await ctx.Out.WriteLineAsync($"  {label}: {(d.Allowed ? "ALLOWED" : "DENIED")}: {d.Reason}").ConfigureAwait(false);
            foreach (var step in d.Steps) await ctx.Out.WriteLineAsync("    - " + step).ConfigureAwait(false);
        }
        await ctx.Out.WriteLineAsync($"verdict: {(verdict.Allowed ? "FORWARDED" : "DROPPED")}").ConfigureAwait(false);
        return 0;
    }

    private static EndpointInfo Resolve(PolicyScenario s, string text, string flag)
    {
        if (IPAddress.TryParse(text, out var ip))
            return s.World.EndpointAt(ip) ?? throw new ArgumentException($"{flag} {text}: no pod has this address");
        var key = text.Contains('/', StringComparison.Ordinal) ? text : "default/" + text;
        return s.Pods.FirstOrDefault(p => p.Key == key) ?? throw new ArgumentException($"{flag} {text}: no such pod; known pods: {string.Join(", ", s.Pods.Select(p => p.Key).Take(20))}");
    }

    private static int ParseProtocol(string protocol)
    {
        var p = protocol.ToUpperInvariant() switch { "TCP" => Protocols.Tcp, "UDP" => Protocols.Udp, "SCTP" => Protocols.Sctp, _ => 0 };
        return p != 0 ? p : throw new ArgumentException($"--protocol {protocol}: use TCP, UDP or SCTP");
    }

    private static void CheckPort(int port)
    {
        if (port is < 1 or > 65535) throw new ArgumentException($"--port {port}: use 1-65535");
    }
}
