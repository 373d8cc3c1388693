using System.Diagnostics;
using System.Globalization;
using System.Net;
using Weft.Lab;
using Weft.Resources;

namespace Weft.PolicyBench;

/// <summary>
/// End-to-end policy latency in a real lab (dist/ binaries, one agent per node):
///  - apply → enforced: a policy change committed to the datastore until every agent reports that revision programmed;
///  - new pod: CNI ADD returning until the pod's first allowed connection succeeds (fail closed until programmed).
/// </summary>
public static class LabLatency
{
    public static async Task<int> RunAsync(string weftctl, int nodes, int rounds)
    {
        var name = $"plb{Environment.ProcessId % 1000}";
        Environment.SetEnvironmentVariable("WEFT_DIST", Path.GetDirectoryName(weftctl)); // where the lab code finds weft and weft-agent
        Run(weftctl, "lab", "up", "--name", name, "--nodes", nodes.ToString(CultureInfo.InvariantCulture), "--pods-per-node", "2");
        try
        {
            var state = LabState.LoadOrThrow(name);
            using var store = Weft.Datastore.DatastoreFactory.Open(state.Datastore);
            var resources = new ResourceService(store);
            var applied = new List<double>();
            for (var i = 0; i < rounds; i++)
            {
                var doc = Weft.Client.Documents.YamlDocuments.Resources($$"""
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: bench, namespace: default}
                    spec:
                      podSelector: {}
                      ingress:
                      - ports: [{port: {{1000 + i}}}, {port: 80}]
                    """, "bench");
                await resources.ApplyAsync(doc).ConfigureAwait(false);
                applied.Add((await LabCommands.WaitPolicySyncedAsync(state, TimeSpan.FromSeconds(10), CancellationToken.None).ConfigureAwait(false)).TotalMilliseconds);
            }
            var server = state.Pods[0];
            var newPod = new List<double>();
            for (var i = 0; i < rounds; i++)
            {
                var node = state.Nodes[(i + 1) % state.Nodes.Count].Name;
                var pod = await LabCommands.AddPodAsync(state, $"default/np{i}", node, ["app=bench"], ["80/TCP"], CancellationToken.None).ConfigureAwait(false);
                var target = IPAddress.Parse(server.Ip!);
                while (!await Probe.ReachableAsync(pod.Netns, target, 80, "TCP", TimeSpan.FromMilliseconds(50)).ConfigureAwait(false))
                    if (Stopwatch.GetElapsedTime(pod.AddReturnedAt) > TimeSpan.FromSeconds(10)) throw new InvalidOperationException($"pod {pod.Key} never connected");
                newPod.Add(Stopwatch.GetElapsedTime(pod.AddReturnedAt).TotalMilliseconds);
            }
            Console.WriteLine($"apply→enforced, slowest rounds: {string.Join(", ", applied.Select((v, i) => (v, i)).OrderByDescending(x => x.v).Take(4).Select(x => $"#{x.i} {x.v:0.0} ms"))}");
            Console.WriteLine($"new pod, slowest rounds: {string.Join(", ", newPod.Select((v, i) => (v, i)).OrderByDescending(x => x.v).Take(4).Select(x => $"#{x.i} {x.v:0.0} ms"))}");
            Console.WriteLine();
            Console.WriteLine($"| lab ({nodes} nodes, sqlite datastore) | rounds | median ms | p90 ms | p99 ms | max ms |");
            Console.WriteLine("|---|---|---|---|---|---|");
            Console.WriteLine($"| policy apply → enforced on every node | {rounds} | {Q(applied, 0.5):0.0} | {Q(applied, 0.9):0.0} | {Q(applied, 0.99):0.0} | {applied.Max():0.0} |");
            Console.WriteLine($"| new pod under policy: CNI ADD returned → first allowed connection | {rounds} | {Q(newPod, 0.5):0.0} | {Q(newPod, 0.9):0.0} | {Q(newPod, 0.99):0.0} | {newPod.Max():0.0} |");
            return 0;
        }
        finally { Run(weftctl, "lab", "down", "--name", name); }
    }

    internal static double Q(List<double> xs, double q)
    {
        var s = xs.Order().ToList();
        return s[Math.Clamp((int)Math.Ceiling(q * s.Count) - 1, 0, s.Count - 1)];
    }

    internal static void Run(string file, params string[] argv)
    {
        var psi = new ProcessStartInfo(file) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in argv) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var o = p.StandardOutput.ReadToEnd() + p.StandardError.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0) throw new InvalidOperationException($"{file} {string.Join(' ', argv)}: {o}");
    }
}
