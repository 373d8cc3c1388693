using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Weft.Tests.Support;

namespace Weft.Tests.Lab;

/// <summary>A 2-node lab (pod-1, pod-3 on node-1; pod-2, pod-4 on node-2) whose agents capture flows.</summary>
public class FlowLabFixture : LabFixture
{
    public FlowLabFixture() : this(null) { }

    /// <param name="dataplane">--dataplane for every agent (null: the default, nftables)</param>
    protected FlowLabFixture(string? dataplane)
    {
        if (TestEnv.IsRoot) Up(dataplane, "--nodes", "2", "--pods-per-node", "2");
    }
}

public sealed class BpfFlowLabFixture() : FlowLabFixture("bpf");

/// <summary>
/// The BPF programs' verdicts, read from their ring buffer, give the same Hubble flows as the nftables dataplane's
/// NFLOG verdicts: the same pairs, drop reasons, directions, nodes and deciding policies.
/// </summary>
public sealed class BpfFlowVerdictTests(BpfFlowLabFixture fixture) : FlowVerdictTests(fixture), IClassFixture<BpfFlowLabFixture>;

/// <summary>Policy verdicts as flows, asserted the same way for every policy dataplane.</summary>
public abstract class FlowVerdictTests(FlowLabFixture fixture)
{
    protected FlowLabFixture Fixture => fixture;
    protected LabRun Lab => fixture.Lab;

    protected const string IsolatePod1 = """
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: isolate-pod-1, namespace: default}
        spec:
          podSelector: {matchLabels: {app: pod-1}}
          policyTypes: [Ingress]
          ingress:
          - from:
            - podSelector: {matchLabels: {app: pod-2}}
        """;

    protected const string DenyPod4To81 = """
        apiVersion: projectcalico.org/v3
        kind: NetworkPolicy
        metadata: {name: no-81-from-pod-4, namespace: default}
        spec:
          selector: app == 'pod-4'
          types: [Egress]
          egress:
          - action: Deny
            protocol: TCP
            destination: {ports: [81]}
          - action: Allow
        """;

    protected void Apply(string yaml)
    {
        TestEnv.Ok(Lab.Documents("apply", yaml));
        TestEnv.Ok(Lab.Ctl("lab", "sync", "--name", Lab.Name));
    }

    protected List<JsonObject> Observe(params string[] args)
    {
        var r = TestEnv.Ok(Lab.Ctl(["--lab", Lab.Name, "observe", "-o", "json", .. args]));
        return r.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => JsonNode.Parse(l)!.AsObject()).ToList();
    }

    protected string PodIp(string pod) => Lab.Status()["pods"]!.AsArray().Single(p => p!["pod"]!.ToString() == pod)!["ip"]!.ToString();

    protected static string Since() => DateTime.UtcNow.AddMilliseconds(-1).ToString("yyyy-MM-ddTHH:mm:ss.fffZ", CultureInfo.InvariantCulture);

    protected static JsonObject Flow(JsonObject line) => line["flow"]!.AsObject();

    protected static string Pod(JsonObject flow, string side) =>
        flow[side]?["pod_name"] is { } name ? $"{flow[side]!["namespace"]}/{name}" : flow["IP"]![side]!.ToString();

    protected (List<string> Pods, bool[][] Allowed) Matrix(int port = 80, string protocol = "TCP")
    {
        var m = JsonNode.Parse(TestEnv.Ok(Lab.Ctl("lab", "matrix", "--name", Lab.Name, "--port", port.ToString(CultureInfo.InvariantCulture), "--protocol", protocol, "--timeout-ms", "400", "-o", "json")).Stdout)!;
        return (m["pods"]!.AsArray().Select(p => p!.ToString()).ToList(), m["allowed"]!.AsArray().Select(r => r!.AsArray().Select(c => c!.GetValue<bool>()).ToArray()).ToArray());
    }

    protected static HashSet<(string, string)> Pairs(List<string> pods, bool[][] allowed, bool want) =>
        [.. from i in Enumerable.Range(0, pods.Count) from j in Enumerable.Range(0, pods.Count) where i != j && allowed[i][j] == want select (pods[i], pods[j])];

    [Fact]
    public void A_deny_policy_shows_exactly_the_dropped_pairs_with_pods_and_policy_and_the_rest_forwarded()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces");
        Assert.True(fixture.Ready, "the lab did not come up");
        Apply(IsolatePod1);
        try
        {
            var since = Since();
            var (pods, allowed) = Matrix();
            var blocked = Pairs(pods, allowed, want: false);
            Assert.Equal([("default/pod-3", "default/pod-1"), ("default/pod-4", "default/pod-1")], blocked.Order());

            var drops = Observe("--since", since, "--verdict", "DROPPED").Select(Flow).ToList();
            Assert.Equal(blocked, drops.Select(f => (Pod(f, "source"), Pod(f, "destination"))).ToHashSet());
            Assert.All(drops, f =>
            {
                Assert.Equal("POLICY_DENIED", f["drop_reason_desc"]!.ToString());
                Assert.Equal("INGRESS", f["traffic_direction"]!.ToString());
                Assert.Equal("node-1", f["node_name"]!.ToString()); // pod-1's node decides its ingress
                var by = f["ingress_denied_by"]!.AsArray().Single()!;
                Assert.Equal(("isolate-pod-1", "default"), (by["name"]!.ToString(), by["namespace"]!.ToString()));
                Assert.Equal(80, f["l4"]!["TCP"]!["destination_port"]!.GetValue<int>());
                Assert.Contains("k8s:app=pod-1", f["destination"]!["labels"]!.AsArray().Select(l => l!.ToString()));
            });

            var forwarded = Observe("--since", since, "--verdict", "FORWARDED", "--all").Select(Flow).ToList();
            var seen = forwarded.Select(f => (Pod(f, "source"), Pod(f, "destination"))).ToHashSet();
            Assert.Superset(Pairs(pods, allowed, want: true), seen);
            // pod-2 → pod-1 is allowed by the policy, on ingress; the egress side has no policy (profile).
            Assert.Contains(forwarded, f => Pod(f, "source") == "default/pod-2" && Pod(f, "destination") == "default/pod-1"
                && f["traffic_direction"]!.ToString() == "INGRESS" && f["ingress_allowed_by"]?[0]?["name"]?.ToString() == "isolate-pod-1");
            // No policy verdict lets a blocked pair in. (A connection end may still show up: a connection of an
            // earlier test, made before the policy, whose conntrack entry expires now.)
            Assert.DoesNotContain(forwarded, f => blocked.Contains((Pod(f, "source"), Pod(f, "destination"))) && f["traffic_direction"]!.ToString() == "INGRESS"
                && f["event"]?.ToString() != "conntrack-destroy");
        }
        finally
        {
            TestEnv.Ok(Lab.Ctl("--lab", Lab.Name, "delete", "knp", "default/isolate-pod-1"));
        }
    }

    [Fact]
    public void A_calico_deny_rule_is_reported_as_policy_deny_on_egress()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces");
        Assert.True(fixture.Ready, "the lab did not come up");
        Apply(DenyPod4To81);
        try
        {
            var since = Since();
            var (pods, allowed) = Matrix(port: 81);
            Assert.Equal(pods.Where(p => p != "default/pod-4").Select(p => ("default/pod-4", p)).Order(), Pairs(pods, allowed, want: false).Order());
            var drops = Observe("--since", since, "--verdict", "DROPPED", "--from-pod", "default/pod-4").Select(Flow).ToList();
            Assert.NotEmpty(drops);
            Assert.All(drops, f =>
            {
                Assert.Equal(("POLICY_DENY", 181, "EGRESS", "node-2"), (f["drop_reason_desc"]!.ToString(), f["drop_reason"]!.GetValue<int>(), f["traffic_direction"]!.ToString(), f["node_name"]!.ToString()));
                Assert.Equal("no-81-from-pod-4", f["egress_denied_by"]![0]!["name"]!.ToString());
            });
        }
        finally
        {
            TestEnv.Ok(Lab.Ctl("--lab", Lab.Name, "delete", "networkpolicy", "default/no-81-from-pod-4"));
        }
    }


    [Fact]
    public void A_connection_to_an_unused_address_of_a_nodes_block_is_a_no_route_drop_and_stays_in_the_node()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces");
        Assert.True(Fixture.Ready, "the lab did not come up");
        // pod-1's node owns pod-1's block; 30 addresses further up nobody lives (the lab has two pods per node).
        var ghost = new System.Net.IPAddress(BitConverter.GetBytes(System.Net.IPAddress.HostToNetworkOrder(
            System.Net.IPAddress.NetworkToHostOrder(BitConverter.ToInt32(System.Net.IPAddress.Parse(PodIp("default/pod-1")).GetAddressBytes())) + 30))).ToString();
        var blackholes = TestEnv.Ok(TestEnv.Run("ip", ["-n", Lab.Netns("node-1"), "route", "show", "type", "blackhole"])).Stdout;
        Assert.Contains("proto 88", blackholes);
        var since = Since();
        TestEnv.Ok(Lab.Ctl("lab", "exec", "--name", Lab.Name, "default/pod-2", "--", "sh", "-c", $"echo | nc -w1 {ghost} 80 >/dev/null; true"));
        TestEnv.Ok(Lab.Ctl("lab", "exec", "--name", Lab.Name, "default/pod-3", "--", "sh", "-c", $"echo | nc -w1 {ghost} 80 >/dev/null; true"));
        var drops = Observe("--since", since, "--verdict", "DROPPED", "--to-ip", ghost).Select(Flow).ToList();
        // From pod-2 (node-2) it arrives over the tunnel: ingress at node-1; from pod-3 (node-1) it never leaves: egress.
        Assert.Contains(drops, f => Pod(f, "source") == "default/pod-2" && f["traffic_direction"]!.ToString() == "INGRESS" && f["node_name"]!.ToString() == "node-1");
        Assert.Contains(drops, f => Pod(f, "source") == "default/pod-3" && f["traffic_direction"]!.ToString() == "EGRESS" && f["node_name"]!.ToString() == "node-1");
        Assert.All(drops, f => Assert.Equal("NO_ROUTE", f["drop_reason_desc"]!.ToString()));

        // The node's own addresses have no outgoing interface either, but they are routed (locally): no drop.
        var node1 = Lab.Status()["nodes"]!.AsArray().Single(n => n!["name"]!.ToString() == "node-1")!["underlayIP"]!.ToString();
        since = Since();
        TestEnv.Ok(Lab.Ctl("lab", "exec", "--name", Lab.Name, "default/pod-3", "--", "sh", "-c", $"echo | nc -w1 {node1} 9962 >/dev/null; true"));
        TestEnv.Ok(Lab.Ctl("lab", "exec", "--name", Lab.Name, "default/pod-2", "--", "sh", "-c", $"echo | nc -w1 {node1} 9962 >/dev/null; true"));
        Assert.Empty(Observe("--since", since, "--verdict", "DROPPED", "--to-ip", node1));
    }
}

/// <summary>`weftctl observe` and `weftctl status` against real agents: what the matrix probes is what the flows say.</summary>
public sealed class FlowLabTests(FlowLabFixture fixture) : FlowVerdictTests(fixture), IClassFixture<FlowLabFixture>
{
    [Fact]
    public void Pod_flags_take_hubbles_namespace_slash_name_prefix()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces");
        Assert.True(Fixture.Ready, "the lab did not come up");
        // A Deployment's pod name, as in the chapter's `hubble observe --pod deathstar`.
        const string deathstar = "default/deathstar-6fb5694d48-5hmds";
        TestEnv.Ok(Lab.Ctl("lab", "add-pod", "--name", Lab.Name, deathstar, "--node", "node-2", "--label", "app=deathstar", "--port", "80/TCP"));
        try
        {
            var since = Since();
            var ip = PodIp(deathstar);
            TestEnv.Ok(Lab.Ctl("lab", "exec", "--name", Lab.Name, "default/pod-1", "--", "curl", "-s", "-m", "2", $"http://{ip}/"));
            bool ToDeathstar(JsonObject f) => Pod(f, "destination") == deathstar || Pod(f, "source") == deathstar;
            foreach (var flag in new[] { "deathstar", "default/deathstar", "deathstar-6fb5694d48", deathstar })
            {
                var got = Observe("--since", since, "--pod", flag).Select(Flow).ToList();
                Assert.True(got.Count > 0, $"--pod {flag} found no flow");
                Assert.All(got, f => Assert.True(ToDeathstar(f), $"--pod {flag}: {f.ToJsonString()}"));
            }
            Assert.Contains(Observe("--since", since, "--to-pod", "deathstar").Select(Flow), f => Pod(f, "destination") == deathstar);
            Assert.Contains(Observe("--since", since, "--from-pod", "pod-1", "--to-pod", "death").Select(Flow), f => Pod(f, "destination") == deathstar);
            Assert.Empty(Observe("--since", since, "--pod", "deathstar-x"));
            Assert.Empty(Observe("--since", since, "--pod", "kube-system/deathstar"));
            Assert.Empty(Observe("--since", since, "--from-pod", "deathstar", "--to-pod", "pod-1"));
        }
        finally { Lab.Ctl("lab", "delete-pod", "--name", Lab.Name, deathstar); }
    }

    [Fact]
    public void Every_filter_narrows_to_what_it_names()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces");
        Assert.True(Fixture.Ready, "the lab did not come up");
        var since = Since();
        Matrix();
        Matrix(port: 80, protocol: "UDP");
        var status = Lab.Status();
        var pod2Ip = status["pods"]!.AsArray().Single(p => p!["pod"]!.ToString() == "default/pod-2")!["ip"]!.ToString();
        var all = Observe("--since", since).Select(Flow).ToList();
        Assert.NotEmpty(all);

        void Check(string[] args, Func<JsonObject, bool> holds)
        {
            var got = Observe(["--since", since, .. args]).Select(Flow).ToList();
            Assert.True(got.Count > 0, "no flows for " + string.Join(' ', args));
            Assert.All(got, f => Assert.True(holds(f), string.Join(' ', args) + ": " + f.ToJsonString()));
        }
        Check(["--from-pod", "default/pod-1"], f => Pod(f, "source") == "default/pod-1");
        Check(["--to-pod", "pod-2"], f => Pod(f, "destination") == "default/pod-2");
        Check(["--pod", "default/pod-3"], f => Pod(f, "source") == "default/pod-3" || Pod(f, "destination") == "default/pod-3");
        Check(["--namespace", "default"], f => f["source"]!["namespace"]?.ToString() == "default" || f["destination"]!["namespace"]?.ToString() == "default");
        Check(["--label", "app=pod-4"], f => Pod(f, "source") == "default/pod-4" || Pod(f, "destination") == "default/pod-4");
        Check(["--to-label", "app=pod-4"], f => Pod(f, "destination") == "default/pod-4");
        Check(["--protocol", "udp"], f => f["l4"]!["UDP"] is not null);
        Check(["--protocol", "tcp", "--port", "80"], f => f["l4"]!["TCP"]!["destination_port"]!.GetValue<int>() == 80 || f["l4"]!["TCP"]!["source_port"]!.GetValue<int>() == 80);
        Check(["--traffic-direction", "egress"], f => f["traffic_direction"]!.ToString() == "EGRESS");
        Check(["--node", "node-2"], f => f["node_name"]!.ToString() == "node-2");
        Check(["--to-ip", pod2Ip], f => f["IP"]!["destination"]!.ToString() == pod2Ip);
        Check(["--ip", pod2Ip + "/32"], f => f["IP"]!["destination"]!.ToString() == pod2Ip || f["IP"]!["source"]!.ToString() == pod2Ip);
        Check(["--verdict", "FORWARDED"], f => f["verdict"]!.ToString() == "FORWARDED");
        Assert.Empty(Observe("--since", since, "--from-pod", "default/no-such-pod"));
        Assert.Empty(Observe("--since", DateTime.UtcNow.AddMinutes(5).ToString("o", CultureInfo.InvariantCulture)));

        // --last N: the N most recent across both nodes, oldest first.
        DateTime Time(JsonObject f) => DateTime.Parse(f["time"]!.ToString(), CultureInfo.InvariantCulture, DateTimeStyles.AdjustToUniversal);
        var last = Observe("--since", since, "--last", "3").Select(Flow).ToList();
        Assert.Equal(3, last.Count);
        var times = all.Select(Time).ToList();
        Assert.Equal(times.Order(), times); // merged in time order
        // Connection ends keep arriving after the matrix (conntrack reports them late): compare with a listing taken
        // after --last, up to the newest flow --last returned.
        var upToLast = Observe("--since", since).Select(Flow).Where(f => Time(f) <= Time(last[^1])).ToList();
        Assert.Equal(upToLast.TakeLast(3).Select(f => f.ToJsonString()), last.Select(f => f.ToJsonString()));

        // Compact and table outputs name the pods too; bad flags are an error, not a crash.
        var compact = TestEnv.Ok(Lab.Ctl("--lab", Lab.Name, "observe", "--since", since, "--from-pod", "default/pod-1", "--last", "1")).Stdout;
        // The newest flow from pod-1 may be a policy verdict or a late connection end: either names both pods.
        Assert.Matches(@"\[node-\d\]: default/pod-1:\d+ -> default/pod-\d:80 ", compact);
        Assert.Contains("SOURCE", TestEnv.Ok(Lab.Ctl("--lab", Lab.Name, "observe", "--since", since, "-o", "table")).Stdout);
        var bad = Lab.Ctl("--lab", Lab.Name, "observe", "--verdict", "MAYBE");
        Assert.Equal(1, bad.ExitCode);
        Assert.Contains("--verdict", bad.Stderr);
    }

    [Fact]
    public void Follow_streams_new_flows_as_they_happen()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces");
        Assert.True(Fixture.Ready, "the lab did not come up");
        var psi = new ProcessStartInfo(TestEnv.Weftctl, ["--lab", Lab.Name, "observe", "-f", "-o", "json", "--to-pod", "default/pod-2"])
        { RedirectStandardOutput = true, RedirectStandardError = true };
        using var p = Process.Start(psi)!;
        try
        {
            var lines = new System.Collections.Concurrent.BlockingCollection<string>();
            _ = Task.Run(() => { while (p.StandardOutput.ReadLine() is { } l) lines.Add(l); lines.CompleteAdding(); });
            Thread.Sleep(1500); // connected to both agents
            TestEnv.Ok(Lab.Ctl("lab", "exec", "--name", Lab.Name, "default/pod-3", "--", "sh", "-c", $"echo | nc -w1 {PodIp("default/pod-2")} 80 >/dev/null || true"));
            Assert.True(lines.TryTake(out var line, TimeSpan.FromSeconds(10)), "no flow within 10 s; stderr: " + (p.HasExited ? p.StandardError.ReadToEnd() : ""));
            var f = Flow(JsonNode.Parse(line!)!.AsObject());
            Assert.Equal(("default/pod-3", "default/pod-2"), (Pod(f, "source"), Pod(f, "destination")));
            Assert.False(p.HasExited);
        }
        finally
        {
            if (!p.HasExited) p.Kill();
            p.WaitForExit(5000);
        }
    }

    [Fact]
    public void A_connection_end_is_a_flow_with_its_counters()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces");
        Assert.True(Fixture.Ready, "the lab did not come up");
        var since = Since();
        var ip = PodIp("default/pod-2");
        TestEnv.Ok(Lab.Ctl("lab", "exec", "--name", Lab.Name, "default/pod-1", "--", "sh", "-c", $"echo hello | nc -u -w1 -p 40123 {ip} 80 >/dev/null || true"));
        // UDP entries live 30 s or more; end them now, as a timeout would.
        TestEnv.Run("ip", ["netns", "exec", Lab.Netns("node-1"), "conntrack", "-D", "-p", "udp", "--sport", "40123"]);
        List<JsonObject> ends = [];
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (ends.Count == 0 && DateTime.UtcNow < deadline)
        {
            ends = Observe("--since", since, "--from-pod", "default/pod-1", "--from-port", "40123", "--all").Select(Flow).Where(f => f["event"]?.ToString() == "conntrack-destroy").ToList();
            if (ends.Count == 0) Thread.Sleep(200);
        }
        var end = Assert.Single(ends);
        Assert.Equal(("default/pod-2", "EGRESS", "node-1", "FORWARDED"), (Pod(end, "destination"), end["traffic_direction"]!.ToString(), end["node_name"]!.ToString(), end["verdict"]!.ToString()));
        Assert.True(end["packets"]!.GetValue<long>() >= 2, end.ToJsonString()); // the datagram and its echo
        Assert.Contains("connection closed", end["Summary"]!.ToString());
    }

    [Fact]
    public void A_remote_reader_gets_a_nodes_flows_over_tcp_4244()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces");
        Assert.True(Fixture.Ready, "the lab did not come up");
        var since = Since();
        Matrix();
        // From node-2's namespace, as a relay or an operator's laptop would: node-1's underlay address, Hubble's port.
        var node1Ip = Lab.Status()["nodes"]!.AsArray().Single(n => n!["name"]!.ToString() == "node-1")!["underlayIP"]!.ToString();
        var r = TestEnv.Ok(TestEnv.Run("ip", ["netns", "exec", Lab.Netns("node-2"), TestEnv.Weftctl, "observe", "--server", node1Ip, "--since", since, "-o", "json"]));
        var flows = r.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => Flow(JsonNode.Parse(l)!.AsObject())).ToList();
        Assert.NotEmpty(flows);
        Assert.All(flows, f => Assert.Equal("node-1", f["node_name"]!.ToString()));
    }

    [Fact]
    public void An_unreachable_agent_is_a_warning_and_the_other_nodes_still_answer()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces");
        Assert.True(Fixture.Ready, "the lab did not come up");
        var since = Since();
        Matrix();
        TestEnv.Ok(Lab.Ctl("lab", "restart-agent", "--name", Lab.Name, "--node", "node-2", "--stop"));
        try
        {
            var r = TestEnv.Ok(Lab.Ctl("--lab", Lab.Name, "observe", "--since", since, "-o", "json"));
            Assert.Contains("node node-2", r.Stderr);
            var flows = r.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => Flow(JsonNode.Parse(l)!.AsObject())).ToList();
            Assert.NotEmpty(flows);
            Assert.All(flows, f => Assert.Equal("node-1", f["node_name"]!.ToString()));
            var status = Lab.Ctl("--lab", Lab.Name, "status");
            Assert.Equal(1, status.ExitCode);
            Assert.Contains("1/2 agents reachable", status.Stdout);
        }
        finally
        {
            TestEnv.Ok(Lab.Ctl("lab", "restart-agent", "--name", Lab.Name, "--node", "node-2"));
        }
    }

    [Fact]
    public async Task The_agent_refuses_a_malformed_filter_and_keeps_serving()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces");
        Assert.True(Fixture.Ready, "the lab did not come up");
        using var state = System.Text.Json.JsonDocument.Parse(File.ReadAllText($"/var/lib/weft/labs/{Lab.Name}/lab.json"));
        var path = state.RootElement.GetProperty("nodes").EnumerateArray().Single(n => n.GetProperty("name").GetString() == "node-1").GetProperty("socket").GetString()!;
        using var server = Weft.Ctl.Commands.FlowServer.ForSocket("node-1", path);
        var client = new Weft.Flows.Api.Observer.ObserverClient(server.Channel);
        foreach (var bad in new Action<Weft.Flows.Api.FlowFilter>[] { f => f.SourceIp.Add("10.0.0.300"), f => f.Verdict.Add("MAYBE"), f => f.SourceLabel.Add("a (b)"), f => f.Protocol.Add("gre") })
        {
            var request = new Weft.Flows.Api.GetFlowsRequest();
            var filter = new Weft.Flows.Api.FlowFilter();
            bad(filter);
            request.Whitelist.Add(filter);
            using var call = client.GetFlows(request);
            var e = await Assert.ThrowsAsync<Grpc.Core.RpcException>(() => call.ResponseStream.MoveNext(CancellationToken.None));
            Assert.Equal(Grpc.Core.StatusCode.InvalidArgument, e.StatusCode);
        }
        var status = await client.ServerStatusAsync(new Weft.Flows.Api.ServerStatusRequest());
        Assert.Equal(("node-1", 4095UL), (status.NodeName, status.MaxFlows));
    }

    [Fact]
    public void An_agent_killed_and_restarted_captures_flows_again()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces");
        Assert.True(Fixture.Ready, "the lab did not come up");
        TestEnv.Ok(Lab.Ctl("lab", "restart-agent", "--name", Lab.Name, "--node", "node-1", "--kill"));
        var since = Since();
        Matrix();
        var flows = Observe("--since", since, "--node", "node-1", "--all").Select(Flow).ToList();
        // Every pair touching node-1's pods (pod-1, pod-3) shows up again: its NFLOG group was free to bind at once.
        Assert.Contains(flows, f => Pod(f, "destination") == "default/pod-1" && f["traffic_direction"]!.ToString() == "INGRESS");
        Assert.Contains(flows, f => Pod(f, "source") == "default/pod-3" && f["traffic_direction"]!.ToString() == "EGRESS");
        Assert.All(flows, f => Assert.Equal("FORWARDED", f["verdict"]!.ToString()));
    }

    [Fact]
    public async Task A_follower_that_falls_a_ring_behind_is_told_how_many_flows_it_lost()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces");
        Assert.True(Fixture.Ready, "the lab did not come up");
        Apply(IsolatePod1);
        try
        {
            using var state = System.Text.Json.JsonDocument.Parse(File.ReadAllText($"/var/lib/weft/labs/{Lab.Name}/lab.json"));
            var path = state.RootElement.GetProperty("nodes").EnumerateArray().Single(n => n.GetProperty("name").GetString() == "node-1").GetProperty("socket").GetString()!;
            using var server = Weft.Ctl.Commands.FlowServer.ForSocket("node-1", path);
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
            using var call = new Weft.Flows.Api.Observer.ObserverClient(server.Channel).GetFlows(new Weft.Flows.Api.GetFlowsRequest { Follow = true, SinceUnixNano = (DateTime.UtcNow - DateTime.UnixEpoch).Ticks * 100 }, cancellationToken: cts.Token);
            // Not reading while 60k flows pass through a 4095-flow ring: the stream's buffers fill, the ring laps us.
            Flood("default/pod-3", PodIp("default/pod-1"), 30_000);
            ulong lost = 0;
            while (lost == 0 && await call.ResponseStream.MoveNext(cts.Token))
                if (call.ResponseStream.Current.Event == Weft.Flows.FlowText.LostEvents) lost = call.ResponseStream.Current.Packets;
            Assert.True(lost > 10_000, $"lost {lost}");
        }
        finally
        {
            TestEnv.Ok(Lab.Ctl("--lab", Lab.Name, "delete", "knp", "default/isolate-pod-1"));
        }
    }

    private static long RssKiB(int pid) =>
        long.Parse(File.ReadAllLines($"/proc/{pid}/status").Single(l => l.StartsWith("VmRSS:", StringComparison.Ordinal)).Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture);

    private void Flood(string fromPod, string toIp, int packets) =>
        TestEnv.Ok(Lab.Ctl("lab", "exec", "--name", Lab.Name, fromPod, "--", "python3", "-c",
            $"import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nfor i in range({packets}):\n  try: s.sendto(b'x'*16,('{toIp}',9))\n  except OSError: pass"));

    private static double Metric(string text, string name, string labels) =>
        text.Split('\n').Where(l => l.StartsWith(name + labels, StringComparison.Ordinal)).Select(l => double.Parse(l.Split(' ')[^1], CultureInfo.InvariantCulture)).Sum();

    [Fact]
    public void A_flood_of_drops_keeps_the_ring_bounded_moves_the_metrics_and_not_the_memory()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces");
        Assert.True(Fixture.Ready, "the lab did not come up");
        Apply(IsolatePod1);
        try
        {
            var node1 = Lab.Status()["nodes"]!.AsArray().Single(n => n!["name"]!.ToString() == "node-1")!;
            var pid = node1["agentPid"]!.GetValue<int>();
            string Metrics() => TestEnv.Ok(TestEnv.Run("ip", ["netns", "exec", node1["netns"]!.ToString(), "curl", "-s", "http://127.0.0.1:9962/metrics"])).Stdout;
            const string udpDrops = "{verdict=\"DROPPED\",traffic_direction=\"INGRESS\",protocol=\"UDP\"}";
            string Memory() => TestEnv.Ok(TestEnv.Run("ip", ["netns", "exec", node1["netns"]!.ToString(), "curl", "-s", "http://127.0.0.1:9962/debug/memory"])).Stdout;
            long Stat(string name) => long.Parse(Regex.Match(Memory(), name + @" (\d+)").Groups[1].Value, CultureInfo.InvariantCulture);
            // What the agent keeps after a burst, not the burst's garbage: RSS once allocations have settled and the
            // agent's trimmer has run its full collection after them (it does within one 5 s period).
            long SettledRssKiB()
            {
                var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
                var allocated = Stat("total allocated");
                while (DateTime.UtcNow < deadline)
                {
                    Thread.Sleep(1000);
                    var now = Stat("total allocated");
                    if (now - allocated < 256) break;
                    allocated = now;
                }
                var collections = Stat("gen2");
                while (Stat("gen2") <= collections && DateTime.UtcNow < deadline) Thread.Sleep(250);
                return RssKiB(pid);
            }
            var before = Metric(Metrics(), "weft_flows_processed_total", udpDrops);
            var rssBefore = RssKiB(pid);

            Flood("default/pod-3", PodIp("default/pod-1"), 30_000);
            var rssAfterFirst = SettledRssKiB();
            Flood("default/pod-3", PodIp("default/pod-1"), 30_000);
            var rssAfterSecond = SettledRssKiB();

            var metrics = Metrics();
            var lost = Metric(metrics, "weft_flows_lost_total", "");
            var dropped = Metric(metrics, "weft_flows_processed_total", udpDrops) - before;
            Console.WriteLine($"flood: {dropped} UDP drops counted, {lost} batches lost; RSS {rssBefore} → {rssAfterFirst} → {rssAfterSecond} KiB");
            Assert.True(dropped >= 60_000 || lost > 0 && dropped >= 30_000, $"UDP drops counted: {dropped}, lost batches: {lost}");
            Assert.True(Metric(metrics, "weft_drops_total", "{reason=\"POLICY_DENIED\"}") >= dropped);
            Assert.Equal(2, Metric(metrics, "weft_endpoints", ""), 0); // pod-1 and pod-3
            Assert.True(Metric(metrics, "weft_ipam_addresses_in_use", "") >= 2);
            Assert.True(Metric(metrics, "weft_ipam_addresses", "") >= 64);
            Assert.True(Metric(metrics, "weft_policy_apply_duration_seconds_count", "") >= 1);

            var status = JsonNode.Parse(TestEnv.Ok(Lab.Ctl("--lab", Lab.Name, "status", "-o", "json")).Stdout)!;
            var n1 = status["nodes"]!.AsArray().Single(n => n!["name"]!.ToString() == "node-1")!;
            Assert.Equal(4095, n1["flows"]!.GetValue<int>());
            Assert.Equal(4095, n1["maxFlows"]!.GetValue<int>());
            Assert.True(n1["seenFlows"]!.GetValue<long>() > 60_000);
            // 4095 flows are a few MB; 120k flows through the agent must not add more than that, twice.
            Assert.True(rssAfterFirst - rssBefore < 24 * 1024, $"RSS {rssBefore} → {rssAfterFirst} KiB after 30k drops");
            Assert.True(rssAfterSecond - rssAfterFirst < 8 * 1024, $"RSS {rssAfterFirst} → {rssAfterSecond} KiB after 30k more: growing");

            var text = TestEnv.Ok(Lab.Ctl("--lab", Lab.Name, "status")).Stdout;
            Assert.Contains("2/2 agents reachable", text);
            Assert.Contains("Endpoints:      4", text);
        }
        finally
        {
            TestEnv.Ok(Lab.Ctl("--lab", Lab.Name, "delete", "knp", "default/isolate-pod-1"));
        }
    }
}
