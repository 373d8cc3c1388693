using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json.Nodes;
using Weft.Datastore;

namespace Weft.Tests.Support;

/// <summary>
/// Real etcd members for one test: data dirs in a temp dir, random free ports on 127.0.0.1 (in the root namespace,
/// or inside <c>netns</c> when given), each member a process of ours that is killed by PID on Dispose.
/// </summary>
public sealed class EtcdCluster : IDisposable
{
    public const string Binary = "/usr/bin/etcd";

    public sealed class Member
    {
        public required string Name { get; init; }
        public required int ClientPort { get; init; }
        public required int PeerPort { get; init; }
        public required string DataDir { get; init; }
        public Process? Process { get; set; }
        public string Endpoint => $"127.0.0.1:{ClientPort}";
    }

    private readonly string _dir;
    private readonly string? _netns;
    private readonly string _initialCluster;
    public IReadOnlyList<Member> Members { get; }

    /// <summary>The datastore URI with every member; reaches a namespaced cluster from the root namespace too.</summary>
    public string Uri => UriWith();

    /// <summary>The URI as a process inside the cluster's namespace (the CNI plugin) writes it.</summary>
    public string PlainUri => "etcd://" + string.Join(",", Members.Select(m => m.Endpoint));

    public string UriWith(string? options = null)
    {
        var query = new List<string>();
        if (_netns is not null) query.Add("netns=/var/run/netns/" + _netns);
        if (options is not null) query.Add(options);
        return PlainUri + (query.Count > 0 ? "?" + string.Join("&", query) : "");
    }

    private EtcdCluster(int size, string? netns)
    {
        if (!File.Exists(Binary)) throw new InvalidOperationException($"{Binary} is missing: run scripts/install-deps.sh (Debian package etcd-server)");
        _netns = netns;
        // tmpfs: etcd fsyncs every write, and under a loaded test run (64 parallel ADDs fsyncing sqlite) a member on
        // disk stalled past the client's 10 s deadline. Durability across a machine crash is not what these test.
        _dir = Directory.Exists("/dev/shm")
            ? Directory.CreateDirectory(Path.Combine("/dev/shm", $"weft-test-{Environment.ProcessId}-etcd-{Guid.NewGuid():N}")).FullName
            : TestEnv.TempDir("etcd");
        var members = new List<Member>();
        var ports = FreePorts(2 * size);
        for (var i = 0; i < size; i++)
            members.Add(new Member { Name = $"m{i}", ClientPort = ports[2 * i], PeerPort = ports[2 * i + 1], DataDir = Path.Combine(_dir, $"m{i}") });
        Members = members;
        _initialCluster = string.Join(",", members.Select(m => $"{m.Name}=http://127.0.0.1:{m.PeerPort}"));
    }

    /// <summary>Starts <paramref name="size"/> members and waits until the cluster answers a linearizable read.</summary>
    public static EtcdCluster Start(int size = 1, string? netns = null)
    {
        var cluster = new EtcdCluster(size, netns);
        try
        {
            foreach (var m in cluster.Members) cluster.Launch(m);
            cluster.WaitReady(TimeSpan.FromSeconds(20));
            return cluster;
        }
        catch
        {
            cluster.Dispose();
            throw;
        }
    }

    private void Launch(Member m)
    {
        var args = $"--name {m.Name} --data-dir {m.DataDir} " +
                   $"--listen-client-urls http://127.0.0.1:{m.ClientPort} --advertise-client-urls http://127.0.0.1:{m.ClientPort} " +
                   $"--listen-peer-urls http://127.0.0.1:{m.PeerPort} --initial-advertise-peer-urls http://127.0.0.1:{m.PeerPort} " +
                   $"--initial-cluster {_initialCluster} --initial-cluster-state new --initial-cluster-token {Path.GetFileName(_dir)} " +
                   "--logger zap --log-outputs stderr";
        var exec = _netns is null ? "" : $"ip netns exec {_netns} ";
        // exec all the way down, so the PID we hold is etcd's own; close inherited descriptors (such as the build
        // lock the tests run under) so a member that outlives a crashed test run holds nothing of ours.
        const string closeFds = "for fd in /proc/$$/fd/*; do fd=${fd##*/}; [ \"$fd\" -gt 2 ] && eval \"exec $fd>&-\" 2>/dev/null; done; ";
        var psi = new ProcessStartInfo("/bin/bash", ["-c", $"{closeFds}exec {exec}{Binary} {args} >>{Path.Combine(_dir, m.Name + ".log")} 2>&1 </dev/null"]) { UseShellExecute = false };
        m.Process = Process.Start(psi) ?? throw new InvalidOperationException("cannot start etcd");
    }

    /// <summary>SIGKILL one member (by its PID) and wait until it is gone.</summary>
    public void Kill(int index)
    {
        var p = Members[index].Process;
        if (p is null || p.HasExited) return;
        p.Kill();
        p.WaitForExit();
    }

    /// <summary>Starts a killed member again on its data dir and ports.</summary>
    public void Restart(int index)
    {
        Kill(index);
        Members[index].Process?.Dispose();
        Launch(Members[index]);
    }

    public void WaitReady(TimeSpan timeout)
    {
        var sw = Stopwatch.StartNew();
        using var ds = DatastoreFactory.Open(UriWith("timeout=1"));
        Exception? last = null;
        while (sw.Elapsed < timeout)
        {
            if (Members.Any(m => m.Process is { HasExited: true }))
                throw new InvalidOperationException("etcd exited: " + Log());
            try
            {
                ds.RevisionAsync().AsTask().GetAwaiter().GetResult();
                return;
            }
            catch (DatastoreUnavailableException e) { last = e; }
            Thread.Sleep(20);
        }
        throw new TimeoutException($"etcd not ready after {timeout.TotalSeconds} s: {last?.Message}\n{Log()}");
    }

    /// <summary>The index of the current leader, from etcd's JSON gateway (POST /v3/maintenance/status).</summary>
    public int LeaderIndex()
    {
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(2) };
        for (var attempt = 0; attempt < 50; attempt++)
        {
            var ids = new Dictionary<ulong, int>();
            ulong leader = 0;
            for (var i = 0; i < Members.Count; i++)
            {
                if (Members[i].Process is not { HasExited: false }) continue;
                try
                {
                    using var content = new StringContent("{}", Encoding.UTF8, "application/json");
                    using var r = http.PostAsync(new System.Uri($"http://{Members[i].Endpoint}/v3/maintenance/status"), content).GetAwaiter().GetResult();
                    var doc = JsonNode.Parse(r.Content.ReadAsStringAsync().GetAwaiter().GetResult())!;
                    ids[ulong.Parse(doc["header"]!["member_id"]!.GetValue<string>(), System.Globalization.CultureInfo.InvariantCulture)] = i;
                    leader = ulong.Parse(doc["leader"]!.GetValue<string>(), System.Globalization.CultureInfo.InvariantCulture);
                }
                catch (Exception e) when (e is HttpRequestException or TaskCanceledException) { }
            }
            if (ids.TryGetValue(leader, out var index)) return index;
            Thread.Sleep(50);
        }
        throw new InvalidOperationException("no etcd leader found: " + Log());
    }

    public string Log() =>
        string.Join("\n", Members.Select(m => Path.Combine(_dir, m.Name + ".log")).Where(File.Exists)
            .Select(f => string.Join("\n", File.ReadLines(f).TakeLast(5))));

    private static int[] FreePorts(int count)
    {
        var listeners = Enumerable.Range(0, count).Select(_ => new TcpListener(IPAddress.Loopback, 0)).ToList();
        try
        {
            foreach (var l in listeners) l.Start();
            return listeners.Select(l => ((IPEndPoint)l.LocalEndpoint).Port).ToArray();
        }
        finally
        {
            foreach (var l in listeners) l.Stop();
        }
    }

    /// <summary>A port on 127.0.0.1 that nothing listens on (for "etcd is down" cases).</summary>
    public static int ClosedPort() => FreePorts(1)[0];

    public void Dispose()
    {
        foreach (var m in Members)
        {
            try
            {
                if (m.Process is { HasExited: false } p) { p.Kill(); p.WaitForExit(); }
            }
            catch (InvalidOperationException) { }
            m.Process?.Dispose();
        }
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }
}

/// <summary>One single-member etcd shared by a test class; each test starts from an empty keyspace (<see cref="Wipe"/>).</summary>
public sealed class EtcdFixture : IDisposable
{
    private readonly Lazy<EtcdCluster> _cluster = new(() => EtcdCluster.Start(1));
    public EtcdCluster Cluster => _cluster.Value;
    public string Uri => Cluster.Uri;

    public void Wipe()
    {
        using var ds = DatastoreFactory.Open(Uri);
        var all = ds.ListAsync("").AsTask().GetAwaiter().GetResult();
        foreach (var chunk in all.Items.Chunk(100))
            ds.CommitAsync([], chunk.Select(kv => Mutation.Delete(kv.Key)).ToList()).AsTask().GetAwaiter().GetResult();
    }

    public void Dispose()
    {
        if (_cluster.IsValueCreated) _cluster.Value.Dispose();
    }
}
