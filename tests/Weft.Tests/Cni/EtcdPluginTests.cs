using System.Text.Json.Nodes;
using Weft.Tests.Support;

namespace Weft.Tests.Cni;

/// <summary>
/// The real NativeAOT plugin against a real etcd running inside the node namespace: `weft` hands etcd:// over to
/// `weft-etcd`, which allocates through etcd; etcd down is CNI error 11 ("try again later").
/// </summary>
public sealed class EtcdPluginTests
{
    private static string Ip(JsonObject result) => result["ips"]!.AsArray()[0]!["address"]!.GetValue<string>().Split('/')[0];

    [Fact]
    public void Pods_added_and_deleted_through_the_plugin_allocate_and_release_in_etcd()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces");
        using var ns = new Netns("etcdcni");
        using var etcd = EtcdCluster.Start(1, ns.Node);
        var apply = TestEnv.CtlIn(etcd.Uri, Support.Pools.SeedV4, "apply", "-f", "-");
        Assert.True(apply.ExitCode == 0, apply.Stderr + apply.Stdout);
        var cni = new CniRunner(ns.Node, TestEnv.Dist);
        var conf = CniRunner.Config(etcd.PlainUri, "node-1");
        var a = ns.Pod("a");
        var b = ns.Pod("b");
        var ra = cni.Weft("ADD", conf, "ctr-a", a.Path, args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=a");
        Assert.True(ra.ExitCode == 0, ra.Stdout + ra.Stderr);
        var rb = cni.Weft("ADD", conf, "ctr-b", b.Path, args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=b");
        Assert.True(rb.ExitCode == 0, rb.Stdout + rb.Stderr);
        TestContext.Current.TestOutputHelper?.WriteLine($"ADD through weft -> weft-etcd: {ra.Elapsed.TotalMilliseconds:0} ms (first), {rb.Elapsed.TotalMilliseconds:0} ms (second)");
        Assert.StartsWith("10.244.", Ip(ra.Json));
        Assert.NotEqual(Ip(ra.Json), Ip(rb.Json));
        TestEnv.Sh($"ip netns exec {a.Name} ping -c 1 -W 2 {Ip(rb.Json)}");
        var held = TestEnv.Ctl(etcd.Uri, "ipam", "show", "--ip", Ip(ra.Json));
        Assert.True(held.Stdout.Contains("ctr-a", StringComparison.Ordinal), held.Stdout + held.Stderr);

        Assert.Equal(0, cni.Weft("DEL", conf, "ctr-a", a.Path).ExitCode);
        Assert.Equal(0, cni.Weft("DEL", conf, "ctr-a", a.Path).ExitCode); // again: already gone is fine
        Assert.DoesNotContain("ctr-a", TestEnv.Ctl(etcd.Uri, "ipam", "show", "--ip", Ip(ra.Json)).Stdout);
        var check = TestEnv.Ctl(etcd.Uri, "ipam", "check", "--grace", "0s");
        Assert.True(check.ExitCode == 0, check.Stderr);
        Assert.Contains("No problems", check.Stdout);
    }

    [Fact]
    public void Add_with_etcd_down_is_try_again_later_and_leaves_no_interface()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces");
        using var ns = new Netns("etcddown");
        var cni = new CniRunner(ns.Node, TestEnv.Dist);
        var conf = CniRunner.Config($"etcd://127.0.0.1:{EtcdCluster.ClosedPort()}?timeout=1", "node-1");
        var pod = ns.Pod("p");
        var r = cni.Weft("ADD", conf, "ctr-x", pod.Path, args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p");
        Assert.Equal(11, r.ErrorCode);
        Assert.Contains("etcd", r.ErrorMessage);
        Assert.True(r.Elapsed < TimeSpan.FromSeconds(5), r.Elapsed.ToString());
        Assert.DoesNotContain("weft", TestEnv.Sh($"ip -n {ns.Node} -o link show type veth"));
        Assert.DoesNotContain("eth0", TestEnv.Sh($"ip -n {pod.Name} -o link"));
    }
}
