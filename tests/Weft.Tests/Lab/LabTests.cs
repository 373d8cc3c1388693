using System.Diagnostics;
using System.Text.Json.Nodes;
using Weft.Tests.Support;

namespace Weft.Tests.Lab;

/// <summary>A running lab, removed on dispose (also when the test fails).</summary>
/// <summary>A lab shared by the tests of one class: a subclass brings it up (not at all without root, Ready stays false).</summary>
public abstract class LabFixture : IDisposable
{
    public LabRun Lab { get; } = new();
    public bool Ready { get; private set; }

    /// <summary>`lab up` with <paramref name="args"/>, every agent on <paramref name="dataplane"/> (null: the default, nftables).</summary>
    protected void Up(string? dataplane, params string[] args)
    {
        Lab.Up([.. args, .. dataplane is null ? Array.Empty<string>() : ["--dataplane", dataplane]]);
        Ready = true;
    }

    public void Dispose()
    {
        Lab.Dispose();
        GC.SuppressFinalize(this);
    }
}

public sealed class LabRun : IDisposable
{
    private static int _counter;
    public string Name { get; } = $"l{Environment.ProcessId % 10000}x{Interlocked.Increment(ref _counter)}";

    public TestEnv.ProcessResult Up(params string[] args)
    {
        var r = Ctl(["lab", "up", "--name", Name, .. args]);
        Assert.True(r.ExitCode == 0, "lab up failed: " + r.Stdout + r.Stderr);
        return r;
    }

    public TestEnv.ProcessResult Ctl(params string[] args) => TestEnv.Run(TestEnv.Weftctl, args, timeout: TimeSpan.FromSeconds(180));

    /// <summary>`weftctl --lab NAME VERB [FLAGS] -f -` with the documents on stdin (apply, delete).</summary>
    public TestEnv.ProcessResult Documents(string verb, string yaml, params string[] flags) =>
        TestEnv.Run(TestEnv.Weftctl, ["--lab", Name, verb, .. flags, "-f", "-"], yaml, timeout: TimeSpan.FromSeconds(180));

    public JsonObject Status() => JsonNode.Parse(Ctl("lab", "status", "--name", Name, "-o", "json").Stdout)!.AsObject();

    public JsonObject Matrix(string protocol = "TCP", int port = 80) =>
        JsonNode.Parse(Ctl("lab", "matrix", "--name", Name, "--protocol", protocol, "--port", port.ToString(System.Globalization.CultureInfo.InvariantCulture), "-o", "json").Stdout)!.AsObject();

    public string Netns(string suffix) => $"{Name}-{suffix}";

    public void Dispose() => Ctl("lab", "down", "--name", Name);

    public static bool AllTrue(JsonObject matrix) =>
        matrix["allowed"]!.AsArray().All(row => row!.AsArray().All(c => c!.GetValue<bool>()));
}

public sealed class LabTests
{
    /// <summary>
    /// With the BPF policy dataplane in bridge mode, the programs go on the pods' bridge ports only: the bridge itself
    /// (`weft0`, which routed traffic to and from the pods crosses) is no pod interface, also when a restarted agent
    /// attaches to every pod interface it finds.
    /// </summary>
    [Fact]
    public void Bridge_mode_with_the_bpf_dataplane_keeps_every_path_through_an_agent_restart()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces");
        using var lab = new LabRun();
        lab.Up("--nodes", "2", "--pods-per-node", "2", "--mode", "bridge", "--dataplane", "bpf");
        var before = lab.Matrix("TCP", 80);
        Assert.True(LabRun.AllTrue(before), before.ToJsonString());
        TestEnv.Ok(lab.Ctl("lab", "restart-agent", "--name", lab.Name, "--node", "node-1", "--kill"));
        TestEnv.Ok(lab.Ctl("lab", "sync", "--name", lab.Name));
        Assert.DoesNotContain("weft_from_pod", TestEnv.Sh($"tc -n {lab.Netns("node-1")} filter show dev weft0 ingress"));
        var after = lab.Matrix("TCP", 80);
        Assert.True(LabRun.AllTrue(after), after.ToJsonString());
    }

    [Theory]
    [InlineData("vxlan", "routed", "sqlite")]
    [InlineData("vxlan", "bridge", "sqlite")]
    [InlineData("host-gw", "routed", "sqlite")]
    [InlineData("host-gw", "bridge", "sqlite")]
    [InlineData("vxlan", "routed", "etcd")]
    [InlineData("host-gw", "bridge", "etcd")]
    public void Three_nodes_two_pods_each_reach_every_pod_without_nat(string backend, string mode, string datastore)
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces");
        using var lab = new LabRun();
        lab.Up("--nodes", "3", "--pods-per-node", "2", "--backend", backend, "--mode", mode, "--datastore", datastore);
        var status = lab.Status();
        Assert.Equal(3, status["nodes"]!.AsArray().Count);
        Assert.All(status["nodes"]!.AsArray(), n => Assert.Equal("ok", n!["health"]!.GetValue<string>()));
        var pods = status["pods"]!.AsArray();
        Assert.Equal(6, pods.Count);
        // namespace/name are the pod's Kubernetes names, netns its network namespace (what scripts read).
        Assert.All(pods, p =>
        {
            Assert.Equal("default", p!["namespace"]!.GetValue<string>());
            Assert.Equal($"default/{p["name"]}", p["pod"]!.GetValue<string>());
            Assert.StartsWith(lab.Name + "-p-default-", p["netns"]!.GetValue<string>(), StringComparison.Ordinal);
        });
        Assert.All(status["nodes"]!.AsArray(), n => Assert.StartsWith(lab.Name + "-node-", n!["netns"]!.GetValue<string>(), StringComparison.Ordinal));
        Assert.Equal(3, pods.Select(p => p!["node"]!.GetValue<string>()).Distinct().Count());

        var tcp = lab.Matrix("TCP", 80);
        Assert.True(LabRun.AllTrue(tcp), tcp.ToJsonString());
        Assert.Equal(6, tcp["pods"]!.AsArray().Count);
        Assert.True(LabRun.AllTrue(lab.Matrix("TCP", 81)));
        var udp = lab.Matrix("UDP", 80);
        Assert.True(LabRun.AllTrue(udp), udp.ToJsonString());

        // ICMP across nodes, and the source address the far pod sees is the sender's own pod IP.
        var first = pods[0]!;
        var last = pods.First(p => p!["node"]!.GetValue<string>() != first["node"]!.GetValue<string>())!;
        var (from, to) = (first["pod"]!.GetValue<string>(), last["ip"]!.GetValue<string>());
        Assert.Equal(0, lab.Ctl("lab", "exec", "--name", lab.Name, from, "--", "ping", "-c", "1", "-W", "2", to).ExitCode);
        var http = TestEnv.Sh($"printf 'GET /where HTTP/1.0\\r\\n\\r\\n' | ip netns exec {first["netns"]} nc -w 2 {to} 80");
        Assert.Contains("/where", http);
        Assert.Contains("client=" + first["ip"]!.GetValue<string>(), http);
        // And the node itself reaches a pod on another node.
        Assert.Equal(0, lab.Ctl("lab", "exec", "--name", lab.Name, "--node", "node-1", "--", "ping", "-c", "1", "-W", "2", to).ExitCode);
    }

    [Theory]
    [InlineData("vxlan")]
    [InlineData("host-gw")]
    public void Pods_pinned_to_addresses_of_one_block_on_three_nodes_reach_each_other(string backend)
    {
        // One /26 block can only be affine to one node; the others borrow from it and need a /32 route each.
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces");
        using var lab = new LabRun();
        var topology = Path.Combine(Path.GetTempPath(), $"weft-pinned-{lab.Name}.yaml");
        File.WriteAllText(topology, string.Join("\n---\n", Enumerable.Range(1, 3).Select(i => $$"""
            apiVersion: v1
            kind: Pod
            metadata:
              name: p{{i}}
              namespace: default
              annotations: {cni.projectcalico.org/ipAddrs: '["10.244.9.{{10 + i}}"]'}
            spec:
              nodeName: node-{{i}}
              containers: [{name: s, ports: [{containerPort: 80, protocol: TCP}]}]
            """)));
        try { lab.Up("--nodes", "3", "--backend", backend, "--topology", topology); }
        finally { File.Delete(topology); }
        var ips = lab.Status()["pods"]!.AsArray().Select(p => p!["ip"]!.GetValue<string>()).Order().ToList();
        Assert.Equal(["10.244.9.11", "10.244.9.12", "10.244.9.13"], ips);
        var m = lab.Matrix("TCP", 80);
        Assert.True(LabRun.AllTrue(m), m.ToJsonString());
    }

    [Fact]
    public void Lab_down_removes_every_namespace_process_and_file_even_without_its_state_file()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces");
        using var lab = new LabRun();
        lab.Up("--nodes", "2", "--pods-per-node", "1");
        var pids = lab.Status()["nodes"]!.AsArray().Select(n => n!["agentPid"]!.GetValue<int>()).ToList();
        var state = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText($"/var/lib/weft/labs/{lab.Name}/lab.json"))!;
        var servers = state["pods"]!.AsArray().Select(p => p!["serverPid"]!.GetValue<int>()).ToList();
        Assert.NotEmpty(servers);
        File.Delete($"/var/lib/weft/labs/{lab.Name}/lab.json"); // as after a crash mid-way
        Assert.Equal(0, lab.Ctl("lab", "down", "--name", lab.Name).ExitCode);
        Assert.DoesNotContain(lab.Name + "-", TestEnv.Sh("ip netns list"));
        Assert.False(Directory.Exists($"/var/lib/weft/labs/{lab.Name}"));
        // Without the state file, lab down finds the lab's processes through its namespaces and ends them too.
        foreach (var pid in pids.Concat(servers))
        {
            var alive = File.Exists($"/proc/{pid}/cmdline") && File.ReadAllText($"/proc/{pid}/cmdline").Contains("weft", StringComparison.Ordinal) &&
                        !File.ReadAllText($"/proc/{pid}/stat").Contains(") Z", StringComparison.Ordinal);
            if (alive) Process.GetProcessById(pid).Kill();
            Assert.False(alive, $"process {pid} of the lab outlived lab down");
        }
    }

    [Fact]
    public void Agent_killed_and_restarted_during_an_iperf3_flow_does_not_disturb_it()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces");
        Assert.SkipUnless(File.Exists("/usr/bin/iperf3"), "iperf3 not installed");
        using var lab = new LabRun();
        lab.Up("--nodes", "2", "--pods-per-node", "1");
        var pods = lab.Status()["pods"]!.AsArray();
        var (client, server) = (pods[0]!["netns"]!.GetValue<string>(), pods[1]!);
        var serverIp = server["ip"]!.GetValue<string>();
        var routesBefore = TestEnv.Sh($"ip -n {lab.Netns("node-1")} route show proto 88");
        TestEnv.Sh($"ip netns exec {server["netns"]} iperf3 -s -D -1 -p 5201 --logfile /tmp/{lab.Name}-iperf-s.log");
        Thread.Sleep(300);
        var flow = Process.Start(new ProcessStartInfo("ip", ["netns", "exec", client, "iperf3", "-c", serverIp, "-t", "6", "-i", "1", "-J", "-p", "5201"])
            { RedirectStandardOutput = true, RedirectStandardError = true })!;
        var output = flow.StandardOutput.ReadToEndAsync();
        Thread.Sleep(1500);
        var restart = lab.Ctl("lab", "restart-agent", "--name", lab.Name, "--node", "node-1", "--kill");
        Assert.True(restart.ExitCode == 0, restart.Stderr);
        Assert.True(flow.WaitForExit(30_000));
        Assert.Equal(0, flow.ExitCode);
        var report = JsonNode.Parse(output.Result)!;
        // Every one-second interval carried traffic: the kernel state was adopted, never torn down.
        var intervals = report["intervals"]!.AsArray().Select(i => i!["sum"]!["bytes"]!.GetValue<double>()).ToList();
        Assert.True(intervals.Count >= 5);
        Assert.All(intervals, b => Assert.True(b > 0, string.Join(",", intervals)));
        Assert.Equal(routesBefore, TestEnv.Sh($"ip -n {lab.Netns("node-1")} route show proto 88"));
        Assert.True(LabRun.AllTrue(lab.Matrix()));
        File.Delete($"/tmp/{lab.Name}-iperf-s.log");
    }

    [Fact]
    public void A_node_that_leaves_has_its_routes_removed_everywhere_and_gets_them_back_when_it_rejoins()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces");
        using var lab = new LabRun();
        lab.Up("--nodes", "3", "--pods-per-node", "1");
        string Routes(string node) => TestEnv.Sh($"ip -n {lab.Netns(node)} route show proto 88");
        var node3Blocks = lab.Ctl("--lab", lab.Name, "get", "blocks").Stdout.Split('\n').Where(l => l.Contains("host:node-3")).Select(l => l.Split(' ')[0]).ToList();
        Assert.NotEmpty(node3Blocks);
        Assert.All(node3Blocks, b => Assert.Contains(b, Routes("node-1")));

        Assert.Equal(0, lab.Ctl("lab", "restart-agent", "--name", lab.Name, "--node", "node-3", "--stop").ExitCode);
        var del = lab.Ctl("--lab", lab.Name, "delete", "node", "node-3");
        Assert.True(del.ExitCode == 0, del.Stderr);
        Assert.True(Eventually(() => node3Blocks.All(b => !Routes("node-1").Contains(b)) && node3Blocks.All(b => !Routes("node-2").Contains(b))),
            "routes to node-3 stayed: " + Routes("node-1"));

        Assert.Equal(0, lab.Ctl("lab", "restart-agent", "--name", lab.Name, "--node", "node-3").ExitCode);
        Assert.True(Eventually(() => node3Blocks.All(b => Routes("node-1").Contains(b) && Routes("node-2").Contains(b))));
        Assert.True(LabRun.AllTrue(lab.Matrix()));
    }

    [Theory]
    [InlineData("bpf")]
    [InlineData("nftables")]
    public void NatOutgoing_pools_masquerade_to_a_fake_internet_host_and_stop_when_turned_off(string masquerade)
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces");
        using var lab = new LabRun();
        lab.Up("--nodes", "2", "--pods-per-node", "1", "--masquerade", masquerade);
        var pod = lab.Status()["pods"]![0]!;
        var node = lab.Netns(pod["node"]!.GetValue<string>());
        var server = Process.Start(new ProcessStartInfo("ip", ["netns", "exec", lab.Netns("gw"), TestEnv.Weftctl, "lab", "serve", "--tcp", "8080"]) { RedirectStandardOutput = true })!;
        using var udp = UdpPeerEcho.Start(lab.Netns("gw"));
        try
        {
            string Fetch() => TestEnv.TrySh($"printf 'GET /out HTTP/1.0\r\n\r\n' | ip netns exec {pod["netns"]} nc -w 2 203.0.113.1 8080").Stdout;
            Assert.True(Eventually(() => Fetch().Contains("client=198.51.100.")), "no masqueraded answer from the fake internet host");
            // UDP and ICMP echo leave with the node's address too, and their answers find the pod.
            Assert.StartsWith("peer=198.51.100.", TestEnv.TrySh($"echo hi | ip netns exec {pod["netns"]} nc -u -w 1 203.0.113.1 {udp.Port}").Stdout);
            Assert.Equal(0, TestEnv.TrySh($"ip netns exec {pod["netns"]} ping -c 1 -W 2 203.0.113.1").ExitCode);
            var nat = TestEnv.TrySh($"ip netns exec {node} nft list table ip weft-nat").Stdout;
            var tc = TestEnv.Sh($"ip netns exec {node} tc filter show dev eth0 egress");
            if (masquerade == "bpf")
            {
                Assert.Contains("weft_masq_egres", tc);
                Assert.DoesNotContain("masquerade", nat);
            }
            else
            {
                Assert.Contains("masquerade", nat);
                Assert.DoesNotContain("weft_masq", tc);
            }
            // Traffic inside the cluster keeps its pod source address.
            var other = lab.Status()["pods"]![1]!;
            Assert.Contains("client=" + pod["ip"], TestEnv.Sh($"printf 'GET / HTTP/1.0\r\n\r\n' | ip netns exec {pod["netns"]} nc -w 2 {other["ip"]} 80"));

            var off = lab.Ctl("--lab", lab.Name, "get", "ippool", "lab-ipv4", "-o", "yaml").Stdout.Replace("natOutgoing: true", "natOutgoing: false");
            Assert.Equal(0, TestEnv.Run(TestEnv.Weftctl, ["--lab", lab.Name, "apply", "-f", "-"], off).ExitCode);
            Assert.True(Eventually(() => !TestEnv.TrySh($"ip netns exec {node} nft list table ip weft-nat").Stdout.Contains("masquerade") &&
                                         !TestEnv.Sh($"ip netns exec {node} tc filter show dev eth0 egress").Contains("weft_masq")));
            Assert.DoesNotContain("client=", Fetch()); // the outside host has no route back to pod addresses
        }
        finally
        {
            server.Kill();
            server.WaitForExit();
        }
    }

    [Fact]
    public void Bpf_masquerade_gives_each_flow_its_own_port_and_keeps_connections_across_an_agent_kill()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces");
        using var lab = new LabRun();
        lab.Up("--nodes", "2", "--pods-per-node", "2", "--policy", "off", "--masquerade", "bpf");
        var pods = lab.Status()["pods"]!.AsArray().Where(p => p!["node"]!.GetValue<string>() == "node-1").Select(p => p!["netns"]!.GetValue<string>()).ToList();
        Assert.Equal(2, pods.Count);
        // With policy off and BPF masquerade, the node has no netfilter hooks at all: nothing to pay per packet.
        Assert.DoesNotContain("table", TestEnv.Sh($"ip netns exec {lab.Netns("node-1")} nft list ruleset"));
        using var udp = UdpPeerEcho.Start(lab.Netns("gw"));

        // Two pods, one source port, one remote endpoint: two node ports. The same flow again keeps its port.
        string Ask(string pod) => TestEnv.TrySh($"echo hi | ip netns exec {pod} nc -u -w 1 -p 5000 203.0.113.1 {udp.Port}").Stdout.Trim();
        var first = Ask(pods[0]);
        var second = Ask(pods[1]);
        Assert.StartsWith("peer=198.51.100.11:", first);
        Assert.StartsWith("peer=198.51.100.11:", second);
        Assert.NotEqual(first, second);
        Assert.Equal(first, Ask(pods[0]));

        // A TCP connection through the masquerade outlives its agent: state is pinned, the programs stay attached.
        using var listener = Weft.Netlink.NetNs.Run($"/var/run/netns/{lab.Netns("gw")}", () =>
        {
            var l = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Parse("203.0.113.1"), 0);
            l.Start();
            return l;
        });
        var port = ((System.Net.IPEndPoint)listener.LocalEndpoint).Port;
        using var client = Weft.Netlink.NetNs.Run($"/var/run/netns/{pods[0]}", () => new System.Net.Sockets.Socket(System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Tcp));
        client.Connect("203.0.113.1", port);
        using var accepted = listener.AcceptSocket();
        Assert.StartsWith("198.51.100.11:", accepted.RemoteEndPoint!.ToString());
        void RoundTrip(string what)
        {
            accepted.ReceiveTimeout = client.ReceiveTimeout = 3000;
            var buf = new byte[64];
            client.Send(System.Text.Encoding.ASCII.GetBytes(what));
            var n = accepted.Receive(buf);
            accepted.Send(buf.AsSpan(0, n));
            Assert.Equal(what, System.Text.Encoding.ASCII.GetString(buf, 0, client.Receive(buf)));
        }
        RoundTrip("before");
        Assert.Equal(0, lab.Ctl("lab", "restart-agent", "--name", lab.Name, "--node", "node-1", "--kill", "--stop").ExitCode);
        RoundTrip("while the agent is down");
        Assert.Equal(0, lab.Ctl("lab", "restart-agent", "--name", lab.Name, "--node", "node-1").ExitCode);
        RoundTrip("after the restart");
        Assert.Equal(first, Ask(pods[0]));
        Assert.Contains("natOutgoing masquerade: bpf", File.ReadAllText($"/var/lib/weft/labs/{lab.Name}/node-1.log"));
    }

    [Fact]
    public void Topology_file_places_labels_and_pins_addresses()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces");
        using var lab = new LabRun();
        lab.Up("--nodes", "2", "--topology", Path.Combine(TestEnv.RepoRoot, "examples", "topology.yaml"));
        var pods = lab.Status()["pods"]!.AsArray();
        Assert.Equal(["shop/frontend", "shop/db", "shop/cache"], pods.Select(p => p!["pod"]!.GetValue<string>()));
        Assert.Equal("node-1", pods[0]!["node"]!.GetValue<string>());
        Assert.Equal("10.244.1.10", pods[1]!["ip"]!.GetValue<string>());
        Assert.Equal("database", pods[1]!["labels"]!["app"]!.GetValue<string>());
        Assert.True(LabRun.AllTrue(lab.Matrix("TCP", 80)));
        var udp = lab.Matrix("UDP", 80)["allowed"]!.AsArray();
        Assert.True(udp[0]![1]!.GetValue<bool>()); // only db serves UDP/80
        Assert.False(udp[0]![2]!.GetValue<bool>());
        var bad = lab.Ctl("lab", "up", "--name", lab.Name + "b", "--nodes", "1", "--topology", "/nonexistent.yaml");
        Assert.Equal(1, bad.ExitCode);
        Assert.DoesNotContain(lab.Name + "b-", TestEnv.Sh("ip netns list"));
    }

    [Fact]
    public void Second_agent_claiming_a_taken_node_name_is_refused_and_configures_nothing()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces");
        using var lab = new LabRun();
        lab.Up("--nodes", "1", "--pods-per-node", "0");
        using var ns = new Netns("dup");
        var store = $"sqlite:///var/lib/weft/labs/{lab.Name}/weft.db";
        var r = TestEnv.Run("ip", ["netns", "exec", ns.Node, TestEnv.Dist + "/weft-agent", "--nodename", "node-1", "--datastore", store,
            "--underlay-interface", "eth0", "--socket", $"/tmp/{lab.Name}-dup.sock", "--metrics-address", "127.0.0.1:19962"], timeout: TimeSpan.FromSeconds(30));
        Assert.Equal(1, r.ExitCode);
        Assert.Contains("already registered", r.Stderr);
        Assert.DoesNotContain("weft-vxlan", TestEnv.Sh($"ip -n {ns.Node} link"));
        Assert.Contains("node-1", lab.Ctl("--lab", lab.Name, "get", "nodes").Stdout);
    }

    [Theory]
    [InlineData("{\"Network\": \"10.50.0.0/16\", \"Backend\": {\"Type\": \"udp\"}}", "Backend.Type")]
    [InlineData("{\"Network\": \"not-a-cidr\"}", "\"Network\"")]
    [InlineData("{\"SubnetLen\": 24}", "\"Network\"")]
    [InlineData("{\"Network\": \"10.50.0.0/16\", \"SubnetLen\": 8}", "SubnetLen")]
    [InlineData("{\"Network\": \"10.50.0.0/16\", \"Colour\": 1}", "unknown key 'Colour'")]
    [InlineData("{\"Network\": ", "not valid JSON")]
    public void Invalid_net_conf_json_stops_the_agent_with_the_field_named_and_nothing_configured(string netConf, string expected)
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces");
        using var ns = new Netns("nc");
        var (dir, uri) = Support.Pools.NewStore();
        try
        {
            File.WriteAllText(Path.Combine(dir, "net-conf.json"), netConf);
            var r = TestEnv.Run("ip", ["netns", "exec", ns.Node, TestEnv.Dist + "/weft-agent", "--nodename", "n1", "--datastore", uri,
                "--net-conf", Path.Combine(dir, "net-conf.json"), "--socket", Path.Combine(dir, "a.sock")], timeout: TimeSpan.FromSeconds(30));
            Assert.Equal(2, r.ExitCode);
            Assert.Contains(expected, r.Stderr);
            Assert.Contains("net-conf.json", r.Stderr);
            Assert.DoesNotContain("weft-vxlan", TestEnv.Sh($"ip -n {ns.Node} link"));
            Assert.Contains("No problems", TestEnv.Ctl(uri, "ipam", "check").Stdout);
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void Flannel_net_conf_json_as_written_creates_the_pool_and_backend()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces");
        using var ns = new Netns("fl");
        var (dir, uri) = Support.Pools.NewStore();
        var agent = (Process?)null;
        try
        {
            File.WriteAllText(Path.Combine(dir, "net-conf.json"), """{"Network": "10.60.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan", "VNI": 7, "Port": 4789}}""");
            agent = Process.Start(new ProcessStartInfo("ip", ["netns", "exec", ns.Node, TestEnv.Dist + "/weft-agent", "--nodename", "n1", "--datastore", uri,
                "--net-conf", Path.Combine(dir, "net-conf.json"), "--socket", Path.Combine(dir, "a.sock")]) { RedirectStandardOutput = true, RedirectStandardError = true })!;
            Assert.True(Eventually(() => TestEnv.TrySh($"ip -d -n {ns.Node} link show weft-vxlan").Stdout.Contains("vxlan id 7")));
            var details = TestEnv.Sh($"ip -d -n {ns.Node} link show weft-vxlan");
            Assert.Contains("dstport 4789", details);
            Assert.Contains("mtu 1450", details);
            var pools = TestEnv.Ctl(uri, "get", "ippool", "-o", "wide").Stdout;
            Assert.Matches(@"net-conf\s+10\.60\.0\.0/16\s+all\(\)\s+24", pools);
        }
        finally
        {
            agent?.Kill();
            agent?.WaitForExit();
            Directory.Delete(dir, true);
        }
    }

    private static bool Eventually(Func<bool> condition, int timeoutMs = 15_000)
    {
        var sw = Stopwatch.StartNew();
        while (sw.ElapsedMilliseconds < timeoutMs)
        {
            if (condition()) return true;
            Thread.Sleep(100);
        }
        return condition();
    }
}
