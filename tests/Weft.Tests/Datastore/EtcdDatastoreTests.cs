using System.Diagnostics;
using System.Text;
using Weft.Datastore;
using Weft.Tests.Support;

namespace Weft.Tests.Datastore;

/// <summary>The datastore contract against a real single-member etcd (one per class, emptied before each test).</summary>
public sealed class EtcdDatastoreTests : DatastoreContract, IClassFixture<EtcdFixture>
{
    private readonly EtcdFixture _etcd;

    public EtcdDatastoreTests(EtcdFixture etcd)
    {
        _etcd = etcd;
        etcd.Wipe();
    }

    protected override IDatastore Open() => DatastoreFactory.Open(_etcd.Uri);
    public override void Dispose() { }

    [Theory]
    [InlineData("etcd://10.0.0.1:2379", "10.0.0.1", 2379)]
    [InlineData("etcd://etcd-0", "etcd-0", 2379)]
    [InlineData("etcd://[fd00::1]:2380/", "fd00::1", 2380)]
    [InlineData("etcd://a:1, b:2 ,c?timeout=2.5", "a", 1)]
    public void Uris_name_every_member(string uri, string firstHost, int firstPort)
    {
        var o = EtcdOptions.Parse(uri);
        Assert.Equal((firstHost, firstPort), o.Endpoints[0]);
        if (uri.Contains("c?", StringComparison.Ordinal))
        {
            Assert.Equal([("a", 1), ("b", 2), ("c", 2379)], o.Endpoints);
            Assert.Equal(TimeSpan.FromSeconds(2.5), o.RequestTimeout);
        }
    }

    [Theory]
    [InlineData("etcd://", "no endpoint")]
    [InlineData("etcd://h:0", "bad port")]
    [InlineData("etcd://h:99999", "bad port")]
    [InlineData("etcd://fd00::1:2379", "brackets")]
    [InlineData("etcd://h:2379?timeout=soon", "timeout")]
    [InlineData("etcd://h:2379?colour=red", "unknown option 'colour'")]
    [InlineData("etcd://h:2379?netns=relative", "must be a path")]
    public void Bad_uris_are_refused_with_the_fix(string uri, string expected)
    {
        var e = Assert.Throws<ArgumentException>(() => DatastoreFactory.Open(uri));
        Assert.Contains(expected, e.Message);
        Assert.Contains("etcd://host:2379", e.Message);
    }

    [Fact]
    public async Task Unreachable_etcd_is_unavailable_within_the_uri_timeout_naming_the_members()
    {
        var port = EtcdCluster.ClosedPort();
        using var ds = DatastoreFactory.Open($"etcd://127.0.0.1:{port},127.0.0.1:{EtcdCluster.ClosedPort()}?timeout=1");
        var sw = Stopwatch.StartNew();
        var e = await Assert.ThrowsAsync<DatastoreUnavailableException>(() => ds.GetAsync("/x").AsTask());
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(3), sw.Elapsed.ToString());
        Assert.Contains($"127.0.0.1:{port}", e.Message);
        await Assert.ThrowsAsync<DatastoreUnavailableException>(() => ds.PutAsync("/x", [1], 0).AsTask());
    }

    [Fact]
    public async Task Keys_with_non_ascii_bytes_and_the_whole_keyspace_list()
    {
        using var ds = Open();
        await ds.PutAsync("/ü/a", Encoding.UTF8.GetBytes("v"), 0);
        await ds.PutAsync("/ü/b", [], 0);
        await ds.PutAsync("/v", [2], 0);
        Assert.Equal(["/ü/a", "/ü/b"], (await ds.ListAsync("/ü/")).Items.Select(i => i.Key));
        Assert.Empty((await ds.GetAsync("/ü/b"))!.Value);
        Assert.Equal(3, (await ds.ListAsync("")).Items.Count);
        // Two writes to one key in a transaction: the last wins (etcd itself refuses duplicates).
        var r = await ds.CommitAsync([], [Mutation.Put("/v", [3]), Mutation.Delete("/v"), Mutation.Put("/v", [4])]);
        Assert.True(r.Succeeded);
        Assert.Equal([4], (await ds.GetAsync("/v"))!.Value);
    }
}

/// <summary>Failures of real etcd processes: a 3-member cluster losing its leader, a member restarting.</summary>
public sealed class EtcdFailoverTests
{
    private static byte[] B(string s) => Encoding.UTF8.GetBytes(s);
    private static void Log(string line) => TestContext.Current.TestOutputHelper?.WriteLine(line);

    [Fact]
    public async Task Three_members_keep_serving_writes_and_watches_when_the_leader_is_SIGKILLed()
    {
        var start = Stopwatch.StartNew();
        using var cluster = EtcdCluster.Start(3);
        Log($"3-member etcd ready in {start.ElapsedMilliseconds} ms");
        using var ds = DatastoreFactory.Open(cluster.Uri);
        using var watcherStore = DatastoreFactory.Open(cluster.Uri);
        var from = (await ds.PutAsync("/f/warm", B("0"), 0)).Revision - 1;

        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        var events = new List<WatchEvent>();
        var warm = new TaskCompletionSource();
        var done = new TaskCompletionSource();
        var watch = Task.Run(async () =>
        {
            await foreach (var e in watcherStore.WatchAsync("/f/", from, cts.Token))
            {
                lock (events) events.Add(e);
                if (e.Key == "/f/warm") warm.TrySetResult();
                if (e.Key == "/f/after-9") { done.TrySetResult(); break; }
            }
        });
        await warm.Task.WaitAsync(TimeSpan.FromSeconds(10));

        var leader = cluster.LeaderIndex();
        cluster.Kill(leader);
        var sw = Stopwatch.StartNew();
        Assert.True((await ds.PutAsync("/f/after-0", B("x"), 0)).Succeeded);
        var firstWrite = sw.Elapsed;
        Log($"first write after SIGKILL of the leader (member {leader}) succeeded after {firstWrite.TotalMilliseconds:0} ms");
        Assert.True(firstWrite < TimeSpan.FromSeconds(5), $"first write took {firstWrite}");
        for (var i = 1; i < 10; i++) Assert.True((await ds.PutAsync($"/f/after-{i}", B("x"), 0)).Succeeded);

        await done.Task.WaitAsync(TimeSpan.FromSeconds(20));
        await watch;
        Assert.Equal(["/f/warm", .. Enumerable.Range(0, 10).Select(i => $"/f/after-{i}")], events.Select(e => e.Key));
        Assert.True(events.Zip(events.Skip(1)).All(p => p.First.Revision < p.Second.Revision));
        using var fresh = DatastoreFactory.Open(cluster.Uri);
        Assert.Equal(11, (await fresh.ListAsync("/f/")).Items.Count);
    }

    [Fact]
    public async Task A_restarted_member_is_reconnected_and_a_watch_resumes_without_losing_events()
    {
        using var cluster = EtcdCluster.Start(1);
        using var ds = DatastoreFactory.Open(cluster.UriWith("timeout=1"));
        using var writer = DatastoreFactory.Open(cluster.Uri);
        var from = (await ds.PutAsync("/r/warm", B("0"), 0)).Revision - 1;
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        var keys = new List<string>();
        var warm = new TaskCompletionSource();
        var done = new TaskCompletionSource();
        var watch = Task.Run(async () =>
        {
            await foreach (var e in ds.WatchAsync("/r/", from, cts.Token))
            {
                lock (keys) keys.Add(e.Key);
                if (e.Key == "/r/warm") warm.TrySetResult();
                if (e.Key == "/r/c") { done.TrySetResult(); break; }
            }
        });
        await warm.Task.WaitAsync(TimeSpan.FromSeconds(10));

        cluster.Kill(0);
        var sw = Stopwatch.StartNew();
        await Assert.ThrowsAsync<DatastoreUnavailableException>(() => ds.GetAsync("/r/warm").AsTask());
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(3), sw.Elapsed.ToString());

        cluster.Restart(0);
        cluster.WaitReady(TimeSpan.FromSeconds(20));
        // Written by another client at once: the watcher is still backing off and must catch up from its revision.
        await writer.PutAsync("/r/a", B("1"), 0);
        await writer.PutAsync("/r/b", B("2"), 0);
        // The client's channel may be between reconnect attempts (at most 1 s apart): the member is used again
        // within a few seconds of coming back, not after gRPC's default backoff of up to two minutes.
        var back = Stopwatch.StartNew();
        KeyValue? a;
        while (true)
        {
            try { a = await ds.GetAsync("/r/a"); break; }
            catch (DatastoreUnavailableException) when (back.Elapsed < TimeSpan.FromSeconds(3)) { }
        }
        Assert.Equal("1", Encoding.UTF8.GetString(a!.Value));
        Assert.True((await ds.PutAsync("/r/c", B("3"), 0)).Succeeded);
        await done.Task.WaitAsync(TimeSpan.FromSeconds(15));
        await watch;
        Assert.Equal(["/r/warm", "/r/a", "/r/b", "/r/c"], keys);
    }

    [Fact]
    public async Task A_watch_reopened_after_its_history_was_compacted_reports_compaction()
    {
        using var cluster = EtcdCluster.Start(1);
        using var ds = DatastoreFactory.Open(cluster.Uri);
        var first = await ds.PutAsync("/k/a", B("1"), 0);
        await ds.PutAsync("/k/a", B("2"), first.Revision);
        await ds.PutAsync("/k/b", B("3"), 0);
        await ds.CompactAsync(await ds.RevisionAsync());
        await ds.CompactAsync(first.Revision); // older than the last compaction: nothing to do
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        var e = await Assert.ThrowsAsync<DatastoreCompactedException>(async () =>
        {
            await foreach (var _ in ds.WatchAsync("/k/", first.Revision, cts.Token)) { }
        });
        Assert.True(e.CompactedRevision > first.Revision);
        // Watching from the compacted revision itself works: the list-then-watch a consumer does next.
        var list = await ds.ListAsync("/k/");
        var after = new List<WatchEvent>();
        await ds.PutAsync("/k/c", B("4"), 0);
        await foreach (var ev in ds.WatchAsync("/k/", list.Revision, cts.Token)) { after.Add(ev); break; }
        Assert.Equal("/k/c", after[0].Key);
    }
}
