using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Text;
using System.Text.Json.Nodes;
using Weft.Datastore;
using Weft.Kubernetes;
using Weft.Lab;
using Weft.Model;

namespace Weft.PolicyBench;

/// <summary>
/// Issue 12's scale goal on the kubernetes datastore: a cluster of N nodes, P pods and K NetworkPolicies held by the
/// lab's API server (LabApiServer, the real wire protocol), and one real weft-agent (dist/weft-agent) as node-0000 in
/// a throwaway namespace. Everything an agent of a real cluster lists is there: v1 Nodes, Namespaces, Pods (labels,
/// IPs, nodeName), NetworkPolicies, and Weft's records (node registrations, a block per node, an endpoint per pod).
/// Measured: time from the agent's start to its first full sync (policy and routes programmed at the API's current
/// revision), its RSS then, and its CPU per watch event for a burst of pod relabels.
/// Usage (root, after ./build.sh): dotnet run -c Release --project bench/Weft.PolicyBench -- kube-scale [nodes=1000] [pods=50000] [policies=10000]
/// </summary>
public static class KubeScale
{
    private const int Namespaces = 100;
    private const int Apps = 500;

    public static async Task<int> RunAsync(string dist, int nodes, int pods, int policies)
    {
        var prefix = $"wks{Environment.ProcessId % 100000}";
        var netns = prefix + "-node";
        var dir = Directory.CreateTempSubdirectory("weft-kube-scale-").FullName;
        Process? agent = null;
        Sh($"ip netns add {netns}");
        try
        {
            // node-0000's underlay: a dummy eth0 in the 10.1.0.0/16 every node's address is in.
            Sh($"ip -n {netns} link set lo up");
            // node-0000's underlay (this kernel has no dummy links: a veth pair): eth0 in the 10.1.0.0/16 of every node.
            Sh($"ip -n {netns} link add eth0 type veth peer name eth0-peer");
            Sh($"ip -n {netns} link set eth0-peer up");
            Sh($"ip -n {netns} addr add 10.1.0.1/16 dev eth0");
            Sh($"ip -n {netns} link set eth0 up");
            Sh($"ip -n {netns} route add default dev eth0");

            await using var api = new LabApiServer(netns).WithWeftCrds();
            var kubeconfig = api.WriteKubeconfig(Path.Combine(dir, "kubeconfig"));
            using var http = api.Client();
            using var ds = new KubeDatastore(http, api.BaseAddress);
            var perNode = (pods + nodes - 1) / nodes;
            var blockSize = 32 - (int)Math.Ceiling(Math.Log2(perNode + 2));
            Console.WriteLine($"# weft kube-scale {DateTime.UtcNow:yyyy-MM-ddTHH:mm:ssZ}: {nodes} nodes, {pods} pods ({perNode} per node, /{blockSize} blocks), {policies} NetworkPolicies, {Namespaces} namespaces");

            var seed = Stopwatch.StartNew();
            var writes = new List<(string Key, byte[] Value)>
            {
                (Keys.Pool("bench"), Codec.Encode(new IPPool { Name = "bench", Cidr = "10.128.0.0/9", BlockSize = blockSize, VxlanMode = "Always", NatOutgoing = true }, ModelJson.Default.IPPool)),
            };
            for (var n = 0; n < Namespaces; n++)
                writes.Add((Keys.K8sNamespace($"ns-{n}"), Json(new JsonObject { ["metadata"] = new JsonObject { ["name"] = $"ns-{n}", ["labels"] = new JsonObject { ["team"] = $"team-{n % 10}" } } })));
            var blocks = new Cidr[nodes];
            for (var i = 0; i < nodes; i++)
            {
                var name = NodeName(i);
                var block = blocks[i] = Cidr.Parse("10.128.0.0/9").Subnet(blockSize, (UInt128)i);
                var underlay = $"10.1.{(i + 1) / 250}.{(i + 1) % 250 + 1}";
                writes.Add((Keys.K8sNode(name), Json(new JsonObject
                {
                    ["metadata"] = new JsonObject { ["name"] = name, ["labels"] = new JsonObject { ["kubernetes.io/hostname"] = name } },
                    ["status"] = new JsonObject { ["addresses"] = new JsonArray(new JsonObject { ["type"] = "InternalIP", ["address"] = underlay }) },
                })));
                if (i == 0) continue; // node-0000 is the agent under test: it registers itself
                writes.Add((Keys.Node(name), Codec.Encode(new NodeRecord
                {
                    Name = name, UnderlayAddress = underlay + "/16", Backend = "vxlan", Mtu = 1450, AgentId = $"bench{i}", Heartbeat = DateTime.UtcNow.ToString("O"),
                    VtepMac = $"0e:00:00:00:{i >> 8:x2}:{i & 0xff:x2}", VtepAddress = block.AddressAt(1).ToString(),
                }, ModelJson.Default.NodeRecord)));
            }
            // Pods: spread over nodes and namespaces; each has its address in its node's block and an endpoint record.
            var allocations = new List<BlockAllocation>[nodes];
            for (var i = 0; i < nodes; i++) allocations[i] = [new BlockAllocation { Ordinal = 1, Handle = "weft-tunnel." + NodeName(i) }];
            var localInterfaces = new List<string>();
            for (var p = 0; p < pods; p++)
            {
                var node = p % nodes;
                var ns = $"ns-{p % Namespaces}";
                var name = $"pod-{p}";
                var ordinal = 2 + p / nodes;
                var ip = blocks[node].AddressAt((UInt128)ordinal).ToString();
                var handle = $"weft.bench{p}.eth0";
                var hostIf = $"wb{p:x8}";
                if (node == 0) localInterfaces.Add(hostIf);
                allocations[node].Add(new BlockAllocation { Ordinal = ordinal, Handle = handle });
                writes.Add((Keys.K8sPod(ns, name), Json(PodDocument(ns, name, NodeName(node), ip, $"app-{p % Apps}"))));
                writes.Add((Keys.Endpoint(NodeName(node), handle), Codec.Encode(new WorkloadEndpoint
                {
                    Node = NodeName(node), Network = "weft", ContainerId = $"bench{p}", IfName = "eth0", Namespace = ns, Pod = name, HostInterface = hostIf,
                    Addresses = [ip + "/32"], Labels = { ["app"] = $"app-{p % Apps}" },
                }, ModelJson.Default.WorkloadEndpoint)));
            }
            for (var i = 1; i < nodes; i++)
            {
                writes.Add((Keys.Block(blocks[i]), Codec.Encode(new AllocationBlock { Cidr = blocks[i].ToString(), Affinity = NodeName(i), Pool = "bench", Allocations = allocations[i] })));
                writes.Add((Keys.Affinity(NodeName(i), blocks[i]), "{}"u8.ToArray()));
            }
            for (var k = 0; k < policies; k++)
                writes.Add((Keys.Policy($"knp/ns-{k % Namespaces}/np-{k}"), Json(PolicyDocument($"ns-{k % Namespaces}", $"np-{k}", k))));
            await Parallel.ForEachAsync(writes, new ParallelOptions { MaxDegreeOfParallelism = 8 }, async (w, ct) =>
            {
                if (!(await ds.PutAsync(w.Key, w.Value, 0, ct)).Succeeded) throw new InvalidOperationException("seed write refused: " + w.Key);
            });
            // node-0000's pods have host interfaces (veth pairs), so their routes can be programmed.
            File.WriteAllLines(Path.Combine(dir, "links"), localInterfaces.SelectMany(l => new[] { $"link add {l} type veth peer name p{l[1..]}", $"link set {l} up" }));
            Sh($"ip -n {netns} -batch {Path.Combine(dir, "links")}");
            Console.WriteLine($"seeded {writes.Count} objects in {seed.Elapsed.TotalSeconds:0.0} s; API server at resourceVersion {api.Version}");

            var socket = Path.Combine(dir, "agent.sock");
            var started = Stopwatch.StartNew();
            agent = Process.Start(new ProcessStartInfo("ip", ["netns", "exec", netns, Path.Combine(dist, "weft-agent"), "--nodename", NodeName(0),
                "--datastore", "kubernetes://" + kubeconfig, "--underlay-interface", "eth0", "--socket", socket, "--metrics-address", "127.0.0.1:19962",
                "--masquerade", "nftables", "--bpf-pin-dir", Path.Combine(dir, "bpf"), "--flow-address", ""])
            { RedirectStandardOutput = true, RedirectStandardError = true })!;
            var log = new StringBuilder();
            agent.OutputDataReceived += (_, e) => { lock (log) log.AppendLine(e.Data); };
            agent.ErrorDataReceived += (_, e) => { lock (log) log.AppendLine(e.Data); };
            agent.BeginOutputReadLine();
            agent.BeginErrorReadLine();
            var agentPid = AgentPid(agent.Id);
            using var client = Weft.Client.AgentEndpoint.UnixClient(socket);
            var cpuBefore = CpuMs(agentPid);
            await WaitEnforcedAsync(client, api.Version, TimeSpan.FromMinutes(5), agent, log);
            var firstSync = started.Elapsed;
            var rss = Status(agentPid, "VmRSS");
            var hwm = Status(agentPid, "VmHWM");
            var syncCpu = CpuMs(agentPid) - cpuBefore;
            var status = JsonNode.Parse(await client.GetStringAsync("http://agent/status"))!;
            // What it keeps once the start-up burst is collected (the agent's trimmer runs after 5 s of quiet).
            await Task.Delay(TimeSpan.FromSeconds(12));
            var settled = Status(agentPid, "VmRSS");
            var memory = Capture($"ip netns exec {netns} curl -s http://127.0.0.1:19962/debug/memory").Trim();

            // A burst of relabels: every one changes which policies select the pod, somewhere in the cluster.
            const int relabels = 1000;
            var cpu0 = CpuMs(agentPid);
            var burst = Stopwatch.StartNew();
            for (var r = 0; r < relabels; r++)
            {
                var p = (r * 7919) % pods;
                var key = Keys.K8sPod($"ns-{p % Namespaces}", $"pod-{p}");
                var kv = (await ds.GetAsync(key))!;
                var doc = JsonNode.Parse(kv.Value)!.AsObject();
                doc["metadata"]!["labels"]!["app"] = $"app-{(p + r + 1) % Apps}";
                await ds.PutAsync(key, Json(doc), kv.ModRevision);
            }
            await WaitEnforcedAsync(client, api.Version, TimeSpan.FromMinutes(5), agent, log);
            var burstTime = burst.Elapsed;
            var perEvent = (CpuMs(agentPid) - cpu0) / relabels;

            Console.WriteLine();
            Console.WriteLine("| cluster | first sync (start → policy and routes at the API's revision) | agent CPU for it | RSS after sync | RSS settled (12 s later) | peak RSS | CPU per watch event (1000 pod relabels) | relabel burst → enforced |");
            Console.WriteLine("|---|---|---|---|---|---|---|---|");
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"| {nodes} nodes, {pods} pods, {policies} policies | {firstSync.TotalSeconds:0.00} s | {syncCpu / 1000.0:0.00} s | {rss / 1024.0:0.0} MiB | {settled / 1024.0:0.0} MiB | {hwm / 1024.0:0.0} MiB | {perEvent:0.00} ms | {burstTime.TotalSeconds:0.00} s |"));
            Console.WriteLine();
            Console.WriteLine($"agent: {status["policy"]?["endpoints"]} local endpoints, {status["routes"]} routes, {status["peers"]?.AsArray().Count} peers; settled: {memory}");
            return 0;
        }
        finally
        {
            if (agent is { HasExited: false })
            {
                Sh($"kill -TERM {AgentPid(agent.Id)}");
                if (!agent.WaitForExit(10_000)) agent.Kill(entireProcessTree: true);
            }
            Sh($"ip netns del {netns}");
            Directory.Delete(dir, true);
        }
    }

    private static string NodeName(int i) => $"node-{i:D4}";

    private static byte[] Json(JsonObject o) => Encoding.UTF8.GetBytes(o.ToJsonString());

    private static JsonObject PodDocument(string ns, string name, string node, string ip, string app) => new()
    {
        ["metadata"] = new JsonObject { ["name"] = name, ["namespace"] = ns, ["labels"] = new JsonObject { ["app"] = app, ["tier"] = "web" } },
        ["spec"] = new JsonObject
        {
            ["nodeName"] = node,
            ["containers"] = new JsonArray(new JsonObject { ["name"] = "c", ["ports"] = new JsonArray(new JsonObject { ["name"] = "http", ["containerPort"] = 80, ["protocol"] = "TCP" }) }),
        },
        ["status"] = new JsonObject { ["phase"] = "Running", ["podIP"] = ip, ["podIPs"] = new JsonArray(new JsonObject { ["ip"] = ip }) },
    };

    /// <summary>Ingress to one app from another app, a namespace and a CIDR, on a port: the shapes users write most.</summary>
    private static JsonObject PolicyDocument(string ns, string name, int k) => new()
    {
        ["apiVersion"] = "networking.k8s.io/v1", ["kind"] = "NetworkPolicy",
        ["metadata"] = new JsonObject { ["name"] = name, ["namespace"] = ns },
        ["spec"] = new JsonObject
        {
            ["podSelector"] = new JsonObject { ["matchLabels"] = new JsonObject { ["app"] = $"app-{k % Apps}" } },
            ["policyTypes"] = new JsonArray("Ingress"),
            ["ingress"] = new JsonArray(new JsonObject
            {
                ["from"] = new JsonArray(
                    new JsonObject { ["podSelector"] = new JsonObject { ["matchLabels"] = new JsonObject { ["app"] = $"app-{(k + 1) % Apps}" } } },
                    new JsonObject { ["namespaceSelector"] = new JsonObject { ["matchLabels"] = new JsonObject { ["team"] = $"team-{k % 10}" } } },
                    new JsonObject { ["ipBlock"] = new JsonObject { ["cidr"] = $"172.{16 + k % 16}.{k / 16 % 256}.0/24" } }),
                ["ports"] = new JsonArray(new JsonObject { ["protocol"] = "TCP", ["port"] = 8000 + k % 100 }, new JsonObject { ["protocol"] = "TCP", ["port"] = "http" }),
            }),
        },
    };

    private static async Task WaitEnforcedAsync(HttpClient client, long revision, TimeSpan timeout, Process agent, StringBuilder log)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (DateTime.UtcNow < deadline)
        {
            if (agent.HasExited) throw new InvalidOperationException("the agent exited:\n" + log);
            try
            {
                using var r = await client.GetAsync(string.Create(CultureInfo.InvariantCulture, $"http://agent/status/wait?revision={revision}&scope=all&timeoutMs=10000"));
                if (r.IsSuccessStatusCode) return;
            }
            catch (HttpRequestException) { await Task.Delay(20); } // the socket is not there yet: the agent is starting
        }
        throw new TimeoutException($"the agent did not reach revision {revision} in {timeout}:\n{log}");
    }

    /// <summary>The agent itself, not `ip netns exec` (which execs it, so usually the same pid).</summary>
    private static int AgentPid(int launched)
    {
        for (var i = 0; i < 50; i++)
        {
            if (File.Exists($"/proc/{launched}/exe") && Path.GetFileName(new FileInfo($"/proc/{launched}/exe").LinkTarget ?? "") == "weft-agent") return launched;
            Thread.Sleep(10);
        }
        return launched;
    }

    private static double CpuMs(int pid)
    {
        var fields = File.ReadAllText($"/proc/{pid}/stat").Split(')')[1].Split(' ', StringSplitOptions.RemoveEmptyEntries);
        var ticks = long.Parse(fields[11], CultureInfo.InvariantCulture) + long.Parse(fields[12], CultureInfo.InvariantCulture);
        return ticks * 1000.0 / 100; // USER_HZ
    }

    private static long Status(int pid, string field) =>
        long.Parse(File.ReadAllLines($"/proc/{pid}/status").Single(l => l.StartsWith(field + ":", StringComparison.Ordinal)).Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture);

    private static string Capture(string command)
    {
        using var p = Process.Start(new ProcessStartInfo("sh", ["-c", command]) { RedirectStandardOutput = true })!;
        var output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        return output;
    }

    private static void Sh(string command)
    {
        using var p = Process.Start(new ProcessStartInfo("sh", ["-c", command]) { RedirectStandardError = true })!;
        var err = p.StandardError.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0) throw new InvalidOperationException($"{command}: {err}");
    }
}
