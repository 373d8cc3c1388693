using System.Diagnostics;
using System.Globalization;

// Pod start/stop cost: ADD+DEL per pod for weft and for the reference bridge+host-local plugins, interleaved in
// one run inside a throwaway node namespace, exec'd exactly as a runtime does. Usage:
//   dotnet run -c Release --project bench/Weft.Bench -- [pairs=40]
var pairs = args.Length > 0 ? int.Parse(args[0], CultureInfo.InvariantCulture) : 40;
var root = FindRoot();
var weft = Path.Combine(root, "dist", "weft");
var weftctl = Path.Combine(root, "dist", "weftctl");
var refDir = "/usr/lib/cni";
var prefix = $"wb{Environment.ProcessId}";
var node = prefix + "-node";
var tmp = Directory.CreateTempSubdirectory("weft-bench-").FullName;
var created = new List<string>();
try
{
    Sh($"ip netns add {node}"); created.Add(node);
    Sh($"ip -n {node} link set lo up");
    var uri = "sqlite://" + Path.Combine(tmp, "weft.db");
    Run(weftctl, ["apply", "-f", "-"], "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: bench}\nspec: {cidr: 10.244.0.0/16, blockSize: 26}\n", new() { ["WEFT_DATASTORE"] = uri });
    var variants = new (string Name, string Plugin, string Conf)[]
    {
        ("weft (routed, weft-ipam, sqlite)", weft,
            $$$"""{"cniVersion":"1.0.0","name":"weftnet","type":"weft","datastore":"{{{uri}}}","nodename":"bench","ipam":{"type":"weft-ipam"}}"""),
        ("reference bridge+host-local (ipMasq off)", Path.Combine(refDir, "bridge"),
            $$$"""{"cniVersion":"1.0.0","name":"refnet","type":"bridge","bridge":"refbr0","isGateway":true,"ipMasq":false,"ipam":{"type":"host-local","dataDir":"{{{tmp}}}/hl","subnet":"10.88.0.0/16"}}"""),
        ("reference bridge+host-local (ipMasq on)", Path.Combine(refDir, "bridge"),
            $$$"""{"cniVersion":"1.0.0","name":"refmasq","type":"bridge","bridge":"refbr1","isGateway":true,"ipMasq":true,"ipam":{"type":"host-local","dataDir":"{{{tmp}}}/hl2","subnet":"10.89.0.0/16"}}"""),
        ("kernel floor: ip link add/del veth (sh + iproute2, no CNI)", "ip", ""),
    };
    var results = variants.Select(_ => (Add: new List<double>(), Del: new List<double>(), Pair: new List<double>(), Rss: new List<long>())).ToArray();
    for (var i = -3; i < pairs; i++) // 3 warm-up rounds not counted
    {
        for (var v = 0; v < variants.Length; v++)
        {
            var pod = $"{prefix}-p{v}-{i + 3}";
            Sh($"ip netns add {pod}"); created.Add(pod);
            if (variants[v].Plugin == "ip")
            {
                // The kernel floor: the same veth pair made and removed by iproute2, no IPAM, no addresses.
                var t0 = Stopwatch.StartNew();
                Sh($"ip -n {node} link add bv{i + 3} type veth peer name eth0 netns {pod}");
                var addFloor = t0.Elapsed.TotalMilliseconds;
                t0.Restart();
                Sh($"ip -n {node} link del bv{i + 3}");
                var delFloor = t0.Elapsed.TotalMilliseconds;
                Sh($"ip netns delete {pod}"); created.Remove(pod);
                if (i >= 0) { results[v].Add.Add(addFloor); results[v].Del.Add(delFloor); results[v].Pair.Add(addFloor + delFloor); results[v].Rss.Add(0); }
                continue;
            }
            var add = Cni(variants[v].Plugin, "ADD", variants[v].Conf, $"c{v}x{i + 3}", pod, out var rssAdd);
            var del = Cni(variants[v].Plugin, "DEL", variants[v].Conf, $"c{v}x{i + 3}", pod, out var rssDel);
            Sh($"ip netns delete {pod}"); created.Remove(pod);
            if (i < 0) continue;
            results[v].Add.Add(add); results[v].Del.Add(del); results[v].Pair.Add(add + del);
            results[v].Rss.Add(Math.Max(rssAdd, rssDel));
        }
    }
    Console.WriteLine($"ADD+DEL per pod, {pairs} interleaved pairs per variant, median (p90), node namespace {node}:");
    Console.WriteLine();
    Console.WriteLine("| variant | ADD ms | DEL ms | ADD+DEL ms | ratio to reference (ipMasq off) | ratio to reference (ipMasq on) | peak RSS of plugin |");
    Console.WriteLine("|---|---|---|---|---|---|---|");
    for (var v = 0; v < variants.Length; v++)
    {
        var r = results[v];
        Console.WriteLine($"| {variants[v].Name} | {Median(r.Add):0.0} ({P90(r.Add):0.0}) | {Median(r.Del):0.0} ({P90(r.Del):0.0}) | {Median(r.Pair):0.0} ({P90(r.Pair):0.0}) | " +
                          $"{Median(r.Pair) / Median(results[1].Pair):0.00}x | {Median(r.Pair) / Median(results[2].Pair):0.00}x | {(r.Rss.Max() == 0 ? "-" : $"{r.Rss.Max() / 1024.0:0.0} MiB")} |");
    }
    return 0;
}
finally
{
    foreach (var n in created) TrySh($"ip netns delete {n}");
    Directory.Delete(tmp, true);
}

double Cni(string plugin, string command, string conf, string id, string pod, out long maxRssKb)
{
    var rssFile = Path.Combine(tmp, "rss");
    var sw = Stopwatch.StartNew();
    var r = Run("/usr/bin/time", ["-f", "%M", "-o", rssFile, "ip", "netns", "exec", node, plugin], conf, new()
    {
        ["CNI_COMMAND"] = command, ["CNI_CONTAINERID"] = id, ["CNI_NETNS"] = "/var/run/netns/" + pod, ["CNI_IFNAME"] = "eth0",
        ["CNI_PATH"] = refDir, ["CNI_ARGS"] = "IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=" + id,
    });
    var ms = sw.Elapsed.TotalMilliseconds;
    if (r != 0) throw new InvalidOperationException($"{plugin} {command} failed");
    maxRssKb = long.Parse(File.ReadAllText(rssFile).Trim().Split('\n')[^1], CultureInfo.InvariantCulture);
    return ms;
}

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
