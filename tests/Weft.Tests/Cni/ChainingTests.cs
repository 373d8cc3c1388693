using System.Text.Json.Nodes;
using Weft.Tests.Support;

namespace Weft.Tests.Cni;

/// <summary>Weft as the first plugin of a conflist, followed by Debian's reference plugins, run as libcni runs a list.</summary>
public sealed class ChainingTests : IDisposable
{
    private readonly List<IDisposable> _cleanup = [];
    private readonly List<string> _dirs = [];

    public void Dispose()
    {
        foreach (var d in _cleanup) d.Dispose();
        foreach (var d in _dirs) Directory.Delete(d, true);
    }

    [Fact]
    public void Weft_then_portmap_then_bandwidth_keeps_weft_interfaces_and_ips_and_the_port_mapping_works()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces");
        Assert.SkipUnless(File.Exists("/usr/lib/cni/portmap"), "containernetworking-plugins not installed");
        var ns = new Netns("chain");
        _cleanup.Add(ns);
        var (dir, uri) = Support.Pools.NewStore(Support.Pools.SeedV4);
        _dirs.Add(dir);
        var cni = new CniRunner(ns.Node, TestEnv.Dist);
        var list = CniRunner.Parse($$$"""
            {"cniVersion":"1.0.0","name":"weftnet","plugins":[
              {"type":"weft","datastore":"{{{uri}}}","nodename":"node-1","ipam":{"type":"weft-ipam"}},
              {"type":"portmap","capabilities":{"portMappings":true},"snat":true},
              {"type":"bandwidth","capabilities":{"bandwidth":true}}]}
            """);
        var runtime = CniRunner.Parse("""
            {"portMappings":[{"hostPort":18080,"containerPort":80,"protocol":"tcp"}],
             "bandwidth":{"ingressRate":100000000,"ingressBurst":1000000}}
            """);
        var pod = ns.Pod("web");
        var (last, result) = cni.AddList(list, "ctr-web", pod.Path, runtimeConfig: runtime);
        Assert.True(last.ExitCode == 0, last.Stdout + last.Stderr);
        var weftResult = result!;
        var ifaces = weftResult["interfaces"]!.AsArray().Select(i => i!["name"]!.GetValue<string>()).ToList();
        Assert.Contains(ifaces, n => n.StartsWith("weft", StringComparison.Ordinal));
        Assert.Contains("eth0", ifaces);
        var ip = weftResult["ips"]![0]!["address"]!.GetValue<string>().Split('/')[0];
        Assert.StartsWith("10.244.", ip);

        // The port mapping really forwards: from the underlay's gateway host to the node's address.
        var gw = ns.Prefix + "-gw";
        var served = TestEnv.Run("/bin/sh", ["-c",
            $"ip netns exec {pod.Name} timeout 10 nc -l -p 80 > /dev/null & sleep 0.3; echo x | ip netns exec {gw} nc -w 3 -N {ns.NodeAddress} 18080; rc=$?; wait; exit $rc"]);
        Assert.True(served.ExitCode == 0, served.Stderr);
        // bandwidth shaped the host side of weft's veth.
        var hostVeth = ifaces.First(n => n.StartsWith("weft", StringComparison.Ordinal));
        Assert.Contains("tbf", TestEnv.Sh($"tc -n {ns.Node} qdisc show dev {hostVeth}"));

        var del = cni.DelList(list, "ctr-web", pod.Path, weftResult, runtimeConfig: runtime);
        Assert.True(del.ExitCode == 0, del.Stdout + del.Stderr);
        Assert.DoesNotContain("weft", TestEnv.Sh($"ip -n {ns.Node} -o link show type veth"));
    }

    [Fact]
    public void Any_other_ipam_type_is_delegated_like_the_reference_bridge_does()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces");
        var ns = new Netns("hl");
        _cleanup.Add(ns);
        var (dir, uri) = Support.Pools.NewStore();
        _dirs.Add(dir);
        var cni = new CniRunner(ns.Node, TestEnv.Dist);
        var dataDir = Path.Combine(dir, "host-local");
        var conf = $$$"""
            {"cniVersion":"1.0.0","name":"hlnet","type":"weft","datastore":"{{{uri}}}","nodename":"node-1","mode":"bridge","bridge":"weftbr1",
             "ipam":{"type":"host-local","dataDir":"{{{dataDir}}}","ranges":[[{"subnet":"10.77.0.0/24","gateway":"10.77.0.1"}]]}}
            """;
        var a = ns.Pod("a");
        var b = ns.Pod("b");
        var ra = cni.Weft("ADD", conf, "ca", a.Path);
        Assert.True(ra.ExitCode == 0, ra.Stdout);
        var rb = cni.Weft("ADD", conf, "cb", b.Path);
        Assert.True(rb.ExitCode == 0, rb.Stdout);
        var ipb = rb.Json["ips"]![0]!["address"]!.GetValue<string>();
        Assert.StartsWith("10.77.0.", ipb);
        Assert.Equal("10.77.0.1", rb.Json["ips"]![0]!["gateway"]!.GetValue<string>());
        TestEnv.Sh($"ip netns exec {a.Name} ping -c 1 -W 2 {ipb.Split('/')[0]}");
        Assert.Equal(0, cni.Weft("DEL", conf, "ca", a.Path).ExitCode);
        Assert.Equal(0, cni.Weft("DEL", conf, "cb", b.Path).ExitCode);
        // host-local released its reservations.
        Assert.DoesNotContain(Directory.EnumerateFiles(Path.Combine(dataDir, "hlnet")), f => Path.GetFileName(f).StartsWith("10.77.", StringComparison.Ordinal));
    }
}
