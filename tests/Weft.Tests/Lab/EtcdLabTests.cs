using System.Diagnostics;
using System.Text.Json.Nodes;
using Weft.Tests.Support;

namespace Weft.Tests.Lab;

/// <summary>The lab on a 3-member etcd in its control-plane namespace, losing its leader.</summary>
public sealed class EtcdLabTests
{
    [Fact]
    public void Etcd_lab_keeps_starting_pods_and_routing_after_the_etcd_leader_is_SIGKILLed()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces");
        Assert.SkipUnless(File.Exists(EtcdCluster.Binary), "etcd-server is not installed (scripts/install-deps.sh installs it)");
        using var lab = new LabRun();
        var sw = Stopwatch.StartNew();
        lab.Up("--datastore", "etcd", "--nodes", "2", "--pods-per-node", "1");
        TestContext.Current.TestOutputHelper?.WriteLine($"etcd lab (3 etcd members, 2 nodes, 2 pods) up in {sw.Elapsed.TotalSeconds:0.0} s");
        var status = lab.Status();
        Assert.Equal("etcd://198.51.100.2:2379,198.51.100.3:2379,198.51.100.4:2379", status["datastore"]!.GetValue<string>());
        var members = status["etcd"]!.AsArray();
        Assert.Equal(3, members.Count);
        Assert.All(members, m => Assert.True(m!["running"]!.GetValue<bool>()));
        Assert.All(status["nodes"]!.AsArray(), n => Assert.Equal("ok", n!["health"]!.GetValue<string>()));
        Assert.True(LabRun.AllTrue(lab.Matrix()));
        Assert.Contains("node-2", lab.Ctl("--lab", lab.Name, "get", "nodes").Stdout); // weftctl reaches etcd from the root namespace

        // SIGKILL the leader, found with etcdctl inside the control-plane namespace.
        var endpoints = string.Join(",", members.Select(m => m!["ip"]!.GetValue<string>() + ":2379"));
        var doc = JsonNode.Parse(TestEnv.Sh($"ip netns exec {lab.Netns("cp")} env ETCDCTL_API=3 etcdctl --endpoints {endpoints} endpoint status -w json"))!.AsArray();
        var leaderId = doc[0]!["Status"]!["leader"]!.GetValue<ulong>();
        var leaderIp = doc.First(e => e!["Status"]!["header"]!["member_id"]!.GetValue<ulong>() == leaderId)!["Endpoint"]!.GetValue<string>().Split(':')[0];
        var leader = members.First(m => m!["ip"]!.GetValue<string>() == leaderIp)!;
        using (var p = Process.GetProcessById(leader["pid"]!.GetValue<int>()))
        {
            p.Kill();
            Assert.True(p.WaitForExit(5000));
        }

        sw.Restart();
        var add = lab.Ctl("lab", "add-pod", "--name", lab.Name, "default/pod-3", "--node", "node-1");
        Assert.True(add.ExitCode == 0, add.Stdout + add.Stderr);
        TestContext.Current.TestOutputHelper?.WriteLine($"leader {leader["name"]} killed; next pod added in {sw.Elapsed.TotalMilliseconds:0} ms (incl. weftctl)");
        var add2 = lab.Ctl("lab", "add-pod", "--name", lab.Name, "default/pod-4", "--node", "node-2");
        Assert.True(add2.ExitCode == 0, add2.Stdout + add2.Stderr);

        status = lab.Status();
        Assert.False(status["etcd"]!.AsArray().First(m => m!["name"]!.GetValue<string>() == leader["name"]!.GetValue<string>())!["running"]!.GetValue<bool>());
        Assert.Equal(4, status["pods"]!.AsArray().Count);
        var matrix = lab.Matrix();
        Assert.True(LabRun.AllTrue(matrix), matrix.ToJsonString());
        // An agent restarted while a member is down registers and comes up healthy through the remaining two.
        var restart = lab.Ctl("lab", "restart-agent", "--name", lab.Name, "--node", "node-2", "--kill");
        Assert.True(restart.ExitCode == 0, restart.Stdout + restart.Stderr);
        Assert.True(LabRun.AllTrue(lab.Matrix()));

        var pids = status["etcd"]!.AsArray().Select(m => m!["pid"]!.GetValue<int>()).ToList();
        Assert.Equal(0, lab.Ctl("lab", "down", "--name", lab.Name).ExitCode);
        Assert.All(pids, pid => Assert.False(File.Exists($"/proc/{pid}/cmdline") && File.ReadAllText($"/proc/{pid}/cmdline").Contains("etcd", StringComparison.Ordinal), $"etcd {pid} still runs"));
        Assert.DoesNotContain(lab.Name + "-", TestEnv.Sh("ip netns list"));
    }
}
