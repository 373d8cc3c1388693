using System.Text.Json.Nodes;
using Weft.Tests.Policy;
using Weft.Tests.Support;

namespace Weft.Tests.Lab;

/// <summary>
/// One 3-node lab holding the conformance cluster (x, y, z × a, b, c with the cases' pinned addresses; namespace x on
/// node-1, y on node-2, z on node-3, so cross-node and same-node paths are both probed), shared by the cases.
/// </summary>
public sealed class PolicyLabFixture : IDisposable
{
    public LabRun Lab { get; } = new();
    public HashSet<string> AppliedPolicies { get; } = new(StringComparer.Ordinal);
    public bool Ready { get; }

    public PolicyLabFixture()
    {
        if (!TestEnv.IsRoot) return;
        var c = NetpolCase.Load(Path.Combine(NetpolCase.Dir, "tcp-01-default-deny-ingress.yaml"));
        var nodes = new Dictionary<string, string> { ["x"] = "node-1", ["y"] = "node-2", ["z"] = "node-3" };
        var docs = c.Namespaces.Values.Select(n => n.DeepClone().AsObject()).ToList();
        foreach (var key in c.PodOrder)
        {
            var pod = c.Pods[key].DeepClone().AsObject();
            pod["spec"]!["nodeName"] = nodes[pod["metadata"]!["namespace"]!.ToString()];
            // Every pod serves every port and protocol any case probes; each case then applies its own Pod documents.
            pod["spec"]!["containers"]![0]!["ports"] = new JsonArray([..
                from port in new[] { 80, 81 } from proto in new[] { "TCP", "UDP" }
                select (JsonNode)new JsonObject { ["name"] = $"serve-{port}-{proto.ToLowerInvariant()}", ["containerPort"] = port, ["protocol"] = proto }]);
            docs.Add(pod);
        }
        var file = Path.Combine(Path.GetTempPath(), $"weft-netpol-topology-{Lab.Name}.yaml");
        File.WriteAllText(file, string.Join("\n---\n", docs.Select(d => d.ToJsonString())));
        try { Lab.Up("--nodes", "3", "--topology", file); }
        finally { File.Delete(file); }
        Ready = true;
    }

    public void Dispose() => Lab.Dispose();
}

/// <summary>The upstream e2e NetworkPolicy cases with real packets: policies and relabels through `weftctl apply`, probes with `lab matrix`.</summary>
public sealed class PolicyLabConformanceTests(PolicyLabFixture fixture) : IClassFixture<PolicyLabFixture>
{
    // SCTP cases run by simulation only: this kernel has no SCTP sockets.
    public static TheoryData<string> Cases() => new(NetpolCase.Files().Select(Path.GetFileNameWithoutExtension).Where(id => !id!.StartsWith("sctp-", StringComparison.Ordinal))!);

    [Theory]
    [MemberData(nameof(Cases))]
    public void Upstream_case_holds_with_real_packets(string id)
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces");
        Assert.True(fixture.Ready, "the lab did not come up");
        var lab = fixture.Lab;
        var c = NetpolCase.Load(Path.Combine(NetpolCase.Dir, id + ".yaml"));
        // Reset: no policies, the case's own namespace and pod documents (labels, named ports).
        foreach (var key in fixture.AppliedPolicies.ToList()) Delete(lab, key);
        fixture.AppliedPolicies.Clear();
        Apply(lab, c.Namespaces.Values.Concat(c.PodOrder.Select(k => c.Pods[k])));
        var failures = new List<string>();
        for (var s = 0; s < c.Steps.Count; s++)
        {
            var step = c.Steps[s];
            foreach (var action in step.Actions)
            {
                var (changed, deleted) = c.Apply(action);
                if (changed.Count > 0) Apply(lab, changed);
                foreach (var (_, key) in deleted) Delete(lab, key);
                foreach (var d in changed.Where(d => d["kind"]!.ToString() == "NetworkPolicy"))
                    fixture.AppliedPolicies.Add($"{d["metadata"]!["namespace"]}/{d["metadata"]!["name"]}");
                foreach (var (_, key) in deleted) fixture.AppliedPolicies.Remove(key);
            }
            var sync = lab.Ctl("lab", "sync", "--name", lab.Name, "--timeout-ms", "10000");
            Assert.True(sync.ExitCode == 0, sync.Stdout + sync.Stderr);
            foreach (var probe in step.Probes.Where(p => p.Protocol != "SCTP"))
            {
                var r = lab.Ctl("lab", "matrix", "--name", lab.Name, "--port", probe.Port.ToString(System.Globalization.CultureInfo.InvariantCulture),
                    "--protocol", probe.Protocol, "--timeout-ms", "400", "-o", "json");
                Assert.True(r.ExitCode == 0, r.Stderr);
                var m = JsonNode.Parse(r.Stdout)!;
                var pods = m["pods"]!.AsArray().Select(p => p!.ToString()).ToList();
                var allowed = m["allowed"]!.AsArray().Select(row => row!.AsArray().Select(v => v!.GetValue<bool>()).ToArray()).ToArray();
                failures.AddRange(c.Mismatches(probe, pods, allowed).Select(x => $"step {s} ({step.Description}): {x}"));
            }
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures));
    }

    private static void Apply(LabRun lab, IEnumerable<JsonObject> docs)
    {
        var file = Path.Combine(Path.GetTempPath(), $"weft-netpol-{lab.Name}-{Guid.NewGuid():N}.yaml");
        File.WriteAllText(file, string.Join("\n---\n", docs.Select(d => d.ToJsonString())));
        try
        {
            var r = lab.Ctl("--lab", lab.Name, "apply", "-f", file);
            Assert.True(r.ExitCode == 0, r.Stdout + r.Stderr);
        }
        finally { File.Delete(file); }
    }

    private static void Delete(LabRun lab, string key)
    {
        var r = lab.Ctl("--lab", lab.Name, "delete", "networkpolicy", key);
        Assert.True(r.ExitCode == 0, r.Stdout + r.Stderr);
    }
}
