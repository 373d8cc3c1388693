using System.Diagnostics;
using System.Text.Json.Nodes;
using Weft.Tests.Support;

namespace Weft.Tests.Cni;

/// <summary>
/// The plugin is SIGKILLed at random points of ADD. Whatever it left behind, no later ADD may get an address
/// that is already held, `weftctl ipam check` must report the leaks, and CNI GC must reclaim them.
/// </summary>
public sealed class CrashSafetyTests : IDisposable
{
    private readonly List<IDisposable> _cleanup = [];
    private string? _dir;

    public void Dispose()
    {
        foreach (var d in _cleanup) d.Dispose();
        if (_dir is not null) Directory.Delete(_dir, true);
    }

    [Fact]
    public void Sigkill_at_random_points_of_add_never_duplicates_an_address_and_gc_reclaims_leaks()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces");
        var ns = new Netns("kill");
        _cleanup.Add(ns);
        (_dir, var uri) = Support.Pools.NewStore(Support.Pools.SeedV4);
        var conf = CniRunner.Config(uri, "node-1");
        var cni = new CniRunner(ns.Node, TestEnv.Dist);
        var rng = new Random(42);
        const int killed = 40;

        for (var i = 0; i < killed; i++)
        {
            var pod = ns.Pod("k" + i);
            var psi = new ProcessStartInfo("ip") { RedirectStandardInput = true, RedirectStandardOutput = true, UseShellExecute = false };
            foreach (var a in new[] { "netns", "exec", ns.Node, TestEnv.WeftPlugin }) psi.ArgumentList.Add(a);
            psi.Environment["CNI_COMMAND"] = "ADD";
            psi.Environment["CNI_CONTAINERID"] = "killed-" + i;
            psi.Environment["CNI_NETNS"] = pod.Path;
            psi.Environment["CNI_IFNAME"] = "eth0";
            psi.Environment["CNI_PATH"] = TestEnv.Dist;
            using var p = Process.Start(psi)!;
            p.StandardInput.Write(conf);
            p.StandardInput.Close();
            Thread.Sleep(rng.Next(0, 25)); // ADD takes a few ms: this lands before, inside and after its steps
            try { p.Kill(); } catch (InvalidOperationException) { }
            p.WaitForExit();
        }

        // Survivors: real ADDs afterwards. Their addresses must be unique and never one a killed ADD still holds.
        var held = Allocations(uri);
        var good = new List<(string Id, string Ip)>();
        for (var i = 0; i < 20; i++)
        {
            var pod = ns.Pod("ok" + i);
            var r = cni.Weft("ADD", conf, "ok-" + i, pod.Path);
            Assert.True(r.ExitCode == 0, r.Stdout);
            var ip = r.Json["ips"]![0]!["address"]!.GetValue<string>().Split('/')[0];
            Assert.DoesNotContain(ip, held);
            good.Add(("ok-" + i, ip));
        }
        Assert.Equal(good.Count, good.Select(g => g.Ip).Distinct().Count());

        var check = JsonNode.Parse(TestEnv.Ctl(uri, "ipam", "check", "--grace", "0s", "-o", "json").Stdout)!;
        var problems = check["problems"]!.AsArray();
        Assert.DoesNotContain(problems, p => p!["kind"]!.GetValue<string>() is "duplicate-address" or "missing-handle");
        var leaked = problems.Where(p => p!["kind"]!.GetValue<string>() == "leaked").Select(p => p!["handle"]!.GetValue<string>()).ToList();
        Assert.All(leaked, h => Assert.Contains(".killed-", h));

        // GC with the runtime's list of live attachments reclaims every leak and every half-built veth.
        var valid = new JsonArray(good.Select(g => (JsonNode?)new JsonObject { ["containerID"] = g.Id, ["ifname"] = "eth0" }).ToArray());
        var gcConf = CniRunner.Parse(conf);
        gcConf["runtimeConfig"] = new JsonObject { ["cni.dev/valid-attachments"] = valid };
        var gc = cni.Weft("GC", gcConf.ToJsonString());
        Assert.True(gc.ExitCode == 0, gc.Stdout);
        var after = JsonNode.Parse(TestEnv.Ctl(uri, "ipam", "check", "--grace", "0s", "-o", "json").Stdout)!;
        Assert.Empty(after["problems"]!.AsArray());
        Assert.Equal(good.Count, after["allocations"]!.GetValue<int>());
        var veths = TestEnv.Sh($"ip -n {ns.Node} -o link show type veth").Split('\n').Count(l => l.Contains("weft"));
        Assert.Equal(good.Count, veths);
    }

    /// <summary>Addresses held by killed ADDs: every allocation without a completed endpoint is reported as a leak.</summary>
    private static HashSet<string> Allocations(string uri)
    {
        var check = JsonNode.Parse(TestEnv.Ctl(uri, "ipam", "check", "--grace", "0s", "-o", "json").Stdout)!;
        return check["problems"]!.AsArray().Where(p => p!["address"] is not null).Select(p => p!["address"]!.GetValue<string>()).ToHashSet();
    }
}
