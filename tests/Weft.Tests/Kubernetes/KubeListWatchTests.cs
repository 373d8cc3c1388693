using System.Text.Json.Nodes;
using Weft.Kubernetes;
using Weft.Tests.Support;

namespace Weft.Tests.Kubernetes;

/// <summary>
/// The list/watch against the scripted API server's wire behaviour: paged lists at one version, watch events in
/// order, bookmarks, 410 Gone after a compaction (a fresh list, with what vanished meanwhile reported as deleted),
/// dropped and silent streams resumed without losing an event.
/// </summary>
public sealed class KubeListWatchTests
{
    private const string Pods = "/api/v1/pods";

    private static async Task Until(Func<bool> condition, string what)
    {
        // Correctness, not latency: generous for a 2-core machine running the whole suite at once.
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, "timed out waiting for " + what);
            await Task.Delay(10);
        }
    }

    private static (KubeListWatch Watch, CancellationTokenSource Stop, Task Run, List<KubeChange> Changes) Start(Weft.Lab.LabApiServer api, KubeWatchOptions? options = null)
    {
        var http = new HttpClient { BaseAddress = api.BaseAddress, Timeout = Timeout.InfiniteTimeSpan };
        var watch = new KubeListWatch(http, Pods, options ?? new KubeWatchOptions(PageSize: 100, MaxBackoff: TimeSpan.FromMilliseconds(200)));
        var changes = new List<KubeChange>();
        watch.Changed += c => { lock (changes) changes.Add(c); };
        var stop = new CancellationTokenSource();
        return (watch, stop, Task.Run(() => watch.RunAsync(stop.Token)), changes);
    }

    private static void SameAsServer(Weft.Lab.LabApiServer api, KubeListWatch watch)
    {
        var server = api.Items(Pods);
        var mine = watch.Snapshot();
        Assert.Equal(server.Keys.Order(StringComparer.Ordinal), mine.Keys.Order(StringComparer.Ordinal));
        foreach (var (key, o) in server) Assert.Equal(o.ToJsonString(), mine[key].ToJsonString());
    }

    [Fact]
    public async Task A_paged_list_syncs_then_the_watch_follows_adds_changes_and_deletes_in_order()
    {
        await using var api = new Weft.Lab.LabApiServer();
        for (var i = 0; i < 250; i++) api.Put(Pods, "default", $"pod-{i:000}");
        var (watch, stop, run, changes) = Start(api);
        await Until(() => watch.Synced, "the first list");
        Assert.Equal(250, watch.Snapshot().Count);
        Assert.Equal(3, api.Requests.Count(r => r.StartsWith("LIST", StringComparison.Ordinal))); // 100 + 100 + 50

        api.Put(Pods, "default", "pod-001", new JsonObject { ["spec"] = new JsonObject { ["nodeName"] = "node-2" } });
        api.Delete(Pods, "default/pod-002");
        api.Put(Pods, "kube-system", "new");
        await Until(() => watch.ResourceVersion == api.Version.ToString(System.Globalization.CultureInfo.InvariantCulture), "the watch to catch up");
        SameAsServer(api, watch);
        lock (changes)
            Assert.Equal(["MODIFIED default/pod-001", "DELETED default/pod-002", "ADDED kube-system/new"], changes.Skip(250).Select(c => $"{c.Type} {c.Key}"));
        Assert.All(api.Requests.Where(r => r.StartsWith("WATCH", StringComparison.Ordinal)), r => Assert.Contains("allowWatchBookmarks=true", r));
        await stop.CancelAsync();
        await run;
    }

    [Fact]
    public async Task A_bookmark_moves_the_version_without_a_change()
    {
        await using var api = new Weft.Lab.LabApiServer();
        api.Put(Pods, "default", "a");
        var (watch, stop, run, changes) = Start(api);
        await Until(() => watch.Synced, "the first list");
        api.Put("/api/v1/namespaces", "", "other"); // another collection moves the version
        api.Bookmark();
        await Until(() => watch.ResourceVersion == api.Version.ToString(System.Globalization.CultureInfo.InvariantCulture), "the bookmark");
        lock (changes) Assert.Single(changes);
        await stop.CancelAsync();
        await run;
    }

    [Fact]
    public async Task Gone_after_a_compaction_lists_again_and_reports_what_vanished_meanwhile()
    {
        await using var api = new Weft.Lab.LabApiServer();
        api.Put(Pods, "default", "stays");
        api.Put(Pods, "default", "goes");
        var (watch, stop, run, changes) = Start(api);
        await Until(() => watch.Synced, "the first list");

        // The watch is dropped; while it is away an object goes and one comes, and history is compacted: resuming
        // from the old version is 410 Gone, so the client must list again.
        api.Silent = true;
        api.DropStreams();
        api.Delete(Pods, "default/goes");
        api.Put(Pods, "default", "came");
        api.Compact();
        api.Silent = false;
        await Until(() => watch.Lists == 2, "a second list");
        await Until(() => watch.Snapshot().ContainsKey("default/came"), "the new object");
        SameAsServer(api, watch);
        lock (changes)
        {
            Assert.Contains(changes, c => c is { Type: "DELETED", Key: "default/goes" });
            Assert.Contains(changes, c => c is { Type: "ADDED", Key: "default/came" });
        }
        await stop.CancelAsync();
        await run;
    }

    [Fact]
    public async Task A_dropped_stream_resumes_from_the_last_version_and_loses_nothing()
    {
        await using var api = new Weft.Lab.LabApiServer();
        var (watch, stop, run, changes) = Start(api);
        await Until(() => watch.Synced, "the first list");
        for (var round = 0; round < 5; round++)
        {
            api.Silent = true;
            api.DropStreams();
            api.Put(Pods, "default", $"while-away-{round}");
            api.Silent = false;
            api.Put(Pods, "default", $"after-{round}");
        }
        await Until(() => watch.Snapshot().Count == 10, "every object");
        SameAsServer(api, watch);
        Assert.Equal(1, watch.Lists); // resumed from the log each time, never listed again
        lock (changes) Assert.Equal(10, changes.Count(c => c.Type == "ADDED"));
        await stop.CancelAsync();
        await run;
    }

    [Fact]
    public async Task A_silent_stream_is_given_up_after_the_idle_limit_and_resumed()
    {
        await using var api = new Weft.Lab.LabApiServer();
        var (watch, stop, run, _) = Start(api, new KubeWatchOptions(IdleTimeout: TimeSpan.FromMilliseconds(500), MaxBackoff: TimeSpan.FromMilliseconds(100)));
        await Until(() => watch.Synced, "the first list");
        var watches = api.Requests.Count(r => r.StartsWith("WATCH", StringComparison.Ordinal));
        api.Silent = true; // the connection stays open but says nothing: a half-open stream to the client
        api.Put(Pods, "default", "unheard");
        await Until(() => api.Requests.Count(r => r.StartsWith("WATCH", StringComparison.Ordinal)) > watches, "a new watch after the idle limit");
        api.Silent = false;
        await Until(() => watch.Snapshot().ContainsKey("default/unheard"), "the event the silent stream held back");
        await stop.CancelAsync();
        await run;
    }

    [Fact]
    public async Task A_server_that_ends_the_watch_is_watched_again_from_where_it_ended()
    {
        await using var api = new Weft.Lab.LabApiServer();
        var (watch, stop, run, _) = Start(api, new KubeWatchOptions(WatchTimeout: TimeSpan.FromSeconds(1)));
        await Until(() => watch.Synced, "the first list");
        await Until(() => api.Requests.Count(r => r.StartsWith("WATCH", StringComparison.Ordinal)) >= 2, "a second watch after timeoutSeconds");
        api.Put(Pods, "default", "later");
        await Until(() => watch.Snapshot().ContainsKey("default/later"), "the event on the new watch");
        Assert.Equal(1, watch.Lists);
        await stop.CancelAsync();
        await run;
    }

    [Theory]
    [InlineData("not json at all")]
    [InlineData("[1,2,3]")]
    [InlineData("{\"type\":\"ADDED\"}")]
    [InlineData("{\"type\":\"EXPLODED\",\"object\":{}}")]
    [InlineData("{\"type\":\"ADDED\",\"object\":{\"metadata\":{}}}")]
    [InlineData("{\"type\":\"ERROR\",\"object\":{\"code\":500,\"message\":\"etcd is sad\"}}")]
    public async Task A_malformed_watch_event_is_refused_and_the_watch_resumes_without_losing_events(string line)
    {
        await using var api = new Weft.Lab.LabApiServer();
        api.Put(Pods, "default", "a");
        var (watch, stop, run, _) = Start(api);
        await Until(() => watch.Synced, "the first list");
        await Until(() => api.Requests.Any(r => r.StartsWith("WATCH", StringComparison.Ordinal)), "the watch");
        api.Inject(line);
        api.Put(Pods, "default", "b");
        await Until(() => watch.Snapshot().ContainsKey("default/b"), "the event after the bad one");
        SameAsServer(api, watch);
        Assert.False(run.IsCompleted, "the list/watch must keep running");
        await stop.CancelAsync();
        await run;
    }
}
