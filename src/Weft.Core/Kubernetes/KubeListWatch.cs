using System.Net;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging;

namespace Weft.Kubernetes;

/// <summary>How a list/watch pages, waits and backs off.</summary>
/// <param name="PageSize">Items per list page (`limit`); the rest follows with `continue`.</param>
/// <param name="WatchTimeout">`timeoutSeconds` of each watch: the server ends the stream, the watch resumes from the last version.</param>
/// <param name="IdleTimeout">A stream silent this long is dead (a half-open connection never ends by itself); bookmarks keep a live one talking.</param>
public sealed record KubeWatchOptions(int PageSize = 500, TimeSpan? WatchTimeout = null, TimeSpan? IdleTimeout = null, TimeSpan? MaxBackoff = null)
{
    public TimeSpan Watch => WatchTimeout ?? TimeSpan.FromMinutes(5);
    public TimeSpan Idle => IdleTimeout ?? TimeSpan.FromSeconds(90);
    public TimeSpan Backoff => MaxBackoff ?? TimeSpan.FromSeconds(30);
}

/// <summary>One change to the cache: ADDED, MODIFIED or DELETED, with the object (the last known one for DELETED).</summary>
public sealed record KubeChange(string Type, string Key, JsonObject Object);

/// <summary>The API server said 410 Gone: the version watched from (or a list's continue token) has been compacted.</summary>
public sealed class KubeGoneException(string message) : Exception(message);

/// <summary>
/// A list/watch of one collection (`/api/v1/pods`, `/apis/networking.k8s.io/v1/networkpolicies`) into a cache keyed
/// by namespace/name, over a plain HttpClient: KubernetesClient.Aot has no watch (its `watch: true` returns an empty
/// list under AOT), so the watch is read here as the API server writes it, one JSON event per line. Lists page with
/// limit/continue; watches ask for bookmarks and resume from the last version seen; 410 Gone lists again (and reports
/// what vanished meanwhile as DELETED); a stream silent past the idle limit is dropped and resumed; failures back off
/// exponentially. <see cref="Synced"/> turns true only after the first complete list.
/// </summary>
/// <param name="server">The API server's base address when <paramref name="http"/> has none (KubernetesClient's does not).</param>
public sealed class KubeListWatch(HttpClient http, string path, KubeWatchOptions? options = null, ILogger? log = null,
    Func<HttpRequestMessage, CancellationToken, Task>? authorize = null, Uri? server = null)
{
    private readonly KubeWatchOptions _options = options ?? new KubeWatchOptions();
    private readonly Lock _lock = new();
    private Dictionary<string, JsonObject> _items = new(StringComparer.Ordinal);
    private volatile bool _synced;

    public string Path => path;
    public bool Synced => _synced;
    /// <summary>The version the cache is at (the last list's, then each event's and bookmark's).</summary>
    public string? ResourceVersion { get; private set; }
    /// <summary>Lists made so far (the first, and one after each 410).</summary>
    public int Lists { get; private set; }

    /// <summary>Called for every change, on the watch's thread, after the cache has it.</summary>
    public event Action<KubeChange>? Changed;
    /// <summary>Called after each complete list (the first one makes the cache synced).</summary>
    public event Action? Listed;

    public IReadOnlyDictionary<string, JsonObject> Snapshot()
    {
        lock (_lock) return new Dictionary<string, JsonObject>(_items, StringComparer.Ordinal);
    }

    public async Task RunAsync(CancellationToken ct)
    {
        var backoff = TimeSpan.FromMilliseconds(200);
        while (!ct.IsCancellationRequested)
        {
            try
            {
                if (ResourceVersion is null) await ListAsync(ct).ConfigureAwait(false);
                await WatchAsync(ct).ConfigureAwait(false);
                backoff = TimeSpan.FromMilliseconds(200);
            }
            catch (Exception) when (ct.IsCancellationRequested)
            {
                return; // stopped
            }
            catch (KubeGoneException e)
            {
                log?.LogInformation("{Path}: {Error}; listing again", path, e.Message);
                ResourceVersion = null;
            }
            catch (Exception e) when (e is HttpRequestException or IOException or JsonException or TimeoutException or OperationCanceledException or InvalidDataException)
            {
                log?.LogWarning("{Path}: {Error}; retrying in {Delay} ms", path, e.Message, (int)backoff.TotalMilliseconds);
                try { await Task.Delay(backoff, ct).ConfigureAwait(false); }
                catch (OperationCanceledException) { return; }
                backoff = TimeSpan.FromTicks(Math.Min(backoff.Ticks * 2, _options.Backoff.Ticks));
            }
        }
    }

    /// <summary>A complete, consistent list (every page at the first page's version); the cache is replaced by it.</summary>
    private async Task ListAsync(CancellationToken ct)
    {
        var items = new Dictionary<string, JsonObject>(StringComparer.Ordinal);
        string? version = null, token = null;
        do
        {
            var query = $"?limit={_options.PageSize}" + (token is null ? "" : "&continue=" + Uri.EscapeDataString(token));
            using var response = await SendAsync(path + query, HttpCompletionOption.ResponseContentRead, ct).ConfigureAwait(false);
            var list = JsonNode.Parse(await response.Content.ReadAsStringAsync(ct).ConfigureAwait(false)) as JsonObject
                       ?? throw new InvalidDataException($"{path}: the list is not a JSON object");
            version ??= list["metadata"]?["resourceVersion"]?.GetValue<string>();
            token = list["metadata"]?["continue"]?.GetValue<string>() is { Length: > 0 } next ? next : null;
            foreach (var item in list["items"]?.AsArray() ?? [])
                if (item is JsonObject o) items[KeyOf(o)] = o;
        } while (token is not null);

        var changes = new List<KubeChange>();
        lock (_lock)
        {
            foreach (var (key, o) in items)
                if (!_items.TryGetValue(key, out var had)) changes.Add(new KubeChange("ADDED", key, o));
                else if (VersionOf(had) != VersionOf(o)) changes.Add(new KubeChange("MODIFIED", key, o));
            foreach (var (key, o) in _items)
                if (!items.ContainsKey(key)) changes.Add(new KubeChange("DELETED", key, o));
            _items = items;
        }
        ResourceVersion = version ?? throw new InvalidDataException($"{path}: the list has no metadata.resourceVersion");
        Lists++;
        _synced = true;
        foreach (var c in changes) Changed?.Invoke(c);
        Listed?.Invoke();
    }

    private async Task WatchAsync(CancellationToken ct)
    {
        var query = $"?watch=1&allowWatchBookmarks=true&resourceVersion={Uri.EscapeDataString(ResourceVersion!)}&timeoutSeconds={(int)_options.Watch.TotalSeconds}";
        using var idle = CancellationTokenSource.CreateLinkedTokenSource(ct);
        idle.CancelAfter(_options.Idle);
        using var response = await SendAsync(path + query, HttpCompletionOption.ResponseHeadersRead, idle.Token).ConfigureAwait(false);
        using var stream = await response.Content.ReadAsStreamAsync(idle.Token).ConfigureAwait(false);
        using var reader = new StreamReader(stream);
        while (true)
        {
            string? line;
            try { line = await reader.ReadLineAsync(idle.Token).ConfigureAwait(false); }
            catch (OperationCanceledException) when (!ct.IsCancellationRequested)
            {
                throw new TimeoutException($"watch of {path} silent for {_options.Idle.TotalSeconds:0} s; resuming");
            }
            if (line is null) return; // the server ended the watch (timeoutSeconds): resume from where it stopped
            if (line.Length == 0) continue;
            idle.CancelAfter(_options.Idle);
            Apply(JsonNode.Parse(line) as JsonObject ?? throw new InvalidDataException($"{path}: a watch event is not a JSON object"));
        }
    }

    private void Apply(JsonObject e)
    {
        var type = e["type"]?.GetValue<string>() ?? throw new InvalidDataException($"{path}: a watch event without a type");
        var o = e["object"] as JsonObject ?? throw new InvalidDataException($"{path}: a {type} event without an object");
        switch (type)
        {
            case "BOOKMARK":
                ResourceVersion = VersionOf(o) ?? ResourceVersion;
                return;
            case "ERROR":
                var code = o["code"]?.GetValue<int>();
                var message = o["message"]?.GetValue<string>() ?? "watch error";
                if (code == (int)HttpStatusCode.Gone) throw new KubeGoneException(message);
                throw new InvalidDataException($"{path}: watch error {code}: {message}");
            case "ADDED" or "MODIFIED" or "DELETED":
                var key = KeyOf(o);
                lock (_lock)
                {
                    if (type == "DELETED") _items.Remove(key);
                    else _items[key] = o;
                }
                ResourceVersion = VersionOf(o) ?? ResourceVersion;
                Changed?.Invoke(new KubeChange(type, key, o));
                return;
            default:
                throw new InvalidDataException($"{path}: unknown watch event type '{type}'");
        }
    }

    private async Task<HttpResponseMessage> SendAsync(string pathAndQuery, HttpCompletionOption completion, CancellationToken ct)
    {
        using var request = new HttpRequestMessage(HttpMethod.Get, server is null ? new Uri(pathAndQuery, UriKind.Relative) : new Uri(server, pathAndQuery));
        request.Headers.Accept.ParseAdd("application/json");
        if (authorize is not null) await authorize(request, ct).ConfigureAwait(false);
        var response = await http.SendAsync(request, completion, ct).ConfigureAwait(false);
        if (response.IsSuccessStatusCode) return response;
        using (response)
        {
            var body = await response.Content.ReadAsStringAsync(ct).ConfigureAwait(false);
            if (response.StatusCode == HttpStatusCode.Gone) throw new KubeGoneException($"410 Gone: {body}");
            throw new HttpRequestException($"{pathAndQuery}: {(int)response.StatusCode} {response.ReasonPhrase}: {body}", null, response.StatusCode);
        }
    }

    private static string? VersionOf(JsonObject o) => o["metadata"]?["resourceVersion"]?.GetValue<string>();

    /// <summary>namespace/name, or the name alone for cluster-scoped objects.</summary>
    public static string KeyOf(JsonObject o)
    {
        var name = o["metadata"]?["name"]?.GetValue<string>() ?? throw new InvalidDataException("an object without metadata.name");
        return o["metadata"]?["namespace"]?.GetValue<string>() is { Length: > 0 } ns ? ns + "/" + name : name;
    }
}
