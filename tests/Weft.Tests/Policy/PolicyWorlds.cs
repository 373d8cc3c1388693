using System.Text;
using Weft.Ctl.Commands;
using Weft.Client.Documents;
using Weft.Policy.Ir;
using Weft.Resources;

namespace Weft.Tests.Policy;

/// <summary>
/// The small cluster the dialect tests run against, written as the v1 documents an operator would apply, and
/// helpers to turn YAML into a <see cref="PolicyScenario"/> and compare reachability matrices.
/// </summary>
internal static class PolicyWorlds
{
    /// <summary>Pod order of <see cref="Cluster"/>: the rows and columns of every matrix.</summary>
    public static readonly string[] Pods = ["prod/db", "prod/web", "prod/bare", "dev/db", "dev/web", "ops/tool"];

    public const string Cluster = """
        apiVersion: v1
        kind: Namespace
        metadata: {name: prod, labels: {env: prod}}
        ---
        apiVersion: v1
        kind: Namespace
        metadata: {name: dev, labels: {env: dev}}
        ---
        apiVersion: v1
        kind: Namespace
        metadata: {name: ops, labels: {env: ops, team: infra}}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: db, namespace: prod, labels: {app: database, tier: backend}}
        spec: {containers: [{name: pg, ports: [{name: pg, containerPort: 5432}]}]}
        status: {podIP: 10.1.1.1}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: web, namespace: prod, labels: {app: web, tier: frontend}}
        spec: {containers: [{name: web, ports: [{name: http, containerPort: 8080}, {name: dns, containerPort: 53, protocol: UDP}]}]}
        status: {podIP: 10.1.1.2}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: bare, namespace: prod}
        status: {podIP: 10.1.1.3}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: db, namespace: dev, labels: {app: database, tier: backend, version: v2}}
        spec: {containers: [{name: pg, ports: [{name: pg, containerPort: 5433}]}]}
        status: {podIP: 10.1.2.1}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: web, namespace: dev, labels: {app: web}}
        status: {podIP: 10.1.2.2}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: tool, namespace: ops, labels: {app: tool, role: admin}}
        status: {podIP: 10.1.3.1}
        """;

    public static IReadOnlyList<Resource> Read(string yaml, string file = "case.yaml") =>
        YamlDocuments.Resources(yaml, file);

    /// <summary>The cluster plus the policies (and tiers) in <paramref name="policiesYaml"/>.</summary>
    public static PolicyScenario Scenario(string policiesYaml, bool checkPods = true)
    {
        var scenario = PolicyScenario.FromResources(Read(Cluster, "cluster.yaml").Concat(Read(policiesYaml)));
        if (checkPods) Assert.Equal(Pods, scenario.Pods.Select(p => p.Key));
        return scenario;
    }

    public static bool[][] Matrix(PolicyScenario scenario, int port, string protocol)
    {
        Assert.True(Protocols.TryParse(protocol, out var proto));
        return PolicyCommands.Matrix(scenario, port, proto);
    }

    /// <summary>Rows like "x.x xx x": row = from, column = to, 'x' connects, '.' blocked; spaces are for the eye.</summary>
    public static bool[][] Parse(IReadOnlyList<string> rows)
    {
        Assert.Equal(Pods.Length, rows.Count);
        return rows.Select(r =>
        {
            var cells = r.Replace(" ", "", StringComparison.Ordinal);
            Assert.Equal(Pods.Length, cells.Length);
            return cells.Select(c => c switch { 'x' => true, '.' => false, _ => throw new ArgumentException($"bad cell '{c}' in \"{r}\"") }).ToArray();
        }).ToArray();
    }

    public static string Render(bool[][] m)
    {
        var sb = new StringBuilder();
        for (var i = 0; i < m.Length; i++)
            sb.Append(Pods[i].PadRight(10)).Append(string.Concat(m[i].Select((b, j) => (j is 3 or 5 ? " " : "") + (b ? "x" : ".")))).Append('\n');
        return sb.ToString();
    }

    public static void AssertMatrix(IReadOnlyList<string> expectedRows, bool[][] actual, string what)
    {
        var expected = Parse(expectedRows);
        var diffs = new List<string>();
        for (var i = 0; i < Pods.Length; i++)
            for (var j = 0; j < Pods.Length; j++)
                if (expected[i][j] != actual[i][j])
                    diffs.Add($"{Pods[i]} -> {Pods[j]}: expected {(expected[i][j] ? "allowed" : "blocked")}");
        Assert.True(diffs.Count == 0, $"{what}\n{string.Join("\n", diffs)}\nexpected:\n{Render(expected)}actual:\n{Render(actual)}");
    }

    public static readonly string[] AllAllowed = ["xxx xx x", "xxx xx x", "xxx xx x", "xxx xx x", "xxx xx x", "xxx xx x"];

    /// <summary>Both database pods accept nothing but themselves.</summary>
    public static readonly string[] DatabasesIsolated = ["xxx .x x", ".xx .x x", ".xx .x x", ".xx xx x", ".xx .x x", ".xx .x x"];
}
