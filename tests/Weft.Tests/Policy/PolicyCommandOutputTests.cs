using System.Text.Json.Nodes;
using Weft.Ctl.Commands;
using Weft.Tests.Support;

namespace Weft.Tests.Policy;

/// <summary>`weftctl policy simulate -o json` speaks `lab matrix`'s JSON; `policy trace` names the deciding policy and rule.</summary>
public sealed class PolicyCommandOutputTests : IDisposable
{
    private readonly string _dir = TestEnv.TempDir("policy-cmd");
    private readonly string _cluster;
    private readonly string _seed = Path.Combine(TestEnv.RepoRoot, "examples", "policies", "deny-all-egress.yaml");
    private readonly StringWriter _out = new(), _err = new();
    private readonly CtlContext _ctx;

    public PolicyCommandOutputTests()
    {
        _cluster = Path.Combine(_dir, "cluster.yaml");
        File.WriteAllText(_cluster, PolicyWorlds.Cluster);
        // Never opened: simulate and trace with -f read only the files.
        _ctx = new CtlContext("sqlite://" + Path.Combine(_dir, "unused.db"), _out, _err);
    }

    public void Dispose()
    {
        _out.Dispose();
        _err.Dispose();
        Directory.Delete(_dir, recursive: true);
    }

    [Fact]
    public async Task Simulate_json_has_exactly_the_lab_matrix_shape()
    {
        Assert.Equal(0, await PolicyCommands.SimulateAsync(_ctx, [_cluster, _seed], 5432, "tcp", "json"));
        var lines = _out.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Single(lines);
        var doc = JsonNode.Parse(lines[0])!.AsObject();
        Assert.Equal(["port", "protocol", "pods", "allowed"], doc.Select(p => p.Key));
        Assert.Equal(5432, doc["port"]!.GetValue<int>());
        Assert.Equal("TCP", doc["protocol"]!.GetValue<string>());
        var pods = doc["pods"]!.AsArray().Select(p => p!.GetValue<string>()).ToList();
        Assert.Equal(PolicyWorlds.Pods, pods);
        var allowed = doc["allowed"]!.AsArray().Select(row => row!.AsArray().Select(c => c!.GetValue<bool>()).ToArray()).ToArray();
        Assert.All(allowed, row => Assert.Equal(pods.Count, row.Length));
        PolicyWorlds.AssertMatrix(["x.. .. .", "xxx xx x", "xxx xx x", "... x. .", "xxx xx x", "xxx xx x"], allowed, "simulate -o json");
        // Byte for byte what `lab matrix -o json` prints for the same matrix.
        Assert.Equal(Weft.Client.Output.MatrixView.Json(5432, "TCP", pods, allowed), lines[0]);
    }

    [Fact]
    public async Task Simulate_table_lists_every_pod()
    {
        Assert.Equal(0, await PolicyCommands.SimulateAsync(_ctx, [_cluster, _seed], 80, "TCP", "table"));
        var text = _out.ToString();
        Assert.StartsWith("TCP/80:", text, StringComparison.Ordinal);
        Assert.All(PolicyWorlds.Pods, p => Assert.Contains(p, text, StringComparison.Ordinal));
    }

    [Fact]
    public async Task Trace_names_the_policy_and_rule_that_denied()
    {
        Assert.Equal(0, await PolicyCommands.TraceAsync(_ctx, [_cluster, _seed], "prod/db", "prod/web", 80, "TCP", "text", CancellationToken.None));
        var text = _out.ToString();
        Assert.Contains("egress at prod/db: DENIED: denied by GlobalNetworkPolicy deny-all-egress rule egress[0]", text, StringComparison.Ordinal);
        Assert.Contains("ingress at prod/web: not evaluated", text, StringComparison.Ordinal);
        Assert.Contains("verdict: DROPPED", text, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Trace_json_names_the_policy_and_rule_and_the_allowed_direction()
    {
        Assert.Equal(0, await PolicyCommands.TraceAsync(_ctx, [_cluster, _seed], "10.1.2.1", "dev/web", 80, "TCP", "json", CancellationToken.None));
        var denied = JsonNode.Parse(_out.ToString())!.AsObject();
        Assert.False(denied["allowed"]!.GetValue<bool>());
        Assert.Equal("dev/db", denied["from"]!.GetValue<string>());
        Assert.Equal("GlobalNetworkPolicy deny-all-egress", denied["egress"]!["policy"]!.GetValue<string>());
        Assert.Equal("egress[0]", denied["egress"]!["rule"]!.GetValue<string>());
        Assert.False(denied["ingress"]!["evaluated"]!.GetValue<bool>());

        _out.GetStringBuilder().Clear();
        Assert.Equal(0, await PolicyCommands.TraceAsync(_ctx, [_cluster, _seed], "dev/web", "dev/db", 80, "TCP", "json", CancellationToken.None));
        var allowed = JsonNode.Parse(_out.ToString())!.AsObject();
        Assert.True(allowed["allowed"]!.GetValue<bool>());
        Assert.Equal("allowed: no ingress policy selects dev/db", allowed["ingress"]!["reason"]!.GetValue<string>());
        Assert.Null(allowed["ingress"]!["policy"]);
    }

    [Fact]
    public async Task Trace_names_a_Kubernetes_rule_by_its_peer()
    {
        var k8s = Path.Combine(_dir, "k8s.yaml");
        await File.WriteAllTextAsync(k8s, """
            apiVersion: networking.k8s.io/v1
            kind: NetworkPolicy
            metadata: {name: db, namespace: prod}
            spec:
              podSelector: {matchLabels: {app: database}}
              ingress:
                - from: [{podSelector: {matchLabels: {app: tool}}}, {podSelector: {matchLabels: {app: web}}}]
            """);
        Assert.Equal(0, await PolicyCommands.TraceAsync(_ctx, [_cluster, k8s], "prod/web", "prod/db", 80, "TCP", "text", CancellationToken.None));
        Assert.Contains("ingress at prod/db: ALLOWED: allowed by NetworkPolicy prod/db (kubernetes) rule ingress[0].from[1]", _out.ToString(), StringComparison.Ordinal);
    }
}
