using System.Text;
using Weft.Datastore;

namespace Weft.Tests.Datastore;

/// <summary>
/// The contract every datastore backend must pass. A backend's test class derives from this and supplies
/// <see cref="Open"/>; etcd and kubernetes backends get the same suite.
/// </summary>
public abstract class DatastoreContract : IDisposable
{
    /// <summary>A new client on the same underlying store (a second process or node, as far as the test knows).</summary>
    protected abstract IDatastore Open();

    public abstract void Dispose();

    /// <summary>False for the kubernetes backend: the API server has no multi-object transaction.</summary>
    protected virtual bool AtomicMultiKey => true;

    /// <summary>Drops history up to <paramref name="revision"/> (an API server compacts by itself: its test asks the test server).</summary>
    protected virtual ValueTask CompactAsync(IDatastore ds, long revision) => ds.CompactAsync(revision);

    private static byte[] B(string s) => Encoding.UTF8.GetBytes(s);
    private static string S(byte[] b) => Encoding.UTF8.GetString(b);

    [Fact]
    public async Task Get_of_missing_key_is_null_and_create_then_get_round_trips()
    {
        using var ds = Open();
        Assert.Null(await ds.GetAsync("/t/a"));
        var put = await ds.PutAsync("/t/a", B("1"), 0);
        Assert.True(put.Succeeded);
        var kv = await ds.GetAsync("/t/a");
        Assert.NotNull(kv);
        Assert.Equal("1", S(kv.Value));
        Assert.Equal(put.Revision, kv.ModRevision);
        Assert.Equal(put.Revision, kv.CreateRevision);
    }

    [Fact]
    public async Task Compare_and_swap_refuses_stale_revisions_and_duplicate_creates()
    {
        using var ds = Open();
        var r1 = await ds.PutAsync("/t/cas", B("a"), 0);
        Assert.False((await ds.PutAsync("/t/cas", B("b"), 0)).Succeeded, "create over an existing key must fail");
        var r2 = await ds.PutAsync("/t/cas", B("b"), r1.Revision);
        Assert.True(r2.Succeeded);
        Assert.False((await ds.PutAsync("/t/cas", B("c"), r1.Revision)).Succeeded, "stale revision must fail");
        Assert.Equal("b", S((await ds.GetAsync("/t/cas"))!.Value));
        Assert.Equal(r1.Revision, (await ds.GetAsync("/t/cas"))!.CreateRevision);
        Assert.False((await ds.DeleteAsync("/t/cas", r1.Revision)).Succeeded);
        Assert.True((await ds.DeleteAsync("/t/cas", r2.Revision)).Succeeded);
        Assert.Null(await ds.GetAsync("/t/cas"));
    }

    [Fact]
    public async Task Multi_key_transaction_is_all_or_nothing()
    {
        Assert.SkipUnless(AtomicMultiKey, "this backend has no multi-key transactions (IPAM needs none)");
        using var ds = Open();
        await ds.PutAsync("/t/x", B("x"), 0);
        var failed = await ds.CommitAsync([Precondition.Absent("/t/y"), Precondition.Absent("/t/x")],
            [Mutation.Put("/t/y", B("y")), Mutation.Put("/t/x", B("x2"))]);
        Assert.False(failed.Succeeded);
        Assert.Null(await ds.GetAsync("/t/y"));
        Assert.Equal("x", S((await ds.GetAsync("/t/x"))!.Value));
        var ok = await ds.CommitAsync([Precondition.Absent("/t/y")], [Mutation.Put("/t/y", B("y")), Mutation.Delete("/t/x")]);
        Assert.True(ok.Succeeded);
        Assert.Equal(ok.Revision, (await ds.GetAsync("/t/y"))!.ModRevision);
        Assert.Null(await ds.GetAsync("/t/x"));
    }

    [Fact]
    public async Task List_by_prefix_is_sorted_and_excludes_siblings()
    {
        using var ds = Open();
        foreach (var k in new[] { "/p/b", "/p/a", "/p/c/d", "/q/a", "/p0" })
            await ds.PutAsync(k, B(k), 0);
        var list = await ds.ListAsync("/p/");
        Assert.Equal(["/p/a", "/p/b", "/p/c/d"], list.Items.Select(i => i.Key));
        Assert.Equal(await ds.RevisionAsync(), list.Revision);
    }

    [Fact]
    public async Task Revisions_increase_by_one_per_committed_transaction()
    {
        using var ds = Open();
        var r0 = await ds.RevisionAsync();
        var a = AtomicMultiKey
            ? await ds.CommitAsync([], [Mutation.Put("/r/a", B("1")), Mutation.Put("/r/b", B("2"))])
            : await ds.CommitAsync([], [Mutation.Put("/r/a", B("1"))]);
        Assert.Equal(r0 + 1, a.Revision);
        var failed = await ds.PutAsync("/r/a", B("x"), 0);
        Assert.False(failed.Succeeded);
        Assert.Equal(r0 + 1, await ds.RevisionAsync());
    }

    [Fact]
    public async Task Watch_replays_history_from_a_revision_then_follows_live_changes_from_another_client()
    {
        using var ds = Open();
        using var other = Open();
        var start = await ds.RevisionAsync();
        await ds.PutAsync("/w/a", B("1"), 0);
        var rb = await ds.PutAsync("/w/b", B("2"), 0);
        await ds.PutAsync("/other/z", B("z"), 0);
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(20));
        var events = new List<WatchEvent>();
        await foreach (var e in ds.WatchAsync("/w/", start, cts.Token))
        {
            events.Add(e);
            if (events.Count == 2)
            {
                await other.DeleteAsync("/w/a", -1);
                await other.PutAsync("/w/b", B("3"), rb.Revision);
            }
            if (events.Count == 4) break;
        }
        Assert.Equal([("/w/a", WatchEventKind.Put), ("/w/b", WatchEventKind.Put), ("/w/a", WatchEventKind.Delete), ("/w/b", WatchEventKind.Put)],
            events.Select(e => (e.Key, e.Kind)));
        Assert.Equal("3", S(events[3].Value!));
        Assert.True(events.Zip(events.Skip(1)).All(p => p.First.Revision < p.Second.Revision));
    }

    [Fact]
    public async Task Watch_from_a_compacted_revision_fails_clearly()
    {
        using var ds = Open();
        var first = await ds.PutAsync("/c/a", B("1"), 0);
        await ds.PutAsync("/c/a", B("2"), first.Revision);
        var now = await ds.RevisionAsync();
        await CompactAsync(ds, now);
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        await Assert.ThrowsAsync<DatastoreCompactedException>(async () =>
        {
            await foreach (var _ in ds.WatchAsync("/c/", first.Revision - 1, cts.Token)) { }
        });
        // Current state survives compaction.
        Assert.Equal("2", S((await ds.GetAsync("/c/a"))!.Value));
    }

    [Fact]
    public async Task Concurrent_increments_through_separate_clients_never_lose_an_update()
    {
        using (var init = Open()) await init.PutAsync("/n/counter", B("0"), 0);
        const int workers = 8, each = 25;
        await Task.WhenAll(Enumerable.Range(0, workers).Select(_ => Task.Run(async () =>
        {
            using var ds = Open();
            for (var i = 0; i < each; i++)
            {
                while (true)
                {
                    var kv = (await ds.GetAsync("/n/counter"))!;
                    var next = int.Parse(S(kv.Value), System.Globalization.CultureInfo.InvariantCulture) + 1;
                    if ((await ds.PutAsync("/n/counter", B(next.ToString(System.Globalization.CultureInfo.InvariantCulture)), kv.ModRevision)).Succeeded) break;
                }
            }
        })));
        using var check = Open();
        Assert.Equal((workers * each).ToString(System.Globalization.CultureInfo.InvariantCulture), S((await check.GetAsync("/n/counter"))!.Value));
    }
}

public sealed class SqliteDatastoreTests : DatastoreContract
{
    private readonly string _dir = Support.TestEnv.TempDir("sqlite");
    protected override IDatastore Open() => DatastoreFactory.Open("sqlite://" + Path.Combine(_dir, "weft.db"));
    public override void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void Bad_uris_are_refused_with_the_fix()
    {
        var e = Assert.Throws<ArgumentException>(() => DatastoreFactory.Open("sqlite://relative/path.db"));
        Assert.Contains("absolute path", e.Message);
        Assert.Contains("unknown scheme", Assert.Throws<ArgumentException>(() => DatastoreFactory.Open("mysql://x")).Message);
    }

    [Fact]
    public void An_unwritable_location_is_reported_as_unavailable()
    {
        var file = Path.Combine(_dir, "not-a-dir");
        File.WriteAllText(file, "x");
        Assert.Throws<DatastoreUnavailableException>(() => DatastoreFactory.Open("sqlite://" + Path.Combine(file, "weft.db")));
    }
}

/// <summary>
/// The kubernetes backend against the scripted API server (tests/Weft.Tests/Support/Weft.Lab.LabApiServer.cs): objects,
/// resourceVersions, 409s, watches and 410 Gone as the API server has them. No real kube-apiserver runs here.
/// </summary>
public sealed class KubeDatastoreTests : DatastoreContract
{
    private readonly Weft.Lab.LabApiServer _api = new Weft.Lab.LabApiServer().WithWeftCrds();
    private readonly HttpClient _http = new();

    protected override IDatastore Open() => new Weft.Kubernetes.KubeDatastore(_http, _api.BaseAddress);
    protected override bool AtomicMultiKey => false;

    protected override ValueTask CompactAsync(IDatastore ds, long revision)
    {
        _api.Compact();
        return ValueTask.CompletedTask;
    }

    public override void Dispose()
    {
        _http.Dispose();
        _api.DisposeAsync().AsTask().GetAwaiter().GetResult();
    }
}
