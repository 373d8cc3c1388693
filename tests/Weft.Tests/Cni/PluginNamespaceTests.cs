using System.Text.Json.Nodes;
using Weft.Tests.Support;

namespace Weft.Tests.Cni;

/// <summary>
/// The real plugin, exec'd inside a throwaway node namespace exactly as a runtime calls it, building real pods
/// (namespaces) that must then talk to each other and to the node.
/// </summary>
public sealed class PluginNamespaceTests : IDisposable
{
    private readonly List<IDisposable> _cleanup = [];
    private readonly List<string> _dirs = [];

    public void Dispose()
    {
        foreach (var d in _cleanup) d.Dispose();
        foreach (var d in _dirs) try { Directory.Delete(d, true); } catch (IOException) { }
    }

    private (Netns Ns, CniRunner Cni, string Uri) Setup(string tag, params string[] pools)
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces");
        var ns = new Netns(tag);
        _cleanup.Add(ns);
        var (dir, uri) = Support.Pools.NewStore(pools);
        _dirs.Add(dir);
        return (ns, new CniRunner(ns.Node, TestEnv.Dist), uri);
    }

    private static string Ip(JsonObject result, int family = 4) =>
        result["ips"]!.AsArray().Select(i => i!["address"]!.GetValue<string>()).First(a => a.Contains(':') == (family == 6)).Split('/')[0];

    [Theory]
    [InlineData("routed")]
    [InlineData("bridge")]
    public void Two_pods_reach_each_other_and_the_node_over_ipv4_and_ipv6(string mode)
    {
        var (ns, cni, uri) = Setup(mode[..5], Support.Pools.SeedV4, Support.Pools.SeedV6);
        var conf = CniRunner.Config(uri, "node-1", mode);
        var a = ns.Pod("a");
        var b = ns.Pod("b");
        var ra = cni.Weft("ADD", conf, "ctr-a", a.Path, args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=a");
        Assert.True(ra.ExitCode == 0, ra.Stdout + ra.Stderr);
        var rb = cni.Weft("ADD", conf, "ctr-b", b.Path, args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=b");
        Assert.True(rb.ExitCode == 0, rb.Stdout + rb.Stderr);
        var (a4, b4, a6, b6) = (Ip(ra.Json), Ip(rb.Json), Ip(ra.Json, 6), Ip(rb.Json, 6));
        Assert.StartsWith("10.244.", a4);
        Assert.StartsWith("fd00:10:244:", b6);

        TestEnv.Sh($"ip netns exec {a.Name} ping -c 1 -W 2 {b4}");
        TestEnv.Sh($"ip netns exec {b.Name} ping -c 1 -W 2 {a4}");
        TestEnv.Sh($"ip netns exec {a.Name} ping -6 -c 1 -W 2 {b6}");
        TestEnv.Sh($"ip netns exec {ns.Node} ping -c 1 -W 2 {a4}");
        TestEnv.Sh($"ip netns exec {a.Name} ping -c 1 -W 2 {ns.NodeAddress}");
        TestEnv.Sh($"ip netns exec {ns.Node} ping -6 -c 1 -W 2 {b6}");
        // TCP both ways: a server in b, a client in a (and the source address b sees is a's own: no NAT).
        var server = TestEnv.Run("/bin/sh", ["-c", $"ip netns exec {b.Name} timeout 10 nc -l -p 8080 -s {b4} > /dev/null & sleep 0.3; echo hello | ip netns exec {a.Name} nc -w 2 -N {b4} 8080; wait"]);
        Assert.Equal(0, server.ExitCode);
        TestEnv.Sh($"ip netns exec {a.Name} sh -c 'timeout 10 nc -l -p 8081 > /dev/null & sleep 0.3; echo hi | ip netns exec {ns.Node} nc -w 2 -N {a4} 8081; wait'");
        var v6tcp = TestEnv.Run("/bin/sh", ["-c", $"ip netns exec {b.Name} timeout 10 nc -6 -l -p 8082 -s {b6} > /dev/null & sleep 0.3; echo hi6 | ip netns exec {a.Name} nc -6 -w 2 -N {b6} 8082; wait"]);
        Assert.Equal(0, v6tcp.ExitCode);

        // CHECK agrees with what ADD returned.
        var checkConf = CniRunner.Parse(conf);
        checkConf["prevResult"] = ra.Json.DeepClone();
        var check = cni.Weft("CHECK", checkConf.ToJsonString(), "ctr-a", a.Path);
        Assert.True(check.ExitCode == 0, check.Stdout);

        // DEL removes everything; a second DEL still succeeds.
        foreach (var (id, pod) in new[] { ("ctr-a", a), ("ctr-b", b) })
        {
            Assert.Equal(0, cni.Weft("DEL", conf, id, pod.Path).ExitCode);
            Assert.Equal(0, cni.Weft("DEL", conf, id, pod.Path).ExitCode);
        }
        Assert.DoesNotContain("weft", TestEnv.Sh($"ip -n {ns.Node} -o link show type veth"));
        Assert.DoesNotContain("eth0", TestEnv.Sh($"ip -n {a.Name} -o link"));
        var usage = TestEnv.Ctl(uri, "ipam", "check", "--grace", "0s", "-o", "json");
        Assert.Contains("\"allocations\": " + (mode == "bridge" ? "2" : "0"), usage.Stdout); // bridge: the two block gateways stay
    }

    [Fact]
    public void Result_is_written_in_the_version_asked_for()
    {
        var (ns, cni, uri) = Setup("ver", Support.Pools.SeedV4);
        foreach (var version in new[] { "0.3.1", "0.4.0", "1.0.0", "1.1.0" })
        {
            var pod = ns.Pod("v" + version.Replace(".", ""));
            var conf = CniRunner.Config(uri, "node-1", version: version);
            var r = cni.Weft("ADD", conf, "ctr-" + version.Replace(".", ""), pod.Path);
            Assert.True(r.ExitCode == 0, r.Stdout);
            Assert.Equal(version, r.Json["cniVersion"]!.GetValue<string>());
            var ip = r.Json["ips"]![0]!.AsObject();
            Assert.Equal(version.StartsWith('0'), ip.ContainsKey("version"));
            Assert.Equal(0, cni.Weft("DEL", conf, "ctr-" + version.Replace(".", ""), pod.Path).ExitCode);
        }
        var v = cni.Weft("VERSION", """{"cniVersion":"1.0.0"}""");
        Assert.Equal(["0.3.1", "0.4.0", "1.0.0", "1.1.0"], v.Json["supportedVersions"]!.AsArray().Select(x => x!.GetValue<string>()));
        var old = cni.Weft("ADD", CniRunner.Config(uri, "node-1", version: "0.2.0"), "c", ns.Pod("old").Path);
        Assert.Equal(1, old.ErrorCode);
    }

    [Fact]
    public void Del_succeeds_for_missing_netns_missing_interface_and_unknown_container_and_releases_the_address()
    {
        var (ns, cni, uri) = Setup("del", Support.Pools.SeedV4);
        var conf = CniRunner.Config(uri, "node-1");
        Assert.Equal(0, cni.Weft("DEL", conf, "never-added", "/var/run/netns/does-not-exist").ExitCode);
        Assert.Equal(0, cni.Weft("DEL", conf, "never-added", "").ExitCode);
        var pod = ns.Pod("gone");
        var r = cni.Weft("ADD", conf, "ctr-gone", pod.Path);
        Assert.Equal(0, r.ExitCode);
        var ip = Ip(r.Json);
        ns.Delete(pod.Name); // the pod namespace vanishes before DEL, as when a runtime crashes
        Assert.Equal(0, cni.Weft("DEL", conf, "ctr-gone", pod.Path).ExitCode);
        Assert.Contains("not currently assigned", TestEnv.Ctl(uri, "ipam", "show", "--ip", ip).Stdout);
        Assert.DoesNotContain("weft", TestEnv.Sh($"ip -n {ns.Node} -o link show type veth"));
    }

    [Fact]
    public void Failed_add_leaves_no_interface_and_no_address_behind()
    {
        var (ns, cni, uri) = Setup("fail", Support.Pools.SeedV4);
        var conf = CniRunner.Config(uri, "node-1");
        var pod = ns.Pod("p");
        TestEnv.Sh($"ip -n {pod.Name} link add eth0 type veth peer name x0"); // CNI_IFNAME taken in the pod
        var r = cni.Weft("ADD", conf, "ctr-fail", pod.Path);
        Assert.NotEqual(0, r.ExitCode);
        Assert.Equal(110, r.ErrorCode);
        Assert.Contains("already exists", r.ErrorMessage);
        Assert.DoesNotContain("weft", TestEnv.Sh($"ip -n {ns.Node} -o link"));
        var check = TestEnv.Ctl(uri, "ipam", "check", "--grace", "0s", "-o", "json");
        Assert.Contains("\"allocations\": 0", check.Stdout);
    }

    [Fact]
    public void Requested_address_from_cni_args_and_ips_capability_and_mac_capability()
    {
        var (ns, cni, uri) = Setup("req", Support.Pools.SeedV4);
        var conf = CniRunner.Config(uri, "node-1");
        var a = ns.Pod("a");
        var r = cni.Weft("ADD", conf, "ctr-a", a.Path, args: "IgnoreUnknown=1;IP=10.244.7.7");
        Assert.True(r.ExitCode == 0, r.Stdout);
        Assert.Equal("10.244.7.7", Ip(r.Json));
        var b = ns.Pod("b");
        var withCaps = CniRunner.Config(uri, "node-1", extra: ""","runtimeConfig":{"ips":["10.244.9.9/16"],"mac":"0a:58:0a:f4:09:09"}""");
        var rb = cni.Weft("ADD", withCaps, "ctr-b", b.Path);
        Assert.True(rb.ExitCode == 0, rb.Stdout);
        Assert.Equal("10.244.9.9", Ip(rb.Json));
        Assert.Contains("0a:58:0a:f4:09:09", TestEnv.Sh($"ip -n {b.Name} link show eth0"));
        var c = ns.Pod("c");
        var taken = cni.Weft("ADD", conf, "ctr-c", c.Path, args: "IP=10.244.7.7");
        Assert.Equal(103, taken.ErrorCode);
        var unknownArg = cni.Weft("ADD", conf, "ctr-c", c.Path, args: "FOO=bar");
        Assert.Equal(4, unknownArg.ErrorCode);
    }

    [Fact]
    public void Repeated_add_for_the_same_attachment_is_idempotent()
    {
        var (ns, cni, uri) = Setup("idem", Support.Pools.SeedV4);
        var conf = CniRunner.Config(uri, "node-1");
        var pod = ns.Pod("p");
        var first = cni.Weft("ADD", conf, "ctr", pod.Path);
        Assert.Equal(0, first.ExitCode);
        TestEnv.Sh($"ip -n {ns.Node} link del {first.Json["interfaces"]![0]!["name"]}"); // simulate a half-done earlier attempt
        var second = cni.Weft("ADD", conf, "ctr", pod.Path);
        Assert.True(second.ExitCode == 0, second.Stdout);
        Assert.Equal(Ip(first.Json), Ip(second.Json));
        Assert.Equal(first.Json["interfaces"]![0]!["name"]!.GetValue<string>(), second.Json["interfaces"]![0]!["name"]!.GetValue<string>());
    }

    [Fact]
    public void Status_reports_50_without_room_and_gc_releases_what_runtime_no_longer_lists()
    {
        var (ns, cni, uri) = Setup("gc");
        var status = cni.Weft("STATUS", CniRunner.Config(uri, "node-1"));
        Assert.Equal(50, status.ErrorCode);
        Assert.Contains("weftctl apply", status.ErrorMessage);
        Assert.Equal(0, TestEnv.CtlIn(uri, Support.Pools.SeedV4, "apply", "-f", "-").ExitCode);
        Assert.Equal(0, cni.Weft("STATUS", CniRunner.Config(uri, "node-1")).ExitCode);
        var conf = CniRunner.Config(uri, "node-1");
        var pods = Enumerable.Range(0, 3).Select(i => ns.Pod("g" + i)).ToList();
        var ips = pods.Select((p, i) => Ip(cni.Weft("ADD", conf, "ctr-" + i, p.Path).Json)).ToList();
        var gcConf = CniRunner.Config(uri, "node-1", extra: ""","runtimeConfig":{"cni.dev/valid-attachments":[{"containerID":"ctr-1","ifname":"eth0"}]}""");
        var gc = cni.Weft("GC", gcConf);
        Assert.True(gc.ExitCode == 0, gc.Stdout);
        Assert.Contains("not currently assigned", TestEnv.Ctl(uri, "ipam", "show", "--ip", ips[0]).Stdout);
        Assert.Contains("is in use", TestEnv.Ctl(uri, "ipam", "show", "--ip", ips[1]).Stdout);
        Assert.Contains("not currently assigned", TestEnv.Ctl(uri, "ipam", "show", "--ip", ips[2]).Stdout);
        Assert.DoesNotContain("eth0", TestEnv.Sh($"ip -n {pods[0].Name} -o link"));
        Assert.Contains("eth0", TestEnv.Sh($"ip -n {pods[1].Name} -o link"));
        // libcni's older key name works too.
        var gc2 = cni.Weft("GC", CniRunner.Config(uri, "node-1", extra: ""","runtimeConfig":{"cni.dev/attachments":[]}"""));
        Assert.Equal(0, gc2.ExitCode);
        Assert.Contains("not currently assigned", TestEnv.Ctl(uri, "ipam", "show", "--ip", ips[1]).Stdout);
    }

    /// <summary>kubelet's parallel first ADDs on a fresh node: one block claimed, not one per winner of a race.</summary>
    [Fact]
    public void Sixty_four_parallel_first_adds_on_a_fresh_node_claim_one_block()
    {
        var (ns, cni, uri) = Setup("blk", Support.Pools.SeedV4.Replace("blockSize: 26", "blockSize: 25", StringComparison.Ordinal));
        var pods = Enumerable.Range(0, 64).Select(i => ns.Pod("p" + i)).ToList();
        for (var round = 0; round < 3; round++)
        {
            var node = $"fresh-{round}";
            var conf = CniRunner.Config(uri, node);
            var adds = pods.AsParallel().WithDegreeOfParallelism(64).Select((p, i) => cni.Weft("ADD", conf, $"r{round}-{i}", p.Path)).ToList();
            Assert.All(adds, r => Assert.True(r.ExitCode == 0, r.Stdout + r.Stderr));
            Assert.Equal(64, adds.Select(r => Ip(r.Json)).Distinct().Count());
            using (var ds = Weft.Datastore.DatastoreFactory.Open(uri))
            {
                var affinities = ds.ListAsync(Weft.Model.Keys.NodeAffinities(node)).AsTask().GetAwaiter().GetResult().Items;
                Assert.True(affinities.Count == 1, $"round {round}: {node} claimed {affinities.Count} blocks: {string.Join(", ", affinities.Select(a => a.Key))}");
            }
            var dels = pods.AsParallel().WithDegreeOfParallelism(64).Select((p, i) => cni.Weft("DEL", conf, $"r{round}-{i}", p.Path)).ToList();
            Assert.All(dels, r => Assert.True(r.ExitCode == 0, r.Stdout + r.Stderr));
        }
    }

    [Fact]
    public void Sixty_four_parallel_adds_get_distinct_addresses_and_parallel_dels_clean_everything_and_addresses_are_reused()
    {
        var (ns, cni, uri) = Setup("par", Support.Pools.SeedV4);
        var conf = CniRunner.Config(uri, "node-1");
        var pods = Enumerable.Range(0, 64).Select(i => ns.Pod("p" + i)).ToList();
        HashSet<string>? previous = null;
        for (var round = 0; round < 2; round++)
        {
            var adds = pods.AsParallel().WithDegreeOfParallelism(64).Select((p, i) => cni.Weft("ADD", conf, $"ctr-{i}", p.Path)).ToList();
            Assert.All(adds, r => Assert.True(r.ExitCode == 0, r.Stdout + r.Stderr));
            var ips = adds.Select(r => Ip(r.Json)).ToHashSet();
            Assert.Equal(64, ips.Count);
            Assert.Equal(64, TestEnv.Sh($"ip -n {ns.Node} -o link show type veth").Split('\n').Count(l => l.Contains("weft")));
            if (previous is not null) Assert.Equal(previous, ips); // released addresses are handed out again
            previous = ips;
            var dels = pods.AsParallel().WithDegreeOfParallelism(64).Select((p, i) => cni.Weft("DEL", conf, $"ctr-{i}", p.Path)).ToList();
            Assert.All(dels, r => Assert.True(r.ExitCode == 0, r.Stdout + r.Stderr));
            Assert.DoesNotContain("weft", TestEnv.Sh($"ip -n {ns.Node} -o link show type veth"));
            Assert.Contains("\"allocations\": 0", TestEnv.Ctl(uri, "ipam", "check", "--grace", "0s", "-o", "json").Stdout);
        }
    }
}
