using System.Globalization;
using System.Text.Json.Nodes;
using Weft.Client.Documents;
using Weft.Tests.Policy;
using Weft.Tests.Support;

namespace Weft.Tests.Lab;

/// <summary>
/// The Calico-dialect cases (tiers, order, Deny/Pass/Log, nets, selectors, named ports) with real packets: the
/// dialect tests' cluster as a 3-node lab, every pod pinned to its address in the cases' world (an IPPool of
/// 10.1.0.0/16 and Calico's ipAddrs annotation) and serving every port a case probes; each case's documents applied
/// with `--wait`, the lab's reachability matrix compared with the expected one, then the documents deleted.
/// </summary>
public class CalicoLabFixture : LabFixture
{
    public CalicoLabFixture() : this(null) { }

    protected CalicoLabFixture(string? dataplane)
    {
        if (!TestEnv.IsRoot) return;
        var probes = CalicoDialectTests.Cases.Values.SelectMany(c => c.Probes).Select(p => (p.Port, p.Protocol)).Distinct().ToList();
        var nodes = new Dictionary<string, string> { ["prod"] = "node-1", ["dev"] = "node-2", ["ops"] = "node-3" };
        var docs = new List<JsonObject>();
        foreach (var (doc, _) in YamlDocuments.Load(PolicyWorlds.Cluster, "cluster.yaml"))
        {
            if (doc["kind"]!.ToString() == "Pod")
            {
                var meta = doc["metadata"]!.AsObject();
                meta["annotations"] = new JsonObject { ["cni.projectcalico.org/ipAddrs"] = $"[\"{doc["status"]!["podIP"]}\"]" };
                doc.Remove("status");
                var spec = doc["spec"] as JsonObject ?? new JsonObject();
                doc["spec"] = spec;
                spec["nodeName"] = nodes[meta["namespace"]!.ToString()];
                if (spec["containers"] is not JsonArray containers) spec["containers"] = containers = [new JsonObject { ["name"] = "main" }];
                var first = containers[0]!.AsObject();
                if (first["ports"] is not JsonArray ports) first["ports"] = ports = [];
                bool Declared(int port, string proto) => containers.SelectMany(c => c!["ports"] as JsonArray ?? []).Any(p =>
                    int.Parse(p!["containerPort"]!.ToString(), CultureInfo.InvariantCulture) == port && (p["protocol"]?.ToString() ?? "TCP") == proto);
                foreach (var (port, proto) in probes.Where(p => !Declared(p.Port, p.Protocol)))
                    ports.Add(new JsonObject { ["name"] = $"serve-{port}-{proto.ToLowerInvariant()}", ["containerPort"] = port, ["protocol"] = proto });
            }
            docs.Add(doc);
        }
        var topology = Path.Combine(Path.GetTempPath(), $"weft-calico-topology-{Lab.Name}.yaml");
        var pool = Path.Combine(Path.GetTempPath(), $"weft-calico-pool-{Lab.Name}.yaml");
        File.WriteAllText(topology, string.Join("\n---\n", docs.Select(d => d.ToJsonString())));
        File.WriteAllText(pool, """
            apiVersion: projectcalico.org/v3
            kind: IPPool
            metadata: {name: calico-world}
            spec: {cidr: 10.1.0.0/16, vxlanMode: Always, natOutgoing: false}
            """);
        try { Up(dataplane, "--nodes", "3", "--topology", topology, "--pool", pool); }
        finally
        {
            File.Delete(topology);
            File.Delete(pool);
        }
    }
}

public sealed class BpfCalicoLabFixture() : CalicoLabFixture("bpf");

public sealed class CalicoLabConformanceTests(CalicoLabFixture fixture) : CalicoLabConformance(fixture), IClassFixture<CalicoLabFixture>;

/// <summary>The same cases enforced by the BPF programs (`--dataplane bpf`).</summary>
public sealed class BpfCalicoLabConformanceTests(BpfCalicoLabFixture fixture) : CalicoLabConformance(fixture), IClassFixture<BpfCalicoLabFixture>;

public abstract class CalicoLabConformance(CalicoLabFixture fixture)
{
    public static TheoryData<string> Cases() => CalicoDialectTests.CaseNames();

    [Theory]
    [MemberData(nameof(Cases))]
    public void Calico_case_holds_with_real_packets(string name)
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces");
        Assert.True(fixture.Ready, "the lab did not come up");
        var lab = fixture.Lab;
        var c = CalicoDialectTests.Cases[name];
        try
        {
            var applied = lab.Documents("apply", c.Policies, "--wait");
            Assert.True(applied.ExitCode == 0, applied.Stdout + applied.Stderr);
            var failures = new List<string>();
            foreach (var probe in c.Probes)
            {
                var r = lab.Ctl("lab", "matrix", "--name", lab.Name, "--port", probe.Port.ToString(CultureInfo.InvariantCulture),
                    "--protocol", probe.Protocol, "--timeout-ms", "400", "-o", "json");
                Assert.True(r.ExitCode == 0, r.Stderr);
                var m = JsonNode.Parse(r.Stdout)!;
                var pods = m["pods"]!.AsArray().Select(p => p!.ToString()).ToList();
                var allowed = m["allowed"]!.AsArray();
                var expected = PolicyWorlds.Parse(probe.Expected);
                for (var i = 0; i < PolicyWorlds.Pods.Length; i++)
                    for (var j = 0; j < PolicyWorlds.Pods.Length; j++)
                    {
                        var got = allowed[pods.IndexOf(PolicyWorlds.Pods[i])]![pods.IndexOf(PolicyWorlds.Pods[j])]!.GetValue<bool>();
                        if (got != expected[i][j])
                            failures.Add($"{probe.Protocol}/{probe.Port} {PolicyWorlds.Pods[i]} -> {PolicyWorlds.Pods[j]}: expected {(expected[i][j] ? "allowed" : "blocked")}");
                    }
            }
            Assert.True(failures.Count == 0, string.Join("\n", failures));
        }
        finally
        {
            // The next case starts from no policy: policies go before their tiers (the documents in reverse).
            var deleted = lab.Documents("delete", string.Join("\n---\n", YamlDocuments.Load(c.Policies, "case.yaml").Reverse().Select(d => d.Doc.ToJsonString())), "--wait");
            Assert.True(deleted.ExitCode == 0, deleted.Stdout + deleted.Stderr);
        }
    }
}
