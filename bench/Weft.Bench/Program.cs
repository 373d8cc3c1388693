using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;

// Pod start/stop cost: CNI ADD and DEL per pod for weft and for the reference bridge+host-local plugins, interleaved
// in one run inside a throwaway node namespace. Usage:
//   dotnet run -c Release --project bench/Weft.Bench -- [pairs=40] [--via-ip-netns] [--baseline PATH]
// Default exec: as a runtime does it (containerd/CRI-O fork+exec the plugin from a process already in the node's
// network namespace): the bench's own thread enters the node namespace and execs the plugin directly.
// --via-ip-netns: the earlier harness, `/usr/bin/time -f %M ip netns exec NODE PLUGIN`, which adds two execs, a
// mount namespace and a /sys remount to every call of every variant.
// --baseline PATH: one more weft variant, another build of the plugin (its own datastore file), same rounds.
// Weft runs on sqlite and on the kubernetes datastore (the lab's API server, in this process, serving inside the node
// namespace as a cluster's API server is reachable from its nodes) in the same rounds.
var pairs = 40;
var viaIpNetns = false;
string? baseline = null;
for (var a = 0; a < args.Length; a++)
{
    if (args[a] == "--via-ip-netns") viaIpNetns = true;
    else if (args[a] == "--baseline") baseline = Path.GetFullPath(args[++a]);
    else pairs = int.Parse(args[a], CultureInfo.InvariantCulture);
}
var root = FindRoot();
var weft = Path.Combine(root, "dist", "weft");
var weftctl = Path.Combine(root, "dist", "weftctl");
var refDir = "/usr/lib/cni";
var prefix = $"wb{Environment.ProcessId}";
var node = prefix + "-node";
var tmp = Directory.CreateTempSubdirectory("weft-bench-").FullName;
var created = new List<string>();
using var rootNs = File.OpenHandle("/proc/thread-self/ns/net");
var inNode = false;
Weft.Lab.LabApiServer? api = null;
try
{
    Sh($"ip netns add {node}"); created.Add(node);
    Sh($"ip -n {node} link set lo up");
    var weftVariants = new List<(string Name, string Plugin)> { ("weft (routed, weft-ipam, sqlite)", weft) };
    if (baseline is not null) weftVariants.Add(($"weft baseline build ({baseline})", baseline));
    var variants = new List<(string Name, string Plugin, string Conf)>();
    for (var w = 0; w < weftVariants.Count; w++)
    {
        var uri = "sqlite://" + Path.Combine(tmp, $"weft{w}.db");
        Run(weftctl, ["apply", "-f", "-"], "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: bench}\nspec: {cidr: 10.244.0.0/16, blockSize: 26}\n", new() { ["WEFT_DATASTORE"] = uri });
        variants.Add((weftVariants[w].Name, weftVariants[w].Plugin,
            $$$"""{"cniVersion":"1.0.0","name":"weftnet","type":"weft","datastore":"{{{uri}}}","nodename":"bench","ipam":{"type":"weft-ipam"}}"""));
    }
    api = new Weft.Lab.LabApiServer(node).WithWeftCrds();
    var kubeconfig = api.WriteKubeconfig(Path.Combine(tmp, "kubeconfig"));
    Run(weftctl, ["apply", "-f", "-"], "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: bench}\nspec: {cidr: 10.244.0.0/16, blockSize: 26}\n",
        new() { ["WEFT_DATASTORE"] = $"kubernetes://{kubeconfig}?netns=/var/run/netns/{node}" });
    variants.Add(("weft (routed, weft-ipam, kubernetes: the lab's API server)", weft,
        $$$"""{"cniVersion":"1.0.0","name":"weftnet","type":"weft","datastore":"kubernetes://{{{kubeconfig}}}","nodename":"bench","ipam":{"type":"weft-ipam"}}"""));
    var refOff = variants.Count;
    variants.Add(("reference bridge+host-local (ipMasq off)", Path.Combine(refDir, "bridge"),
        $$$"""{"cniVersion":"1.0.0","name":"refnet","type":"bridge","bridge":"refbr0","isGateway":true,"ipMasq":false,"ipam":{"type":"host-local","dataDir":"{{{tmp}}}/hl","subnet":"10.88.0.0/16"}}"""));
    var refOn = variants.Count;
    variants.Add(("reference bridge+host-local (ipMasq on)", Path.Combine(refDir, "bridge"),
        $$$"""{"cniVersion":"1.0.0","name":"refmasq","type":"bridge","bridge":"refbr1","isGateway":true,"ipMasq":true,"ipam":{"type":"host-local","dataDir":"{{{tmp}}}/hl2","subnet":"10.89.0.0/16"}}"""));
    var floor = variants.Count;
    variants.Add((viaIpNetns ? "kernel floor: ip link add/del veth (sh + iproute2, no CNI)" : "kernel floor: ip link add/del veth (iproute2 exec'd, no CNI)", "ip", ""));

    if (!viaIpNetns) EnterNode();
    var results = variants.Select(_ => (Add: new List<double>(), Del: new List<double>())).ToArray();
    for (var i = -3; i < pairs; i++) // 3 warm-up rounds not counted
    {
        for (var v = 0; v < variants.Count; v++)
        {
            var pod = $"{prefix}-p{v}-{i + 3}";
            Sh($"ip netns add {pod}"); created.Add(pod);
            double add, del;
            if (v == floor)
            {
                // The kernel floor: the same veth pair made and removed by iproute2, no IPAM, no addresses.
                (add, del) = viaIpNetns
                    ? (Timed(() => Sh($"ip -n {node} link add bv{i + 3} type veth peer name eth0 netns {pod}")), Timed(() => Sh($"ip -n {node} link del bv{i + 3}")))
                    : (Timed(() => Exec("ip", ["link", "add", $"bv{i + 3}", "type", "veth", "peer", "name", "eth0", "netns", pod])), Timed(() => Exec("ip", ["link", "del", $"bv{i + 3}"])));
            }
            else
            {
                add = Cni(variants[v].Plugin, "ADD", variants[v].Conf, $"c{v}x{i + 3}", pod);
                del = Cni(variants[v].Plugin, "DEL", variants[v].Conf, $"c{v}x{i + 3}", pod);
            }
            Sh($"ip netns delete {pod}"); created.Remove(pod);
            if (i < 0) continue;
            results[v].Add.Add(add); results[v].Del.Add(del);
        }
    }
    LeaveNode();

    // Peak RSS (ru_maxrss) comes from /usr/bin/time in a few extra, untimed rounds: a child reaped by .NET's Process
    // gives no rusage, and timing through /usr/bin/time would add its exec to every figure.
    var rss = new long[variants.Count];
    for (var i = 0; i < 3; i++)
        for (var v = 0; v < variants.Count; v++)
        {
            if (v == floor) continue;
            var pod = $"{prefix}-r{v}-{i}";
            Sh($"ip netns add {pod}"); created.Add(pod);
            rss[v] = Math.Max(rss[v], RssOf(variants[v].Plugin, "ADD", variants[v].Conf, $"r{v}x{i}", pod));
            rss[v] = Math.Max(rss[v], RssOf(variants[v].Plugin, "DEL", variants[v].Conf, $"r{v}x{i}", pod));
            Sh($"ip netns delete {pod}"); created.Remove(pod);
        }

    var refAdd = Median(results[refOff].Add);
    var floorDel = Median(results[floor].Del);
    Console.WriteLine($"CNI ADD and DEL per pod, {pairs} interleaved rounds per variant (3 warm-up rounds not counted), median (p90), " +
                      $"{(viaIpNetns ? "exec'd through /usr/bin/time ip netns exec" : "exec'd directly from the node namespace, as a runtime does")}, node namespace {node}:");
    Console.WriteLine();
    Console.WriteLine("| variant | ADD ms | ADD / reference ADD (ipMasq off) | median of per-round ADD ratios | DEL ms | DEL / kernel-floor DEL | ADD+DEL ms | ADD+DEL / reference (ipMasq off) | peak RSS of plugin |");
    Console.WriteLine("|---|---|---|---|---|---|---|---|---|");
    for (var v = 0; v < variants.Count; v++)
    {
        var r = results[v];
        var pair = r.Add.Zip(r.Del, (x, y) => x + y).ToList();
        var refPair = results[refOff].Add.Zip(results[refOff].Del, (x, y) => x + y).ToList();
        var perRound = r.Add.Zip(results[refOff].Add, (x, y) => x / y).ToList();
        Console.WriteLine($"| {variants[v].Name} | {Median(r.Add):0.0} ({P90(r.Add):0.0}) | {Median(r.Add) / refAdd:0.00}x | {Median(perRound):0.00}x | " +
                          $"{Median(r.Del):0.0} ({P90(r.Del):0.0}) | {Median(r.Del) / floorDel:0.00}x | {Median(pair):0.0} ({P90(pair):0.0}) | " +
                          $"{Median(pair) / Median(refPair):0.00}x | {(rss[v] == 0 ? "-" : $"{rss[v] / 1024.0:0.0} MiB")} |");
    }
    _ = refOn;
    return 0;
}
finally
{
    LeaveNode();
    api?.DisposeAsync().AsTask().GetAwaiter().GetResult();
    foreach (var n in created) TrySh($"ip netns delete {n}");
    Directory.Delete(tmp, true);
}

// The main thread enters the node namespace; a child forked from it starts there, as a runtime's plugin does.
void EnterNode()
{
    using var ns = File.OpenHandle($"/var/run/netns/{node}");
    if (setns(ns.DangerousGetHandle(), 0x40000000) != 0) throw new InvalidOperationException($"setns {node}: errno {Marshal.GetLastPInvokeError()}");
    inNode = true;
    // A child forked from this thread must start in the node namespace.
    Sh($"test $(stat -L -c %i /proc/self/ns/net) = $(stat -L -c %i /var/run/netns/{node})");
}

void LeaveNode()
{
    if (!inNode) return;
    if (setns(rootNs.DangerousGetHandle(), 0x40000000) != 0) throw new InvalidOperationException($"setns back: errno {Marshal.GetLastPInvokeError()}");
    inNode = false;
}

double Cni(string plugin, string command, string conf, string id, string pod)
{
    var env = CniEnv(command, id, pod);
    var sw = Stopwatch.StartNew();
    var r = viaIpNetns
        ? Run("/usr/bin/time", ["-f", "%M", "-o", Path.Combine(tmp, "rss"), "ip", "netns", "exec", node, plugin], conf, env)
        : Run(plugin, [], conf, env);
    var ms = sw.Elapsed.TotalMilliseconds;
    if (r != 0) throw new InvalidOperationException($"{plugin} {command} failed");
    return ms;
}

long RssOf(string plugin, string command, string conf, string id, string pod)
{
    var rssFile = Path.Combine(tmp, "rss");
    if (Run("/usr/bin/time", ["-f", "%M", "-o", rssFile, "ip", "netns", "exec", node, plugin], conf, CniEnv(command, id, pod)) != 0)
        throw new InvalidOperationException($"{plugin} {command} failed");
    return long.Parse(File.ReadAllText(rssFile).Trim().Split('\n')[^1], CultureInfo.InvariantCulture);
}

Dictionary<string, string> CniEnv(string command, string id, string pod) => new()
{
    ["CNI_COMMAND"] = command, ["CNI_CONTAINERID"] = id, ["CNI_NETNS"] = "/var/run/netns/" + pod, ["CNI_IFNAME"] = "eth0",
    ["CNI_PATH"] = refDir, ["CNI_ARGS"] = "IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=" + id,
};

static double Timed(Action a) { var sw = Stopwatch.StartNew(); a(); return sw.Elapsed.TotalMilliseconds; }

static void Exec(string file, string[] argv) { if (Run(file, argv, "", []) != 0) throw new InvalidOperationException($"{file} {string.Join(' ', argv)}"); }

static double Median(List<double> xs) { var s = xs.Order().ToList(); return s.Count % 2 == 1 ? s[s.Count / 2] : (s[s.Count / 2 - 1] + s[s.Count / 2]) / 2; }
static double P90(List<double> xs) { var s = xs.Order().ToList(); return s[(int)Math.Ceiling(0.9 * s.Count) - 1]; }

static int Run(string file, string[] argv, string stdin, Dictionary<string, string> env)
{
    var psi = new ProcessStartInfo(file) { RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
    foreach (var a in argv) psi.ArgumentList.Add(a);
    foreach (var (k, v) in env) psi.Environment[k] = v;
    using var p = Process.Start(psi)!;
    p.StandardInput.Write(stdin);
    p.StandardInput.Close();
    var o = p.StandardOutput.ReadToEndAsync();
    var e = p.StandardError.ReadToEndAsync();
    p.WaitForExit();
    if (p.ExitCode != 0) Console.Error.WriteLine($"{file} {string.Join(' ', argv)}: {o.Result}{e.Result}");
    return p.ExitCode;
}

static void Sh(string cmd) { if (Run("/bin/sh", ["-c", cmd], "", []) != 0) throw new InvalidOperationException(cmd); }
static void TrySh(string cmd) => Run("/bin/sh", ["-c", cmd], "", []);

static string FindRoot()
{
    var dir = new DirectoryInfo(AppContext.BaseDirectory);
    while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "Weft.slnx"))) dir = dir.Parent;
    return dir?.FullName ?? throw new InvalidOperationException("run from inside the repository");
}

[DllImport("libc.so.6", SetLastError = true)]
static extern int setns(IntPtr fd, int nstype);
