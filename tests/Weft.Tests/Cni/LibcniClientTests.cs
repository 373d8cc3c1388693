using System.Text.Json.Nodes;
using Weft.Tests.Support;

namespace Weft.Tests.Cni;

/// <summary>
/// A CNI client nobody here wrote drives Weft end to end: libcni (Debian's golang-github-appc-cni-dev) through
/// scripts/real-clients/libcni-client.go, run inside the node namespace. libcni parses Weft's results with its own
/// types, caches them and hands them back as prevResult to CHECK and DEL.
/// </summary>
public sealed class LibcniClientTests : IDisposable
{
    private const string Client = "/var/cache/weft/weft-libcni-client";
    private readonly List<IDisposable> _cleanup = [];
    private readonly List<string> _dirs = [];

    public void Dispose()
    {
        foreach (var d in _cleanup) d.Dispose();
        foreach (var d in _dirs) Directory.Delete(d, true);
    }

    private TestEnv.ProcessResult Run(Netns ns, string dir, params string[] args) =>
        TestEnv.Run("ip", ["netns", "exec", ns.Node, Client, .. args], env: new Dictionary<string, string>
        {
            ["CNI_PATH"] = $"{TestEnv.Dist}:{TestEnv.ReferencePluginDir}",
            ["CNI_CACHE_DIR"] = Path.Combine(dir, "cache"),
            ["CNI_ARGS_K8S"] = "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web",
            ["CAP_ARGS"] = """{"portMappings":[{"hostPort":18081,"containerPort":80,"protocol":"tcp"}]}""",
        });

    [Fact]
    public void Libcni_validates_adds_checks_and_deletes_through_weft()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces");
        Assert.SkipUnless(File.Exists(Client), $"{Client} missing: run scripts/real-clients/build-libcni-client.sh (test.sh does)");
        var ns = new Netns("libcni");
        _cleanup.Add(ns);
        var (dir, uri) = Support.Pools.NewStore(Support.Pools.SeedV4);
        _dirs.Add(dir);
        var alone = Path.Combine(dir, "weft.conflist");
        File.WriteAllText(alone, $$$"""{"cniVersion":"1.0.0","name":"weftnet","plugins":[{"type":"weft","datastore":"{{{uri}}}","nodename":"node-1"}]}""");
        var chained = Path.Combine(dir, "chained.conflist");
        File.WriteAllText(chained, $$$"""{"cniVersion":"1.0.0","name":"weftnet","plugins":[{"type":"weft","datastore":"{{{uri}}}","nodename":"node-1"},{"type":"portmap","capabilities":{"portMappings":true}}]}""");

        var validate = Run(ns, dir, "validate", chained);
        Assert.True(validate.ExitCode == 0, validate.Stderr);
        Assert.Contains("portMappings", validate.Stdout);

        var pod = ns.Pod("web");
        var add = Run(ns, dir, "add", alone, "ctr-web", pod.Path);
        Assert.True(add.ExitCode == 0, add.Stderr);
        var result = JsonNode.Parse(add.Stdout)!;
        var ip = result["ips"]![0]!["address"]!.GetValue<string>();
        Assert.StartsWith("10.244.", ip);
        TestEnv.Sh($"ip netns exec {ns.Node} ping -c 1 -W 2 {ip.Split('/')[0]}");
        var check = Run(ns, dir, "check", alone, "ctr-web", pod.Path);
        Assert.True(check.ExitCode == 0, check.Stderr);
        Assert.Equal(0, Run(ns, dir, "del", alone, "ctr-web", pod.Path).ExitCode);
        Assert.Equal(0, Run(ns, dir, "del", alone, "ctr-web", pod.Path).ExitCode); // idempotent through libcni too
        Assert.DoesNotContain("weft", TestEnv.Sh($"ip -n {ns.Node} -o link"));

        // With the reference portmap chained after weft: libcni feeds weft's result to portmap and back on DEL.
        var pod2 = ns.Pod("web2");
        var add2 = Run(ns, dir, "add", chained, "ctr-web2", pod2.Path);
        Assert.True(add2.ExitCode == 0, add2.Stderr);
        Assert.Contains("weft", add2.Stdout);
        Assert.Contains("18081", TestEnv.Sh($"ip netns exec {ns.Node} iptables -t nat -S"));
        var del2 = Run(ns, dir, "del", chained, "ctr-web2", pod2.Path);
        Assert.True(del2.ExitCode == 0, del2.Stderr);
        Assert.DoesNotContain("18081", TestEnv.Sh($"ip netns exec {ns.Node} iptables -t nat -S"));
        Assert.Contains("\"allocations\": 0", TestEnv.Ctl(uri, "ipam", "check", "--grace", "0s", "-o", "json").Stdout);
    }
}
