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
        lab.Up("--datastore", "kubernetes", "--nodes", "2", "--pods-per-node", "2");
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
