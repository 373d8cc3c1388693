using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Text;
using Weft.Dataplane.Nftables;
using Weft.Model;
using Weft.Model.Selectors;
using Weft.Netlink;
using Weft.Policy;
using Weft.Policy.Ir;

// Policy programming and enforcement cost (issue 4), inside throwaway namespaces, with an iptables linear-chain
// baseline (one rule per peer and port, as Calico's iptables mode and kube-proxy generate) in the same run.
//   1. programming: 10, 1k, 10k rules over 1k endpoints: full apply, and one changed policy (compile + one transaction).
//   2. enforcement: client pod -> node (policy) -> server pod; the rule allowing the client is the last of N:
//      iperf3 throughput and TCP connect latency with no rules, weft's table, and the iptables linear chain.
//   3. `lab [nodes=5] [rounds=50]`: apply → enforced on every node, and new pod → first allowed packet (LabLatency.cs).
// Usage (as root, after ./build.sh): dotnet run -c Release --project bench/Weft.PolicyBench -- [iperf-seconds=5] [connects=2000]
//                                    dotnet run -c Release --project bench/Weft.PolicyBench -- lab [nodes=5] [rounds=50]
//   4. `enforce [sqlite|etcd] [applies=200] [labs=3] [dist-dir] [--dataplane nftables|bpf]`: commit → every node enforces, seen by real packets
//      (EnforcementLatency.cs); dist-dir runs another build's binaries (an older commit's, to compare).
//   5. `kube-scale [nodes=1000] [pods=50000] [policies=10000]`: one agent's first sync, memory and CPU per watch event
//      against the lab's API server holding that cluster (KubeScale.cs).
if (args.Length > 0 && args[0] == "enforce")
{
    // `--dataplane nftables|bpf` anywhere after `enforce` (default nftables).
    var at = Array.IndexOf(args, "--dataplane");
    var dataplane = at > 0 && at + 1 < args.Length ? args[at + 1] : "nftables";
    var rest = at > 0 ? args.Take(at).Concat(args.Skip(at + 2)).ToArray() : args;
    return await Weft.PolicyBench.EnforcementLatency.RunAsync(Path.Combine(rest.Length > 4 ? Path.GetFullPath(rest[4]) : Path.Combine(FindRoot(), "dist"), "weftctl"), rest.Length > 1 ? rest[1] : "sqlite",
        rest.Length > 2 ? int.Parse(rest[2], CultureInfo.InvariantCulture) : 200, rest.Length > 3 ? int.Parse(rest[3], CultureInfo.InvariantCulture) : 3, dataplane);
}
if (args.Length > 0 && args[0] == "kube-scale")
    return await Weft.PolicyBench.KubeScale.RunAsync(Path.Combine(FindRoot(), "dist"), args.Length > 1 ? int.Parse(args[1], CultureInfo.InvariantCulture) : 1000,
        args.Length > 2 ? int.Parse(args[2], CultureInfo.InvariantCulture) : 50_000, args.Length > 3 ? int.Parse(args[3], CultureInfo.InvariantCulture) : 10_000);
if (args.Length > 0 && args[0] == "lab")
    return await Weft.PolicyBench.LabLatency.RunAsync(Path.Combine(FindRoot(), "dist", "weftctl"),
        args.Length > 1 ? int.Parse(args[1], CultureInfo.InvariantCulture) : 5, args.Length > 2 ? int.Parse(args[2], CultureInfo.InvariantCulture) : 50);
// `programming`: only part 1 (quick, no traffic).
var programmingOnly = args.Length > 0 && args[0] == "programming";
if (programmingOnly) args = args[1..];
var iperfSeconds = args.Length > 0 ? int.Parse(args[0], CultureInfo.InvariantCulture) : 5;
var connects = args.Length > 1 ? int.Parse(args[1], CultureInfo.InvariantCulture) : 2000;
var prefix = $"wpb{Environment.ProcessId % 100000}";
var created = new List<string>();
string Ns(string s) { var n = $"{prefix}-{s}"; Sh($"ip netns add {n}"); created.Add(n); Sh($"ip -n {n} link set lo up"); return n; }
var iptablesRestore = File.Exists("/usr/sbin/iptables-legacy-restore") ? "iptables-legacy-restore" : "iptables-restore";
var iptables = iptablesRestore.Replace("-restore", "", StringComparison.Ordinal);
try
{
    Console.WriteLine($"# weft policy bench {DateTime.UtcNow:yyyy-MM-ddTHH:mm:ssZ}, baseline: {iptables}");
    Console.WriteLine();
    Console.WriteLine("| rules | endpoints | weft full apply ms (median of 5) | weft one change ms (median, p90 of 20) | iptables-restore full ms | iptables one change ms (-R) | weft rules in kernel | weft chains |");
    Console.WriteLine("|---|---|---|---|---|---|---|---|");
    var bpfRows = new List<string>();
    foreach (var rules in new[] { 10, 1000, 10000 })
    {
        var node = Ns($"prog{rules}");
        var (policies, world, local) = Scenario(rules, 1000, IPAddress.Parse("10.250.1.2"), 0);
        using var transport = NetNs.Run("/var/run/netns/" + node, () => new LibNftTransport());
        var full = new List<double>();
        PolicyRuleset? ruleset = null;
        for (var i = 0; i < 5; i++)
        {
            var sw = Stopwatch.StartNew();
            ruleset = new NftPolicyCompiler(new NftPolicyCompiler.Options()).Compile(policies, world, local);
            new NftPolicyDriver(transport).Apply(ruleset);
            full.Add(sw.Elapsed.TotalMilliseconds);
        }
        var driver = new NftPolicyDriver(transport);
        var compiler = new NftPolicyCompiler(new NftPolicyCompiler.Options()); // one per agent, as PolicyReconciler keeps it
        driver.Apply(compiler.Compile(policies, world, local));
        var change = new List<double>();
        var compileOnly = new List<double>();
        for (var i = 0; i < 20; i++)
        {
            var (p2, w2, l2) = Scenario(rules, 1000, IPAddress.Parse("10.250.1.2"), i + 1);
            var sw = Stopwatch.StartNew();
            var next = compiler.Compile(p2, w2, l2);
            compileOnly.Add(sw.Elapsed.TotalMilliseconds);
            driver.Apply(next);
            change.Add(sw.Elapsed.TotalMilliseconds);
        }
        var ipt = IptablesRestoreInput(rules, IPAddress.Parse("10.250.1.2"), "10.250.2.2");
        var iptFull = new List<double>();
        for (var i = 0; i < 5; i++)
        {
            var sw = Stopwatch.StartNew();
            Run("ip", ["netns", "exec", node, iptablesRestore], ipt);
            iptFull.Add(sw.Elapsed.TotalMilliseconds);
        }
        var iptChange = new List<double>();
        for (var i = 0; i < 20; i++)
        {
            var sw = Stopwatch.StartNew();
            Run("ip", ["netns", "exec", node, iptables, "-R", "WEFT-IN", "1", "-s", "172.16.0.1/32", "-p", "tcp", "--dport", (2000 + i).ToString(CultureInfo.InvariantCulture), "-j", "ACCEPT"], "");
            iptChange.Add(sw.Elapsed.TotalMilliseconds);
        }
        Console.WriteLine($"| {rules} | 1000 | {Median(full):0.0} | {Median(change):0.0}, {P90(change):0.0} (compile {Median(compileOnly):0.0}) | {Median(iptFull):0.0} | {Median(iptChange):0.0} | {ruleset!.RuleCount} | {ruleset.Chains.Count} |");

        // The eBPF dataplane on the same scenario: it attaches to real interfaces, so the node gets all 1001 of them (veths).
        Run("ip", ["-n", node, "-batch", "-"], string.Concat(Enumerable.Range(0, 1000).Select(i => EndpointInterface(i, false)).Append("weft00000000001")
            .Select(n => $"link add {n} type veth peer name p{n[4..]}\nlink set {n} up\n")));
        using var bpf = new Weft.PolicyBench.BpfDataplaneBench(node);
        var bpfFull = new List<double>();
        var bpfLoad = new List<double>();
        Weft.Agent.Drivers.PolicyApplyResult? bpfResult = null;
        for (var i = 0; i < 5; i++)
        {
            bpf.Start();
            bpfLoad.Add(bpf.LoadMs);
            var (ms, _, r) = bpf.Apply(policies, world, local);
            bpfFull.Add(ms);
            bpfResult = r;
        }
        var bpfChange = new List<double>();
        var bpfCompile = new List<double>();
        var bpfCompiler = new Weft.Dataplane.Bpf.BpfPolicyCompiler(); // the compile alone, on the same sequence
        bpfCompiler.Compile(policies, world, local);
        var changes = Enumerable.Range(1, 20).Select(i => Scenario(rules, 1000, IPAddress.Parse("10.250.1.2"), i)).ToList();
        var bpfCleanup = new List<double>();
        foreach (var (p2, w2, l2) in changes)
        {
            var (ms, cleanup, _) = bpf.Apply(p2, w2, l2);
            bpfChange.Add(ms);
            bpfCleanup.Add(cleanup);
        }
        foreach (var (p2, w2, l2) in changes)
        {
            var sw = Stopwatch.StartNew();
            bpfCompiler.Compile(p2, w2, l2);
            bpfCompile.Add(sw.Elapsed.TotalMilliseconds);
        }
        bpfRows.Add($"| {rules} | 1000 | {Median(bpfLoad):0.0} | {Median(bpfFull):0.0} | {Median(bpfChange):0.0}, {P90(bpfChange):0.0} (compile {Median(bpfCompile):0.0}) | {Median(bpfCleanup):0.0} | {bpfResult!.Chains} | {bpfResult.Rules} | {bpfResult.Sets} |");
    }
    Console.WriteLine();
    Console.WriteLine("| rules | endpoints (interfaces) | bpf program load + verify ms | bpf full apply ms (median of 5: compile, maps, 2 tc attach per interface, guard table) | bpf one change ms (median, p90 of 20), until enforced | clean-up after, ms (median; off the change's path) | programs | policy map entries | ipcache entries |");
    Console.WriteLine("|---|---|---|---|---|---|---|---|---|");
    foreach (var row in bpfRows) Console.WriteLine(row);
    if (programmingOnly) return 0;

    // Enforcement: client -- node -- server, router interfaces named like weft host veths.
    var client = Ns("client");
    var server = Ns("server");
    var router = Ns("router");
    Sh($"ip -n {router} link add weft00000000001 type veth peer name eth0 netns {client}");
    Sh($"ip -n {router} link add weft00000000002 type veth peer name eth0 netns {server}");
    Sh($"ip netns exec {router} sysctl -qw net.ipv4.ip_forward=1");
    foreach (var (pod, ip, dev) in new[] { (client, "10.250.1.2", "weft00000000001"), (server, "10.250.2.2", "weft00000000002") })
    {
        Sh($"ip -n {pod} addr add {ip}/32 dev eth0 && ip -n {pod} link set eth0 up && ip -n {pod} route add 169.254.1.1 dev eth0 scope link && ip -n {pod} route add default via 169.254.1.1");
        Sh($"ip -n {router} link set {dev} up && ip -n {router} route add {ip}/32 dev {dev} && ip netns exec {router} sysctl -qw net.ipv4.conf.{dev}.proxy_arp=1 net.ipv4.neigh.{dev}.proxy_delay=0");
    }
    Sh($"ip -n {router} addr add 169.254.1.1/32 dev lo");
    // Tens of thousands of sequential connects over the rounds: without reuse the client's ports fill with TIME_WAIT
    // and connect() itself spends milliseconds finding a free one, whatever the path.
    Sh($"ip netns exec {client} sysctl -qw net.ipv4.tcp_tw_reuse=1 net.ipv4.ip_local_port_range='10000 65000'");
    var iperfPid = Background("ip", ["netns", "exec", server, "iperf3", "-s", "-p", "5201"]);
    var listenerPid = Background("ip", ["netns", "exec", server, "python3", "-c", "import socket\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(('0.0.0.0',7000));s.listen(512)\nwhile True:\n c,_=s.accept();c.close()"]);
    Thread.Sleep(500);
    // Interleaved rounds (each variant once per round), medians: throughput on this VM drifts by ±5% between runs.
    var variants = new List<(string Label, Action Install, Action Remove)>
    {
        ("no table, no conntrack (bare forwarding)", () => { }, () => { }),
    };
    foreach (var rules in new[] { 0, 10, 10000 })
    {
        var n = rules;
        LibNftTransport? t = null;
        variants.Add(($"weft nftables, {n} rules{(n == 0 ? " (enforcement on, no policy)" : "")}", () =>
        {
            var (policies, world, local) = Scenario(n, 1000, IPAddress.Parse("10.250.1.2"), 0, serverIp: IPAddress.Parse("10.250.2.2"));
            t = NetNs.Run("/var/run/netns/" + router, () => new LibNftTransport());
            new NftPolicyDriver(t).Apply(new NftPolicyCompiler(new NftPolicyCompiler.Options()).Compile(policies, world, local));
        }, () => { new NftPolicyDriver(t!).Remove(); t!.Dispose(); }));
        Weft.PolicyBench.BpfDataplaneBench? b = null;
        variants.Add(($"weft bpf, {n} rules{(n == 0 ? " (enforcement on, no policy)" : "")}", () =>
        {
            var (policies, world, local) = Scenario(n, 1000, IPAddress.Parse("10.250.1.2"), 0, serverIp: IPAddress.Parse("10.250.2.2"));
            b = new Weft.PolicyBench.BpfDataplaneBench(router);
            b.Start();
            b.Apply(policies, world, local);
        }, () => b!.Dispose()));
        if (n == 0) continue;
        variants.Add(($"iptables linear chain ({iptables}), {n} rules", () => Run("ip", ["netns", "exec", router, iptablesRestore], IptablesRestoreInput(n, IPAddress.Parse("10.250.1.2"), "10.250.2.2")),
            () => Run("ip", ["netns", "exec", router, iptablesRestore], "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n")));
    }
    var results = variants.ToDictionary(v => v.Label, _ => (Gbit: new List<double>(), Median: new List<double>(), P99: new List<double>(), PerSecond: new List<double>()));
    for (var round = 0; round < 3; round++)
        foreach (var (label, install, remove) in variants)
        {
            install();
            results[label].Gbit.Add(Iperf(client, "10.250.2.2", iperfSeconds));
            var (median, p99, perSecond) = ConnectLatency(client, "10.250.2.2", connects);
            results[label].PerSecond.Add(perSecond);
            results[label].Median.Add(median);
            results[label].P99.Add(p99);
            remove();
        }
    var weft0 = Median(results[variants[1].Label].Gbit);
    var bare = Median(results[variants[0].Label].Gbit);
    Console.WriteLine();
    Console.WriteLine($"| path (client -> node -> server, allowing rule last of N), 3 interleaved rounds | iperf3 Gbit/s (-t {iperfSeconds}, median) | ratio to weft with 0 rules | ratio to bare forwarding | TCP connect median us ({connects} connects) | connect p99 us | connects/s (one client, sequential) | connects/s ratio to bare |");
    Console.WriteLine("|---|---|---|---|---|---|---|---|");
    var bareConnects = Median(results[variants[0].Label].PerSecond);
    foreach (var (label, _, _) in variants)
    {
        var r = results[label];
        Console.WriteLine($"| {label} | {Median(r.Gbit):0.00} | {Median(r.Gbit) / weft0:0.00}x | {Median(r.Gbit) / bare:0.00}x | {Median(r.Median):0} | {Median(r.P99):0} | {Median(r.PerSecond):0} | {Median(r.PerSecond) / bareConnects:0.00}x |");
    }
    Kill(iperfPid);
    Kill(listenerPid);
}
finally
{
    foreach (var n in created) TrySh($"ip netns delete {n}");
}
return 0;

// 10 policies over the endpoints (app=app0..app9); `rules` ingress rules in total, each one /32 peer and one port.
// The client's address is allowed by the last rule of the policy selecting the server (endpoint 0). `variant`
// changes one rule of one policy (the one-change measurement).
static (PolicySet, PolicyWorld, List<EndpointInfo>) Scenario(int rules, int endpoints, IPAddress client, int variant, IPAddress? serverIp = null)
{
    var eps = Enumerable.Range(0, endpoints).Select(i => new EndpointInfo("bench", $"p{i}",
        new Dictionary<string, string> { ["app"] = $"app{i % 10}" },
        [i == 0 && serverIp is not null ? serverIp : IPAddress.Parse($"10.{244 + i / 60000}.{i / 250 % 240}.{i % 250 + 1}")], [], "here",
        EndpointInterface(i, serverIp is not null))).ToList();
    eps.Add(new EndpointInfo("bench", "client", new Dictionary<string, string> { ["app"] = "client" }, [client], [], "here", "weft00000000001"));
    var perPolicy = Math.Max(1, rules / 10);
    var policies = Enumerable.Range(0, Math.Min(10, rules)).Select(p => new PolicyIr
    {
        Id = $"knp/bench/p{p}", Version = p == 0 ? variant + 1 : 1, Dialect = "kubernetes", Kind = "NetworkPolicy", Namespace = "bench", Name = $"p{p}", Order = 1000,
        Selector = Selector.Parse($"app == 'app{p}'"), AppliesToIngress = true,
        Ingress = Enumerable.Range(0, perPolicy).Select(r => new PolicyRule
        {
            Protocol = Protocols.Tcp,
            Source = new PeerMatch { Nets = [r == perPolicy - 1 && p == 0 ? Cidr.Host(client) : Cidr.Parse($"172.{16 + r / 60000}.{r / 250 % 240}.{r % 250 + 1}/32")] },
            Destination = new PeerMatch { Ports = [r == perPolicy - 1 && p == 0 ? PortMatch.Range(1, 65535) : PortMatch.Single(p == 0 && r == 0 ? 2000 + variant : 1000 + r % 1000)] },
            Origin = $"ingress[{r}]",
        }).ToList(),
    }).ToList();
    return (new PolicySet(policies), new PolicyWorld([], eps), eps);
}

// Endpoint 0 is the server on the enforcement path's weft00000000002; the client is weft00000000001; the others never collide with either.
static string EndpointInterface(int i, bool server) => i == 0 && server ? "weft00000000002" : $"weft{i + 0x100:x11}";

static string IptablesRestoreInput(int rules, IPAddress client, string server)
{
    var sb = new StringBuilder("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:WEFT-IN - [0:0]\n");
    sb.Append("-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n");
    sb.Append(CultureInfo.InvariantCulture, $"-A FORWARD -d {server}/32 -j WEFT-IN\n");
    for (var r = 0; r < rules - 1; r++)
        sb.Append(CultureInfo.InvariantCulture, $"-A WEFT-IN -s 172.{16 + r / 60000}.{r / 250 % 240}.{r % 250 + 1}/32 -p tcp --dport {1000 + r % 1000} -j ACCEPT\n");
    sb.Append(CultureInfo.InvariantCulture, $"-A WEFT-IN -s {client}/32 -p tcp -j ACCEPT\n-A WEFT-IN -j DROP\nCOMMIT\n");
    return sb.ToString();
}

static double Iperf(string clientNs, string server, int seconds)
{
    var json = Capture("ip", ["netns", "exec", clientNs, "iperf3", "-c", server, "-p", "5201", "-t", seconds.ToString(CultureInfo.InvariantCulture), "-J"]);
    var doc = System.Text.Json.JsonDocument.Parse(json);
    return doc.RootElement.GetProperty("end").GetProperty("sum_received").GetProperty("bits_per_second").GetDouble() / 1e9;
}

// Sequential connects from one client (each a new source port: a new flow for every dataplane); per-connect latency
// median and p99, and connects per second over the whole loop.
static (double Median, double P99, double PerSecond) ConnectLatency(string clientNs, string server, int n)
{
    var script = "import socket,time,sys\nr=[]\nt0=time.perf_counter()\nfor i in range(" + n.ToString(CultureInfo.InvariantCulture) + "):\n s=socket.socket()\n t=time.perf_counter()\n s.connect(('" + server + "',7000))\n r.append((time.perf_counter()-t)*1e6)\n s.close()\nel=time.perf_counter()-t0\nr.sort()\nprint(r[len(r)//2], r[int(len(r)*0.99)-1], len(r)/el)";
    var parts = Capture("ip", ["netns", "exec", clientNs, "python3", "-c", script]).Trim().Split(' ');
    return (double.Parse(parts[0], CultureInfo.InvariantCulture), double.Parse(parts[1], CultureInfo.InvariantCulture), double.Parse(parts[2], CultureInfo.InvariantCulture));
}

static string FindRoot()
{
    var dir = new DirectoryInfo(AppContext.BaseDirectory);
    while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "Weft.slnx"))) dir = dir.Parent;
    return dir?.FullName ?? throw new InvalidOperationException("run from inside the repository");
}

static double Median(List<double> xs) { var s = xs.Order().ToList(); return s.Count % 2 == 1 ? s[s.Count / 2] : (s[s.Count / 2 - 1] + s[s.Count / 2]) / 2; }
static double P90(List<double> xs) { var s = xs.Order().ToList(); return s[(int)Math.Ceiling(0.9 * s.Count) - 1]; }

static string Capture(string file, string[] argv)
{
    var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
    foreach (var a in argv) psi.ArgumentList.Add(a);
    using var p = Process.Start(psi)!;
    var output = p.StandardOutput.ReadToEnd();
    var err = p.StandardError.ReadToEnd();
    p.WaitForExit();
    if (p.ExitCode != 0) throw new InvalidOperationException($"{file} {string.Join(' ', argv)}: {err}");
    return output;
}

static void Run(string file, string[] argv, string stdin)
{
    var psi = new ProcessStartInfo(file) { RedirectStandardInput = true, RedirectStandardError = true, UseShellExecute = false };
    foreach (var a in argv) psi.ArgumentList.Add(a);
    using var p = Process.Start(psi)!;
    p.StandardInput.Write(stdin);
    p.StandardInput.Close();
    var err = p.StandardError.ReadToEnd();
    p.WaitForExit();
    if (p.ExitCode != 0) throw new InvalidOperationException($"{file} {string.Join(' ', argv)}: {err}");
}

static int Background(string file, string[] argv)
{
    var psi = new ProcessStartInfo(file) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
    foreach (var a in argv) psi.ArgumentList.Add(a);
    return Process.Start(psi)!.Id;
}

static void Kill(int pid) { try { using var p = Process.GetProcessById(pid); p.Kill(entireProcessTree: true); } catch (ArgumentException) { } }
static void Sh(string cmd) => Run("/bin/sh", ["-c", cmd], "");
static void TrySh(string cmd) { try { Sh(cmd); } catch (InvalidOperationException) { } }
