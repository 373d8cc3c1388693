using System.Text.Json.Nodes;
using Weft.Tests.Support;

namespace Weft.Tests.Cni;

/// <summary>
/// Calico's IPAM annotations on the Pod (kubelet passes only the pod's name; the plugin reads the Pod):
/// `cni.projectcalico.org/ipAddrs` pins addresses, `ipv4pools` picks pools by name or CIDR. Bad ones are code 7 and
/// leave nothing behind.
/// </summary>
public sealed class PodAnnotationTests : IDisposable
{
    private readonly List<IDisposable> _cleanup = [];
    private string? _dir;

    public void Dispose()
    {
        foreach (var d in _cleanup) d.Dispose();
        if (_dir is not null) Directory.Delete(_dir, true);
    }

    private const string SecondPool = """
        apiVersion: projectcalico.org/v3
        kind: IPPool
        metadata: {name: batch-pool}
        spec: {cidr: 10.99.0.0/16, blockSize: 26}
        """;

    private static string Pod(string name, string annotations) => $$"""
        apiVersion: v1
        kind: Pod
        metadata:
          name: {{name}}
          namespace: default
          annotations: {{{annotations}}}
        """;

    [Fact]
    public void Annotations_pin_addresses_and_pick_pools_and_bad_ones_are_refused_cleanly()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces");
        var ns = new Netns("podann");
        _cleanup.Add(ns);
        (_dir, var uri) = Support.Pools.NewStore(Support.Pools.SeedV4, SecondPool,
            Pod("pinned", "cni.projectcalico.org/ipAddrs: '[\"10.244.77.7\"]'"),
            Pod("batch", "cni.projectcalico.org/ipv4pools: '[\"batch-pool\"]'"),
            Pod("bycidr", "cni.projectcalico.org/ipv4pools: '[\"10.99.0.0/16\"]'"),
            Pod("nosuchpool", "cni.projectcalico.org/ipv4pools: '[\"nope\"]'"),
            Pod("malformed", "cni.projectcalico.org/ipAddrs: 10.244.1.1"));
        var cni = new CniRunner(ns.Node, TestEnv.Dist);
        var conf = CniRunner.Config(uri, "node-1");
        var pods = new Dictionary<string, string>();
        CniRunner.CniCall Add(string pod, string extra = "")
        {
            var p = ns.Pod(pod);
            pods[pod] = p.Name;
            return cni.Weft("ADD", conf, "ctr-" + pod, p.Path, args: $"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}{extra}");
        }
        static string Ip(CniRunner.CniCall r) => r.Json["ips"]![0]!["address"]!.GetValue<string>();

        var pinned = Add("pinned");
        Assert.True(pinned.ExitCode == 0, pinned.Stdout);
        Assert.Equal("10.244.77.7/32", Ip(pinned));
        var batch = Add("batch");
        Assert.True(batch.ExitCode == 0, batch.Stdout);
        Assert.StartsWith("10.99.", Ip(batch));
        var byCidr = Add("bycidr");
        Assert.StartsWith("10.99.", Ip(byCidr));
        var plain = Add("plain"); // no Pod document at all: any pool
        Assert.True(plain.ExitCode == 0, plain.Stdout);

        foreach (var (pod, extra, says) in new[]
                 {
                     ("nosuchpool", "", "pool nope (asked for by the pod) does not exist"),
                     ("malformed", "", "cni.projectcalico.org/ipAddrs"),
                     ("pinned2", ";IP=10.244.5.5", ""),
                 })
        {
            if (pod == "pinned2")
            {
                // The annotation and a runtime's IP= together: refused, as Calico does.
                var again = TestEnv.CtlIn(uri, Pod("pinned2", "cni.projectcalico.org/ipAddrs: '[\"10.244.77.8\"]'"), "apply", "-f", "-");
                Assert.Equal(0, again.ExitCode);
            }
            var r = Add(pod, extra);
            Assert.True(r.ErrorCode is 7 or 103, r.Stdout);
            if (says.Length > 0) Assert.Contains(says, r.ErrorMessage);
            Assert.DoesNotContain("eth0", TestEnv.Sh($"ip -n {pods[pod]} -o link"));
        }
        // Nothing of the refused ADDs is held.
        var check = TestEnv.Ctl(uri, "ipam", "check", "--grace", "0s", "-o", "json");
        Assert.Equal(4, JsonNode.Parse(check.Stdout)!["allocations"]!.GetValue<int>());
    }
}
