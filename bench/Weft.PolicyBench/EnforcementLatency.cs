using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using Weft.Lab;
using Weft.Netlink;
using Weft.Resources;

namespace Weft.PolicyBench;

/// <summary>
/// Policy enforcement latency as a user sees it, with real packets: a prober inside a pod sends a UDP datagram from a
/// new socket (so a new connection, never an established one) to one pod on every node each millisecond; the bench
/// commits a policy change and finds, per node, the first probe sent after which every probe has the new verdict.
/// Latency = that probe's send time − the moment the write's commit began (it includes the commit itself).
/// Rounds alternate deny and allow; the first round is the first policy after `lab up`; every 5th round comes right
/// after the client's Pod document was relabelled, every 10th after its Namespace was.
/// </summary>
public static class EnforcementLatency
{
    private const int Port = 80;

    public static async Task<int> RunAsync(string weftctl, string datastore, int applies, int labs, string dataplane)
    {
        Environment.SetEnvironmentVariable("WEFT_DIST", Path.GetDirectoryName(weftctl));
        var all = new List<(double Ms, double CommitMs, string Kind)>();
        var perLab = (applies + labs - 1) / labs;
        for (var l = 0; l < labs; l++)
        {
            var name = $"pel{Environment.ProcessId % 1000}{l}";
            LabLatency.Run(weftctl, "lab", "up", "--name", name, "--nodes", "3", "--pods-per-node", "2", "--datastore", datastore, "--dataplane", dataplane);
            try { all.AddRange(await LabRoundsAsync(LabState.LoadOrThrow(name), Math.Min(perLab, applies - l * perLab)).ConfigureAwait(false)); }
            finally { LabLatency.Run(weftctl, "lab", "down", "--name", name); }
        }
        var ms = all.Select(a => a.Ms).ToList();
        var afterAck = all.Select(a => a.Ms - a.CommitMs).ToList();
        var commits = all.Select(a => a.CommitMs).ToList();
        Console.WriteLine();
        Console.WriteLine($"| datastore, dataplane | applies (labs) | median ms | p90 ms | p99 ms | max ms | p99 ms after the commit returned | commit itself, median / p99 ms | first after lab up (ms) | after relabel, max ms |");
        Console.WriteLine("|---|---|---|---|---|---|---|---|---|---|");
        Console.WriteLine($"| {datastore}, {dataplane} | {ms.Count} ({labs}) | {LabLatency.Q(ms, 0.5):0.0} | {LabLatency.Q(ms, 0.9):0.0} | {LabLatency.Q(ms, 0.99):0.0} | {ms.Max():0.0} | {LabLatency.Q(afterAck, 0.99):0.0} | {LabLatency.Q(commits, 0.5):0.0} / {LabLatency.Q(commits, 0.99):0.0} | " +
                          $"{string.Join(", ", all.Where(a => a.Kind == "first").Select(a => a.Ms.ToString("0.0", CultureInfo.InvariantCulture)))} | " +
                          $"{all.Where(a => a.Kind == "relabel").Select(a => a.Ms).DefaultIfEmpty().Max():0.0} |");
        return 0;
    }

    private static async Task<List<(double, double, string)>> LabRoundsAsync(LabState state, int rounds)
    {
        var client = state.Pods.Single(p => p.Name == "pod-1");
        // One target on every node: the client's own node too (traffic that never leaves the node).
        var targets = state.Nodes.Select(n => state.Pods.First(p => p.Node == n.Name && p != client)).ToList();
        foreach (var n in state.Nodes)
            NetNs.Run("/var/run/netns/" + n.Netns, () =>
            {
                // A probe per ms per node: let entries go soon (the prober never reuses a source port within 40 s anyway).
                Sysctl.Write("net/netfilter/nf_conntrack_udp_timeout", "2");
                Sysctl.Write("net/netfilter/nf_conntrack_udp_timeout_stream", "2");
            });
        using var store = new CommitClock(Weft.Datastore.DatastoreFactory.Open(state.CtlDatastore));
        var resources = new ResourceService(store);
        // Warm this process's commit path on a key no agent acts on: round 0 must time the agents' first policy, not our JIT.
        await Weft.Datastore.DatastoreExtensions.PutAsync(store, "/weft/bench/warm-up", "{}"u8.ToArray(), -1).ConfigureAwait(false);
        using var prober = new Prober(client.Netns, targets.Select(t => IPAddress.Parse(t.Ip!)).ToList());
        var results = new List<(double, double, string)>();
        var selector = string.Join(", ", targets.Select(t => t.Labels["app"]));
        for (var i = 0; i < rounds; i++)
        {
            var deny = i % 2 == 0;
            var kind = i == 0 ? "first" : i % 5 == 0 ? "relabel" : "plain";
            if (i % 5 == 0 && i > 0)
            {
                client.Labels["round"] = i.ToString(CultureInfo.InvariantCulture);
                var docs = new List<Resource> { Read(LabCommands.PodJson(client).ToJsonString()) };
                if (i % 10 == 0) docs.Add(Read($"{{\"apiVersion\":\"v1\",\"kind\":\"Namespace\",\"metadata\":{{\"name\":\"default\",\"labels\":{{\"round\":\"{i}\"}}}}}}"));
                await resources.ApplyAsync(docs).ConfigureAwait(false);
            }
            var policy = Read($$"""
                apiVersion: networking.k8s.io/v1
                kind: NetworkPolicy
                metadata: {name: bench, namespace: default}
                spec:
                  podSelector: {matchExpressions: [{key: app, operator: In, values: [{{selector}}]}]}
                  policyTypes: [Ingress]
                  ingress: {{(deny ? "[]" : "[{from: [{podSelector: {matchLabels: {app: pod-1}}}]}]")}}
                """);
            await resources.ApplyAsync([policy]).ConfigureAwait(false);
            var latency = await prober.SettledAsync(store.LastCommitStart, answered: !deny, TimeSpan.FromSeconds(5)).ConfigureAwait(false);
            results.Add((latency.Max(), store.LastCommitMs, kind));
            Console.WriteLine($"round {i} {(deny ? "deny " : "allow")} {kind,-7} per node ms: {string.Join(" ", latency.Select(x => x.ToString("0.0", CultureInfo.InvariantCulture)))} (commit itself {store.LastCommitMs:0.0} ms)");
            await Task.Delay(Random.Shared.Next(20, 120)).ConfigureAwait(false);
        }
        return results;
    }

    /// <summary>The datastore, noting when each commit begins: the bench's own validation (and JIT) is not the agents' latency.</summary>
    private sealed class CommitClock(Weft.Datastore.IDatastore inner) : Weft.Datastore.IDatastore
    {
        public long LastCommitStart { get; private set; }
        public double LastCommitMs { get; private set; }
        public string Describe => inner.Describe;
        public ValueTask<Weft.Datastore.KeyValue?> GetAsync(string key, CancellationToken ct = default) => inner.GetAsync(key, ct);
        public ValueTask<Weft.Datastore.RangeResult> ListAsync(string prefix, CancellationToken ct = default) => inner.ListAsync(prefix, ct);
        public async ValueTask<Weft.Datastore.TxnResult> CommitAsync(IReadOnlyList<Weft.Datastore.Precondition> preconditions, IReadOnlyList<Weft.Datastore.Mutation> mutations, CancellationToken ct = default)
        {
            LastCommitStart = Stopwatch.GetTimestamp();
            var result = await inner.CommitAsync(preconditions, mutations, ct).ConfigureAwait(false);
            LastCommitMs = Stopwatch.GetElapsedTime(LastCommitStart).TotalMilliseconds;
            return result;
        }
        public IAsyncEnumerable<Weft.Datastore.WatchEvent> WatchAsync(string prefix, long afterRevision, CancellationToken ct = default) => inner.WatchAsync(prefix, afterRevision, ct);
        public ValueTask<long> RevisionAsync(CancellationToken ct = default) => inner.RevisionAsync(ct);
        public ValueTask CompactAsync(long revision, CancellationToken ct = default) => inner.CompactAsync(revision, ct);
        public void Dispose() => inner.Dispose();
    }

    private static Resource Read(string yaml) =>
        Weft.Client.Documents.YamlDocuments.Resources(yaml, "bench").Single();

    /// <summary>Probes from inside a pod: one UDP datagram per target per millisecond, each from a new socket.</summary>
    private sealed class Prober : IDisposable
    {
        private sealed class Sent(long at) { public long At { get; } = at; public volatile bool Answered; public volatile bool Done; }

        private readonly List<IPAddress> _targets;
        private readonly List<Sent>[] _sent;
        private readonly Lock _lock = new();
        private readonly CancellationTokenSource _stop = new();
        private readonly Task _loop;

        public Prober(string netns, List<IPAddress> targets)
        {
            _targets = targets;
            _sent = targets.Select(_ => new List<Sent>()).ToArray();
            // The loop runs on a thread switched into the pod's namespace, so every socket it opens is the pod's.
            _loop = Task.Factory.StartNew(() => NetNs.Run("/var/run/netns/" + netns, Loop), TaskCreationOptions.LongRunning);
        }

        private void Loop()
        {
            var payload = "probe"u8.ToArray();
            var next = 0;
            while (!_stop.IsCancellationRequested)
            {
                for (var t = 0; t < _targets.Count; t++)
                {
                    // Source ports walk 20000-59999 (each reused after ~13 s, conntrack forgets them after 2 s), so a
                    // probe is never a packet of a connection conntrack still knows: an established flow is accepted
                    // whatever the policy says, as in every stateful dataplane.
                    var port = 20000 + next++ % 40000;
                    var s = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
                    var sent = new Sent(Stopwatch.GetTimestamp());
                    try
                    {
                        s.Bind(new IPEndPoint(IPAddress.Any, port));
                        s.Connect(new IPEndPoint(_targets[t], Port));
                        s.Send(payload);
                    }
                    catch (SocketException) { s.Dispose(); continue; }
                    lock (_lock) _sent[t].Add(sent);
                    _ = AwaitReplyAsync(s, sent);
                }
                Thread.Sleep(1);
            }
        }

        private static async Task AwaitReplyAsync(Socket s, Sent sent)
        {
            using (s)
            using (var cts = new CancellationTokenSource(TimeSpan.FromMilliseconds(100)))
            {
                var buffer = new byte[64];
                try { await s.ReceiveAsync(buffer, SocketFlags.None, cts.Token).ConfigureAwait(false); sent.Answered = true; }
                catch (Exception e) when (e is OperationCanceledException or SocketException) { }
            }
            sent.Done = true;
        }

        /// <summary>
        /// Per target, ms from <paramref name="begin"/> to the first probe after which 30 decided probes in a row
        /// (and every later decided one) have the wanted verdict.
        /// </summary>
        public async Task<double[]> SettledAsync(long begin, bool answered, TimeSpan timeout)
        {
            var sw = Stopwatch.StartNew();
            while (true)
            {
                var result = new double[_targets.Count];
                var settled = true;
                for (var t = 0; t < _targets.Count && settled; t++)
                {
                    List<Sent> probes;
                    lock (_lock) probes = _sent[t].Where(p => p.At >= begin).ToList();
                    var decided = probes.TakeWhile(p => p.Done).ToList();
                    var lastWrong = decided.FindLastIndex(p => p.Answered != answered);
                    if (decided.Count - lastWrong - 1 < 30) { settled = false; break; }
                    result[t] = Stopwatch.GetElapsedTime(begin, decided[lastWrong + 1].At).TotalMilliseconds;
                }
                if (settled)
                {
                    lock (_lock) foreach (var l in _sent) l.RemoveAll(p => p.At < begin);
                    return result;
                }
                if (sw.Elapsed > timeout) throw new InvalidOperationException($"the new verdict did not settle within {timeout.TotalSeconds} s");
                await Task.Delay(10).ConfigureAwait(false);
            }
        }

        public void Dispose()
        {
            _stop.Cancel();
            try { _loop.Wait(); } catch (AggregateException) { }
            _stop.Dispose();
        }
    }
}
