using System.Diagnostics;
using System.Text.Json.Nodes;
using Weft.Tests.Support;

namespace Weft.Tests.Lab;

/// <summary>
/// The chapter's documents exactly as the files are (`../shared/seed-documents/`), with their effect: Flannel's
/// net-conf.json runs the agents, Calico's IPPool (with the operator's `encapsulation: VXLAN`) gives the pods their
/// addresses and the overlay, and the GlobalNetworkPolicy leaves `app=database` pods sending nothing.
/// </summary>
public sealed class SeedDocumentLabTests
{
    [Fact]
    public void Flannel_net_conf_calico_ippool_and_globalnetworkpolicy_as_written()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces");
        Assert.SkipUnless(File.Exists(TestEnv.SeedDocument("calico-ippool.yaml")), "../shared/seed-documents is not beside the checkout");
        using var lab = new LabRun();
        lab.Up("--nodes", "2", "--pods-per-node", "0", "--net-conf", TestEnv.SeedDocument("flannel-net-conf.json"), "--pool", TestEnv.SeedDocument("calico-ippool.yaml"));
        TestEnv.Ok(lab.Ctl("lab", "add-pod", "--name", lab.Name, "default/web-1", "--node", "node-1", "--label", "app=web", "--port", "80/TCP", "--port", "80/UDP"));
        TestEnv.Ok(lab.Ctl("lab", "add-pod", "--name", lab.Name, "default/web-2", "--node", "node-2", "--label", "app=web", "--port", "80/TCP", "--port", "80/UDP"));
        TestEnv.Ok(lab.Ctl("lab", "add-pod", "--name", lab.Name, "default/database", "--node", "node-2", "--label", "app=database", "--port", "80/TCP", "--port", "80/UDP"));

        // The pool as written, read back: the operator's encapsulation became vxlanMode Always.
        var pool = TestEnv.Ok(lab.Ctl("--lab", lab.Name, "get", "ippool", "default-pool", "-o", "yaml")).Stdout;
        Assert.Contains("vxlanMode: Always", pool);
        Assert.Contains("natOutgoing: true", pool);
        Assert.Matches(@"default-pool\s+10\.244\.0\.0/16\s+all\(\)\s+26\s+true\s+VXLAN", TestEnv.Ok(lab.Ctl("--lab", lab.Name, "get", "ippool", "-o", "wide")).Stdout);
        Assert.DoesNotContain("net-conf", TestEnv.Ok(lab.Ctl("--lab", lab.Name, "get", "ippool")).Stdout); // the agents reused the pool covering Network

        // Every pod's address is from default-pool, and node-1 reaches node-2's block through the VXLAN device.
        var pods = lab.Status()["pods"]!.AsArray();
        Assert.Equal(3, pods.Count);
        foreach (var p in pods)
            Assert.Contains("Pool: default-pool", TestEnv.Ok(lab.Ctl("--lab", lab.Name, "ipam", "show", "--ip", p!["ip"]!.ToString())).Stdout);
        var web2 = pods.Single(p => p!["name"]!.ToString() == "web-2")!["ip"]!.ToString();
        Assert.Contains("dev weft-vxlan", TestEnv.Sh($"ip -n {lab.Netns("node-1")} route get {web2}"));
        Assert.Contains("vxlan id 1", TestEnv.Sh($"ip -n {lab.Netns("node-1")} -d link show weft-vxlan"));
        var before = lab.Matrix();
        Assert.True(LabRun.AllTrue(before), before.ToJsonString());

        // calico-globalnetworkpolicy.yaml: pods labelled app=database send nothing (TCP, UDP, ICMP, to pods and outside).
        TestEnv.Ok(lab.Ctl("--lab", lab.Name, "apply", "--wait", "-f", TestEnv.SeedDocument("calico-globalnetworkpolicy.yaml")));
        foreach (var (protocol, port) in new[] { ("TCP", 80), ("UDP", 80) })
        {
            var m = lab.Matrix(protocol, port);
            var names = m["pods"]!.AsArray().Select(p => p!.ToString()).ToList();
            var allowed = m["allowed"]!.AsArray();
            for (var i = 0; i < names.Count; i++)
                for (var j = 0; j < names.Count; j++)
                {
                    if (i == j) continue;
                    var cell = allowed[i]![j]!.GetValue<bool>();
                    Assert.True(cell == (names[i] != "default/database"), $"{protocol} {names[i]} → {names[j]}: {cell}");
                }
        }
        var dbNetns = pods.Single(p => p!["name"]!.ToString() == "database")!["netns"]!.ToString();
        Assert.NotEqual(0, TestEnv.TrySh($"ip netns exec {dbNetns} ping -c 1 -W 1 {web2}").ExitCode);
        Assert.NotEqual(0, TestEnv.TrySh($"ip netns exec {dbNetns} ping -c 1 -W 1 203.0.113.1").ExitCode);
        var webNetns = pods.Single(p => p!["name"]!.ToString() == "web-1")!["netns"]!.ToString();
        Assert.Equal(0, TestEnv.TrySh($"ip netns exec {webNetns} ping -c 1 -W 2 203.0.113.1").ExitCode);
    }

    [Fact]
    public void Flannel_net_conf_host_gw_runs_the_host_gw_backend()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces");
        Assert.SkipUnless(File.Exists(TestEnv.SeedDocument("flannel-net-conf.json")), "../shared/seed-documents is not beside the checkout");
        var dir = TestEnv.TempDir("netconf");
        try
        {
            // The chapter's `# or "host-gw"`: the same file with the other backend.
            var conf = Path.Combine(dir, "net-conf.json");
            File.WriteAllText(conf, File.ReadAllText(TestEnv.SeedDocument("flannel-net-conf.json")).Replace("\"vxlan\"", "\"host-gw\"", StringComparison.Ordinal));
            using var lab = new LabRun();
            lab.Up("--nodes", "2", "--pods-per-node", "1", "--net-conf", conf);
            var pools = TestEnv.Ok(lab.Ctl("--lab", lab.Name, "get", "ippool", "-o", "wide")).Stdout;
            Assert.Matches(@"net-conf\s+10\.244\.0\.0/16\s+all\(\)\s+24\s+false\s+None", pools); // Flannel's SubnetLen default 24
            var pods = lab.Status()["pods"]!.AsArray();
            var far = pods.Single(p => p!["node"]!.ToString() == "node-2")!["ip"]!.ToString();
            Assert.Contains("via 198.51.100.12 dev eth0", TestEnv.Sh($"ip -n {lab.Netns("node-1")} route get {far}"));
            Assert.DoesNotContain("weft-vxlan", TestEnv.Sh($"ip -n {lab.Netns("node-1")} link show"));
            Assert.True(LabRun.AllTrue(lab.Matrix()));
        }
        finally { Directory.Delete(dir, true); }
    }

    /// <summary>
    /// Brings <paramref name="lab"/> up with 2 nodes, web-1 (app=web) on node-1 and database (app=database) on node-2,
    /// each added with <paramref name="podFlags"/>, under the seed GlobalNetworkPolicy (the database sends nothing).
    /// </summary>
    private static (JsonNode Web, JsonNode Db) WebAndDatabase(LabRun lab, params string[] podFlags)
    {
        lab.Up("--nodes", "2", "--pods-per-node", "0");
        TestEnv.Ok(lab.Ctl(["lab", "add-pod", "--name", lab.Name, "default/web-1", "--node", "node-1", "--label", "app=web", .. podFlags]));
        TestEnv.Ok(lab.Ctl(["lab", "add-pod", "--name", lab.Name, "default/database", "--node", "node-2", "--label", "app=database", .. podFlags]));
        TestEnv.Ok(lab.Ctl("--lab", lab.Name, "apply", "--wait", "-f", TestEnv.SeedDocument("calico-globalnetworkpolicy.yaml")));
        var pods = lab.Status()["pods"]!.AsArray();
        return (pods.Single(p => p!["name"]!.ToString() == "web-1")!, pods.Single(p => p!["name"]!.ToString() == "database")!);
    }

    /// <summary>
    /// calico-installation-bpf.yaml as written switches running agents to the eBPF dataplane (programs on every pod
    /// interface, same verdicts), and calico-installation-iptables.yaml switches them back.
    /// </summary>
    [Fact]
    public void Installation_documents_switch_running_agents_between_dataplanes()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces");
        Assert.SkipUnless(File.Exists(TestEnv.SeedDocument("calico-installation-bpf.yaml")), "../shared/seed-documents is not beside the checkout");
        using var lab = new LabRun();
        var (web, db) = WebAndDatabase(lab, "--port", "80/TCP");
        string HostInterface(JsonNode pod) => TestEnv.Sh($"ip -n {lab.Netns(pod["node"]!.ToString())} -o route get {pod["ip"]}").Split(" dev ")[1].Split(' ')[0];

        void Enforced(string dataplane)
        {
            var m = lab.Matrix();
            var names = m["pods"]!.AsArray().Select(p => p!.ToString()).ToList();
            var allowed = m["allowed"]!.AsArray();
            Assert.True(allowed[names.IndexOf("default/web-1")]![names.IndexOf("default/database")]!.GetValue<bool>(), $"{dataplane}: web-1 reaches database");
            Assert.False(allowed[names.IndexOf("default/database")]![names.IndexOf("default/web-1")]!.GetValue<bool>(), $"{dataplane}: database sends nothing");
            Assert.NotEqual(0, TestEnv.TrySh($"ip netns exec {db["netns"]} ping -c 1 -W 1 {web["ip"]}").ExitCode);
            Assert.Equal(0, TestEnv.TrySh($"ip netns exec {web["netns"]} ping -c 1 -W 2 {db["ip"]}").ExitCode);
        }
        string Filters(JsonNode pod) => TestEnv.Sh($"tc -n {lab.Netns(pod["node"]!.ToString())} filter show dev {HostInterface(pod)} ingress");
        Enforced("nftables");
        Assert.DoesNotContain("weft_from_pod", Filters(db));

        var applied = TestEnv.Ok(lab.Ctl("--lab", lab.Name, "apply", "--wait", "-f", TestEnv.SeedDocument("calico-installation-bpf.yaml"))).Stdout;
        Assert.Contains("runs Weft's bpf dataplane", applied);
        Assert.Contains("weft_from_pod", Filters(db));
        Assert.Contains("weft_from_pod", Filters(web));
        // No netfilter hook decides anything beside the programs: only the flow report of routing drops is left.
        var ruleset = TestEnv.Sh($"ip netns exec {lab.Netns("node-2")} nft list ruleset");
        Assert.DoesNotContain("ep-", ruleset);
        Assert.DoesNotContain("hook forward", ruleset);
        Assert.DoesNotContain("hook input", ruleset);
        Enforced("bpf");

        TestEnv.Ok(lab.Ctl("--lab", lab.Name, "apply", "--wait", "-f", TestEnv.SeedDocument("calico-installation-iptables.yaml")));
        Assert.DoesNotContain("weft_from_pod", Filters(db));
        Enforced("nftables again");
        // The programs are unpinned: a pod added now gets none from its plugin (nftables decides for it).
        TestEnv.Ok(lab.Ctl("lab", "add-pod", "--name", lab.Name, "default/web-2", "--node", "node-2", "--label", "app=web", "--port", "80/TCP"));
        TestEnv.Ok(lab.Ctl("lab", "sync", "--name", lab.Name));
        var web2 = lab.Status()["pods"]!.AsArray().Single(p => p!["name"]!.ToString() == "web-2")!;
        Assert.DoesNotContain("weft_from_pod", Filters(web2));
        Assert.Equal(0, TestEnv.TrySh($"ip netns exec {web2["netns"]} ping -c 1 -W 2 {db["ip"]}").ExitCode);
    }

    /// <summary>
    /// Connections keep working through both switches, in the direction policy would refuse as a new connection: the
    /// database (egress denied) pushes to web-1 on connections web-1 opened. One is opened under nftables and crosses
    /// both switches (after nftables → bpf the programs find it in the kernel's conntrack); one is opened under bpf,
    /// where the kernel tracks nothing, and crosses to nftables (the programs hand it to the kernel's conntrack).
    /// </summary>
    [Fact]
    public void Established_connections_survive_switches_both_ways_in_the_direction_policy_denies()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces");
        Assert.SkipUnless(File.Exists(TestEnv.SeedDocument("calico-installation-bpf.yaml")), "../shared/seed-documents is not beside the checkout");
        using var lab = new LabRun();
        var (web, db) = WebAndDatabase(lab);
        void Refused() => Assert.NotEqual(0, TestEnv.TrySh($"ip netns exec {db["netns"]} ping -c 1 -W 1 {web["ip"]}").ExitCode);

        using var before = new PushStream(db["netns"]!.ToString(), web["netns"]!.ToString(), db["ip"]!.ToString(), 9091);
        before.Flowing("opened under nftables");
        Refused(); // the reverse direction is refused as a new connection: the established state is what carries it

        TestEnv.Ok(lab.Ctl("--lab", lab.Name, "apply", "--wait", "-f", TestEnv.SeedDocument("calico-installation-bpf.yaml")));
        Assert.DoesNotContain("ct state", TestEnv.Sh($"ip netns exec {lab.Netns("node-2")} nft list ruleset")); // no kernel conntrack needed now
        before.Flowing("after nftables -> bpf");
        using var during = new PushStream(db["netns"]!.ToString(), web["netns"]!.ToString(), db["ip"]!.ToString(), 9092);
        during.Flowing("opened under bpf");
        Refused();

        TestEnv.Ok(lab.Ctl("--lab", lab.Name, "apply", "--wait", "-f", TestEnv.SeedDocument("calico-installation-iptables.yaml")));
        before.Flowing("after bpf -> nftables");
        during.Flowing("opened under bpf, after bpf -> nftables");
        Refused();
        Assert.True(before.LongestPause < 0.5, $"the longest pause between lines was {before.LongestPause * 1000:0} ms");
        Assert.True(during.LongestPause < 0.5, $"the longest pause between lines was {during.LongestPause * 1000:0} ms");
    }

    /// <summary>A server writing a line every 20 ms to the one client that connects, and that client stamping each line.</summary>
    private sealed class PushStream : IDisposable
    {
        private readonly Process _server;
        private readonly Process _client;
        private readonly List<double> _stamps = [];

        public PushStream(string serverNetns, string clientNetns, string serverIp, int port)
        {
            _server = Process.Start(new ProcessStartInfo("ip", ["netns", "exec", serverNetns, "python3", "-c",
                $"import socket,time\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(('0.0.0.0',{port}));s.listen(1)\nc,_=s.accept()\nwhile True:\n c.sendall(b'tick\\n');time.sleep(0.02)"]) { RedirectStandardError = true })!;
            // The client retries until the server listens (a fresh python3 takes a moment to bind).
            _client = Process.Start(new ProcessStartInfo("ip", ["netns", "exec", clientNetns, "python3", "-u", "-c",
                $"import socket,time\nfor i in range(100):\n try: s=socket.create_connection(('{serverIp}',{port}),timeout=30); break\n except OSError: time.sleep(0.05)\nf=s.makefile()\nfor line in f: print(time.monotonic(),flush=True)"]) { RedirectStandardOutput = true, RedirectStandardError = true })!;
            new Thread(() =>
            {
                while (_client.StandardOutput.ReadLine() is { } line)
                    lock (_stamps) _stamps.Add(double.Parse(line, System.Globalization.CultureInfo.InvariantCulture));
            }) { IsBackground = true }.Start();
            var started = System.Diagnostics.Stopwatch.StartNew();
            while (Count() == 0 && started.Elapsed < TimeSpan.FromSeconds(10)) Thread.Sleep(20);
            Assert.True(Count() > 0, $"no line reached the client on port {port} in 10 s");
        }

        private int Count() { lock (_stamps) return _stamps.Count; }

        public void Flowing(string when)
        {
            var before = Count();
            Thread.Sleep(1000);
            Assert.True(Count() - before >= 20, $"{when}: the connection carried {Count() - before} lines in 1 s (expected ~50)");
        }

        public double LongestPause
        {
            get
            {
                lock (_stamps) return _stamps.Zip(_stamps.Skip(1), (a, b) => b - a).DefaultIfEmpty(double.MaxValue).Max();
            }
        }

        public void Dispose()
        {
            foreach (var p in new[] { _client, _server })
            {
                try { p.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
                p.WaitForExit();
                p.Dispose();
            }
        }
    }
}
