using System.Text.Json.Nodes;
using Weft.Tests.Support;

namespace Weft.Tests.Lab;

/// <summary>
/// The lab on the kubernetes datastore: its own API server (LabApiServer) in the control-plane namespace, the agents
/// and the plugin on kubernetes:///kubeconfig, and the real kubectl (a client nobody here wrote) as the user's tool.
/// </summary>
public sealed class KubernetesLabTests
{
    private const string OnlyFromPod3 = """
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: only-pod-3, namespace: default}
        spec:
          podSelector: {matchLabels: {app: pod-1}}
          ingress:
          - from: [{podSelector: {matchLabels: {app: pod-3}}}]
        """;

    [Fact]
    public void Kubernetes_lab_runs_pods_and_enforces_what_kubectl_applies_through_an_agent_restart()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces");
        Assert.SkipUnless(File.Exists("/usr/bin/kubectl"), "kubectl is not installed");
        using var lab = new LabRun();
        // Flannel's net-conf.json as its users write it: each node's pods get addresses from its Node's spec.podCIDR.
        var netConf = Path.Combine(TestEnv.TempDir("kube-netconf"), "net-conf.json");
        File.WriteAllText(netConf, """{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}""");
        lab.Up("--datastore", "kubernetes", "--nodes", "2", "--pods-per-node", "2", "--node-release-grace", "2", "--net-conf", netConf);
        Directory.Delete(Path.GetDirectoryName(netConf)!, true);
        var status = lab.Status();
        var kubeconfig = $"/var/lib/weft/labs/{lab.Name}/kubeconfig";
        Assert.Equal($"kubernetes:///var/lib/weft/labs/{lab.Name}/agent-kubeconfig", status["datastore"]!.GetValue<string>());
        var before = lab.Matrix();
        Assert.True(LabRun.AllTrue(before), before.ToJsonString());

        // kubectl talks to the lab's API server from its namespace, over TLS with the kubeconfig's CA and token.
        TestEnv.ProcessResult Kubectl(string stdin, params string[] args) =>
            TestEnv.Run("ip", ["netns", "exec", lab.Netns("cp"), "/usr/bin/kubectl", "--kubeconfig", kubeconfig, .. args], stdin, timeout: TimeSpan.FromSeconds(60));
        var pods = Kubectl("", "get", "pods", "-A", "-o", "name");
        Assert.True(pods.ExitCode == 0, pods.Stdout + pods.Stderr);
        Assert.Equal(["pod/pod-1", "pod/pod-2", "pod/pod-3", "pod/pod-4"], pods.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries).Order());
        var nodes = Kubectl("", "get", "weftnodes", "-o", "name");
        Assert.Equal(2, nodes.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries).Length);
        var podCidrs = JsonNode.Parse(TestEnv.Ok(Kubectl("", "get", "nodes", "-o", "json")).Stdout)!["items"]!.AsArray()
            .ToDictionary(n => n!["metadata"]!["name"]!.GetValue<string>(), n => Weft.Model.Cidr.Parse(n!["spec"]!["podCIDR"]!.GetValue<string>()));
        foreach (var p in status["pods"]!.AsArray())
            Assert.True(podCidrs[p!["node"]!.GetValue<string>()].Contains(System.Net.IPAddress.Parse(p["ip"]!.GetValue<string>())),
                $"{p["pod"]} on {p["node"]} has {p["ip"]}, outside its node's podCIDR");

        var applied = Kubectl(OnlyFromPod3, "apply", "-f", "-");
        Assert.True(applied.ExitCode == 0, applied.Stdout + applied.Stderr);
        // kubectl has no --wait for enforcement; the agents report the API server's revision enforced.
        TestEnv.Ok(lab.Ctl("lab", "sync", "--name", lab.Name));
        AssertOnlyPod3ReachesPod1(lab.Matrix());

        // An agent killed and restarted lists and watches the API again and enforces the same.
        TestEnv.Ok(lab.Ctl("lab", "restart-agent", "--name", lab.Name, "--node", "node-1", "--kill"));
        TestEnv.Ok(lab.Ctl("lab", "sync", "--name", lab.Name));
        AssertOnlyPod3ReachesPod1(lab.Matrix());

        var deleted = Kubectl("", "delete", "networkpolicy", "only-pod-3", "-n", "default");
        Assert.True(deleted.ExitCode == 0, deleted.Stdout + deleted.Stderr);
        TestEnv.Ok(lab.Ctl("lab", "sync", "--name", lab.Name));
        var after = lab.Matrix();
        Assert.True(LabRun.AllTrue(after), after.ToJsonString());
        // Agents and the plugin ran as the weft-agent service account, limited to deploy/weft.yaml's ClusterRole: never refused.
        Assert.DoesNotContain("403 ", File.ReadAllText($"/var/lib/weft/labs/{lab.Name}/apiserver.log"));
        var check = lab.Ctl("--lab", lab.Name, "ipam", "check", "--grace", "0s");
        Assert.True(check.ExitCode == 0 && check.Stdout.Contains("No problems", StringComparison.Ordinal), check.Stdout + check.Stderr);

        // node-2 leaves the cluster: its machine is gone (agent stopped) and its Node deleted. Its pods are still in
        // the API (the pod garbage collector has not run yet), so their addresses and block stay; the node's tunnel
        // address goes. Once the pods are deleted too, nothing of node-2 is left (calico#8643).
        Assert.Equal(2, Kubectl("", "get", "nodes", "-o", "name").Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries).Length);
        var node2Pods = status["pods"]!.AsArray().Where(p => p!["node"]!.GetValue<string>() == "node-2").Select(p => p!["name"]!.GetValue<string>()).ToArray();
        TestEnv.Ok(lab.Ctl("lab", "restart-agent", "--name", lab.Name, "--node", "node-2", "--stop"));
        var gone = Kubectl("", "delete", "node", "node-2");
        Assert.True(gone.ExitCode == 0, gone.Stdout + gone.Stderr);
        JsonArray Items(string plural) => JsonNode.Parse(TestEnv.Ok(Kubectl("", "get", plural, "-o", "json")).Stdout)!["items"]!.AsArray();
        bool Node2Holds(string plural, string field, string value) => Items(plural).Any(i => i!["spec"]?[field]?.GetValue<string>() == value);
        WaitUntil(() => !Node2Holds("ipamhandles", "id", "weft-tunnel.node-2"), "node-2's tunnel address released");
        Assert.Equal(2, Items("ipamhandles").Count(h => h!["spec"]!["node"]!.GetValue<string>() == "node-2")); // its two pods' addresses stay
        Assert.True(Node2Holds("ipamblocks", "affinity", "node-2"));
        Assert.Single(Items("weftnodes"), n => n!["spec"]!["name"]!.GetValue<string>() == "node-2");

        var podsGone = Kubectl("", ["delete", "pod", "-n", "default", .. node2Pods]);
        Assert.True(podsGone.ExitCode == 0, podsGone.Stdout + podsGone.Stderr);
        WaitUntil(() => !Items("ipamhandles").Any(h => h!["spec"]!["node"]!.GetValue<string>() == "node-2") && Items("weftnodes").Count == 1 &&
            !Node2Holds("ipamblocks", "affinity", "node-2"), "node-2's pod addresses, block and node record released");
        // node-1's own block and pods are untouched.
        Assert.All(Items("ipamblocks"), b => Assert.Equal("node-1", b!["spec"]!["affinity"]?.GetValue<string>()));
        Assert.Contains("released", File.ReadAllText($"/var/lib/weft/labs/{lab.Name}/node-1.log"));
        var node1Pods = status["pods"]!.AsArray().Where(p => p!["node"]!.GetValue<string>() == "node-1").ToArray();
        Assert.Equal(2, node1Pods.Length);
        TestEnv.Ok(lab.Ctl("lab", "exec", "--name", lab.Name, node1Pods[0]!["pod"]!.GetValue<string>(), "--", "ping", "-c1", "-W2", node1Pods[1]!["ip"]!.GetValue<string>()));
    }

    /// <summary>Polls what the agents do on their own after a grace period (the wait is the feature under test).</summary>
    private static void WaitUntil(Func<bool> done, string what)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (!done())
        {
            Assert.True(DateTime.UtcNow < deadline, "not within 30 s: " + what);
            Thread.Sleep(500);
        }
    }

    private static void AssertOnlyPod3ReachesPod1(JsonObject matrix)
    {
        var pods = matrix["pods"]!.AsArray().Select(p => p!.GetValue<string>()).ToList();
        var allowed = matrix["allowed"]!.AsArray();
        for (var i = 0; i < pods.Count; i++)
            for (var j = 0; j < pods.Count; j++)
            {
                var expected = pods[j] != "default/pod-1" || pods[i] is "default/pod-1" or "default/pod-3";
                Assert.True(allowed[i]![j]!.GetValue<bool>() == expected, $"{pods[i]} -> {pods[j]}: expected {(expected ? "connected" : "blocked")}\n{matrix.ToJsonString()}");
            }
    }
}
