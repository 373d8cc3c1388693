using System.Diagnostics;
using Weft.Tests.Support;

namespace Weft.Tests.Lab;

/// <summary>
/// `weftctl apply --wait` / `delete --wait`: they return once every agent enforces the write, seen by packets sent
/// the moment they return; a node whose agent is down is named, within the timeout. Both ways of reaching agents:
/// the lab's node sockets (`--lab`) and, as outside a lab, every registered node's underlay address on port 9962.
/// </summary>
public sealed class ApplyWaitLabTests
{
    private const string DenyToPod2 = """
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: deny-to-pod-2, namespace: default}
        spec:
          podSelector: {matchLabels: {app: pod-2}}
          policyTypes: [Ingress]
        """;

    private static bool Connects(LabRun lab, string fromNetns, string ip) =>
        TestEnv.Run("ip", ["netns", "exec", fromNetns, "nc", "-z", "-w", "1", ip, "80"]).ExitCode == 0;

    [Fact]
    public void Apply_and_delete_wait_until_every_node_enforces_and_name_the_nodes_that_lag()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces");
        using var lab = new LabRun();
        lab.Up("--nodes", "2", "--pods-per-node", "1");
        var pods = lab.Status()["pods"]!.AsArray();
        string Field(string pod, string f) => pods.Single(p => p!["name"]!.ToString() == pod)![f]!.ToString();
        var (pod1, pod2Ip) = (Field("pod-1", "netns"), Field("pod-2", "ip"));
        var file = Path.Combine(TestEnv.TempDir("wait"), "deny.yaml");
        File.WriteAllText(file, DenyToPod2);
        try
        {
            for (var round = 0; round < 5; round++)
            {
                var apply = TestEnv.Ok(lab.Ctl("--lab", lab.Name, "apply", "--wait", "-f", file));
                Assert.Contains("every agent enforces revision", apply.Stderr);
                Assert.False(Connects(lab, pod1, pod2Ip), $"round {round}: pod-1 still reaches pod-2 after apply --wait returned");
                TestEnv.Ok(lab.Ctl("--lab", lab.Name, "delete", "--wait", "networkpolicy", "default/deny-to-pod-2"));
                Assert.True(Connects(lab, pod1, pod2Ip), $"round {round}: pod-1 cannot reach pod-2 after delete --wait returned");
            }

            // Outside a lab: weftctl on node-1 reaches every agent at its underlay address (198.51.100.1x:9962).
            var datastore = lab.Status()["datastore"]!.ToString();
            var node1 = lab.Netns("node-1");
            TestEnv.Ok(TestEnv.Run("ip", ["netns", "exec", node1, TestEnv.Weftctl, "--datastore", datastore, "apply", "--wait", "--timeout", "10s", "-f", file]));
            Assert.False(Connects(lab, pod1, pod2Ip));
            TestEnv.Ok(TestEnv.Run("ip", ["netns", "exec", node1, TestEnv.Weftctl, "--datastore", datastore, "delete", "--wait", "networkpolicy", "deny-to-pod-2"]));
            Assert.True(Connects(lab, pod1, pod2Ip));

            // An agent that is down: the write happens, --wait fails within its timeout naming that node only.
            TestEnv.Ok(lab.Ctl("lab", "restart-agent", "--name", lab.Name, "--node", "node-2", "--stop"));
            var sw = Stopwatch.StartNew();
            var lagging = lab.Ctl("--lab", lab.Name, "apply", "--wait", "--timeout", "2s", "-f", file);
            Assert.Equal(1, lagging.ExitCode);
            Assert.True(sw.Elapsed < TimeSpan.FromSeconds(15), $"--timeout 2s took {sw.Elapsed}");
            Assert.Contains("1 of 2 node(s): node-2", lagging.Stderr);
            Assert.DoesNotContain("node-1 (", lagging.Stderr);
            Assert.Contains("deny-to-pod-2 created", lagging.Stdout);
            TestEnv.Ok(lab.Ctl("lab", "restart-agent", "--name", lab.Name, "--node", "node-2"));
            TestEnv.Ok(lab.Ctl("--lab", lab.Name, "apply", "--wait", "-f", file)); // back: enforced again
            Assert.False(Connects(lab, pod1, pod2Ip));

            Assert.NotEqual(0, lab.Ctl("--lab", lab.Name, "apply", "--wait", "--timeout", "soon", "-f", file).ExitCode);
        }
        finally { Directory.Delete(Path.GetDirectoryName(file)!, true); }
    }
}
