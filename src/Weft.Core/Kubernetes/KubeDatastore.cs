using System.Net;
using System.Runtime.CompilerServices;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Threading.Channels;
using Weft.Datastore;
using Weft.Model;
using Weft.Resources;

namespace Weft.Kubernetes;

/// <summary>How a key's value is an API object.</summary>
public enum KubeForm
{
    /// <summary>The value is the document itself (policies, tiers, Installations, Namespaces, Pods).</summary>
    Document,
    /// <summary>Weft's own record as the spec of an object of Weft's group, the key in an annotation.</summary>
    Record,
    /// <summary>Weft's IPPool record, a projectcalico.org/v3 IPPool document in the API.</summary>
    Pool,
    /// <summary>Weft's IPReservation record, a projectcalico.org/v3 IPReservation document in the API.</summary>
    Reservation,
}

/// <summary>Where the keys under one prefix live in the API server.</summary>
public sealed record KubeResource(string Prefix, string ApiVersion, string Kind, string Plural, bool Namespaced, KubeForm Form)
{
    public string CollectionPath => (ApiVersion.Contains('/', StringComparison.Ordinal) ? "/apis/" : "/api/") + ApiVersion + "/" + Plural;

    public string ObjectPath(string? ns, string name) =>
        (ApiVersion.Contains('/', StringComparison.Ordinal) ? "/apis/" : "/api/") + ApiVersion + (ns is null ? "" : "/namespaces/" + ns) + "/" + Plural + "/" + name;

    public string CreatePath(string? ns) =>
        (ApiVersion.Contains('/', StringComparison.Ordinal) ? "/apis/" : "/api/") + ApiVersion + (ns is null ? "" : "/namespaces/" + ns) + "/" + Plural;
}

/// <summary>
/// The `kubernetes` datastore (Calico's "Kubernetes API datastore"): every key is one API object. Users' kinds keep
/// their own API groups, so their files apply with plain kubectl: pools, reservations, Calico policies and tiers are
/// projectcalico.org/v3 objects (CRDs shipped in deploy/), Kubernetes NetworkPolicies, Namespaces and Pods come from
/// the API itself, Installations are operator.tigera.io/v1. Weft's own records (IPAM blocks, affinities, handles,
/// claims, endpoints, nodes) are objects of Weft's group <see cref="Group"/>, the record as their spec.
/// Revisions are resourceVersions (the API server's etcd revision). The API offers compare-and-swap of one object
/// and nothing more: a commit with one mutation is exactly that; one with several (a multi-document apply) goes object
/// by object, as kubectl apply does, and can stop part way. IPAM never asks for more than one (see IpamService).
/// Watches of several kinds run side by side: events of one kind come in order, kinds interleave.
/// </summary>
public sealed class KubeDatastore : IDatastore
{
    public const string Group = "weft.dev";
    public const string GroupVersion = Group + "/v1";
    public const string KeyAnnotation = Group + "/key";
    public const string EncodingAnnotation = Group + "/encoding";
    public const string CreatedAnnotation = Group + "/created-revision";

    public static readonly IReadOnlyList<KubeResource> Resources =
    [
        new(Keys.Pools, ResourceReader.CalicoApiVersion, "IPPool", "ippools", false, KubeForm.Pool),
        new(Keys.Reservations, ResourceReader.CalicoApiVersion, "IPReservation", "ipreservations", false, KubeForm.Reservation),
        new(Keys.Policies + "knp/", "networking.k8s.io/v1", "NetworkPolicy", "networkpolicies", true, KubeForm.Document),
        new(Keys.Policies + "np/", ResourceReader.CalicoApiVersion, "NetworkPolicy", "networkpolicies", true, KubeForm.Document),
        new(Keys.Policies + "gnp/", ResourceReader.CalicoApiVersion, "GlobalNetworkPolicy", "globalnetworkpolicies", false, KubeForm.Document),
        new(Keys.Tiers, ResourceReader.CalicoApiVersion, "Tier", "tiers", false, KubeForm.Document),
        new(Keys.Installations, "operator.tigera.io/v1", "Installation", "installations", false, KubeForm.Document),
        new(Keys.K8sNamespaces, "v1", "Namespace", "namespaces", false, KubeForm.Document),
        new(Keys.K8sPods, "v1", "Pod", "pods", true, KubeForm.Document),
        new(Keys.K8sNodes, "v1", "Node", "nodes", false, KubeForm.Document),
        new(Keys.Blocks, GroupVersion, "IPAMBlock", "ipamblocks", false, KubeForm.Record),
        new(Keys.Affinities, GroupVersion, "BlockAffinity", "blockaffinities", false, KubeForm.Record),
        new(Keys.Handles, GroupVersion, "IPAMHandle", "ipamhandles", false, KubeForm.Record),
        new(Keys.BlockClaims, GroupVersion, "IPAMClaim", "ipamclaims", false, KubeForm.Record),
        new(Keys.Endpoints, GroupVersion, "WorkloadEndpoint", "workloadendpoints", false, KubeForm.Record),
        new(Keys.Nodes, GroupVersion, "WeftNode", "weftnodes", false, KubeForm.Record),
    ];

    /// <summary>Every other key (none today under /weft/; tests use their own): a generic record kind.</summary>
    public static readonly KubeResource Other = new("", GroupVersion, "WeftRecord", "weftrecords", false, KubeForm.Record);

    private readonly HttpClient _http;
    private readonly Uri _server;
    private readonly Func<HttpRequestMessage, CancellationToken, Task>? _authorize;
    private readonly IDisposable? _owner;
    private readonly Dictionary<string, long> _created = new(StringComparer.Ordinal);
    private readonly Lock _lock = new();

    public KubeDatastore(KubeConnection connection) : this(connection.Http, connection.Server, connection.AuthorizeAsync, connection) { }

    /// <param name="owner">Disposed with the datastore (the connection the client belongs to).</param>
    public KubeDatastore(HttpClient http, Uri server, Func<HttpRequestMessage, CancellationToken, Task>? authorize = null, IDisposable? owner = null)
    {
        _http = http;
        _server = server;
        _authorize = authorize;
        _owner = owner;
    }

    public string Describe => "kubernetes (" + _server + ")";

    /// <summary>Objects that could not be read as Weft's records (a pool a user wrote wrong with kubectl), with why; left out of reads.</summary>
    public IReadOnlyList<string> Refused { get { lock (_lock) return [.. _refused]; } }
    private readonly List<string> _refused = [];

    public static KubeResource ResourceFor(string key)
    {
        KubeResource? best = null;
        foreach (var r in Resources)
            if (key.StartsWith(r.Prefix, StringComparison.Ordinal) && (best is null || r.Prefix.Length > best.Prefix.Length)) best = r;
        return best ?? Other;
    }

    /// <summary>The kinds that can hold keys under <paramref name="prefix"/>.</summary>
    private static List<KubeResource> ResourcesUnder(string prefix)
    {
        var inside = ResourceFor(prefix);
        if (!ReferenceEquals(inside, Other)) return [inside];
        return [.. Resources.Where(r => r.Prefix.StartsWith(prefix, StringComparison.Ordinal)), Other];
    }

    public async ValueTask<KeyValue?> GetAsync(string key, CancellationToken ct = default)
    {
        var r = ResourceFor(key);
        var (ns, name) = NameOf(r, key);
        using var response = await SendAsync(HttpMethod.Get, r.ObjectPath(ns, name), null, ct).ConfigureAwait(false);
        if (response.StatusCode == HttpStatusCode.NotFound) return null;
        var o = await ReadObjectAsync(response, ct).ConfigureAwait(false);
        return ToKeyValue(r, o);
    }

    public async ValueTask<RangeResult> ListAsync(string prefix, CancellationToken ct = default)
    {
        var items = new List<KeyValue>();
        long? revision = null;
        foreach (var r in ResourcesUnder(prefix))
        {
            var version = await ListObjectsAsync(r, o =>
            {
                if (ToKeyValue(r, o) is { } kv && kv.Key.StartsWith(prefix, StringComparison.Ordinal)) items.Add(kv);
            }, ct).ConfigureAwait(false);
            // The lowest: a watch from it replays what a later list already holds (harmless) and misses nothing.
            revision = revision is null ? version : Math.Min(revision.Value, version);
        }
        items.Sort((a, b) => string.CompareOrdinal(a.Key, b.Key));
        return new RangeResult(items, revision ?? 0);
    }

    public async ValueTask<TxnResult> CommitAsync(IReadOnlyList<Precondition> preconditions, IReadOnlyList<Mutation> mutations, CancellationToken ct = default)
    {
        var expected = new Dictionary<string, long>(StringComparer.Ordinal);
        foreach (var p in preconditions) expected[p.Key] = p.ModRevision;
        // Guards on keys nothing writes are checked first (not atomically: the API has no multi-object transaction).
        foreach (var p in preconditions.Where(p => !mutations.Any(m => m.Key == p.Key)))
            if (((await GetAsync(p.Key, ct).ConfigureAwait(false))?.ModRevision ?? 0) != p.ModRevision)
                return new TxnResult(false, await RevisionAsync(ct).ConfigureAwait(false));
        long revision = 0;
        foreach (var m in mutations)
        {
            long? want = expected.TryGetValue(m.Key, out var e) ? e : null;
            var done = m.Value is null ? await DeleteAsync(m.Key, want, ct).ConfigureAwait(false) : await PutAsync(m.Key, m.Value, want, ct).ConfigureAwait(false);
            if (done is null) return new TxnResult(false, await RevisionAsync(ct).ConfigureAwait(false));
            revision = done.Value;
        }
        return new TxnResult(true, revision);
    }

    /// <summary>A create (<paramref name="want"/> 0), a compare-and-swap (N) or an upsert (null); the new revision, or null on conflict.</summary>
    private async Task<long?> PutAsync(string key, byte[] value, long? want, CancellationToken ct)
    {
        var r = ResourceFor(key);
        var (ns, name) = NameOf(r, key);
        for (var attempt = 0; attempt < 8; attempt++)
        {
            var current = want;
            if (current is null) current = (await GetAsync(key, ct).ConfigureAwait(false))?.ModRevision ?? 0;
            var o = ToObject(r, key, value, ns, name);
            HttpResponseMessage response;
            if (current == 0)
                response = await SendAsync(HttpMethod.Post, r.CreatePath(ns), o, ct).ConfigureAwait(false);
            else
            {
                o["metadata"]!["resourceVersion"] = current.Value.ToString(System.Globalization.CultureInfo.InvariantCulture);
                long created;
                lock (_lock) created = _created.GetValueOrDefault(key);
                if (created > 0) Annotations(o)[CreatedAnnotation] = created.ToString(System.Globalization.CultureInfo.InvariantCulture);
                response = await SendAsync(HttpMethod.Put, r.ObjectPath(ns, name), o, ct).ConfigureAwait(false);
            }
            using (response)
            {
                if (response.StatusCode is HttpStatusCode.Conflict or HttpStatusCode.NotFound)
                {
                    if (want is not null) return null;
                    continue; // an upsert raced another writer: read again
                }
                var stored = await ReadObjectAsync(response, ct).ConfigureAwait(false);
                var revision = VersionOf(stored);
                if (current == 0) lock (_lock) _created[key] = revision;
                return revision;
            }
        }
        return null;
    }

    private async Task<long?> DeleteAsync(string key, long? want, CancellationToken ct)
    {
        var r = ResourceFor(key);
        var (ns, name) = NameOf(r, key);
        if (want == 0) return await GetAsync(key, ct).ConfigureAwait(false) is null ? await RevisionAsync(ct).ConfigureAwait(false) : null;
        JsonObject? options = want is { } rv
            ? new JsonObject { ["kind"] = "DeleteOptions", ["apiVersion"] = "v1", ["preconditions"] = new JsonObject { ["resourceVersion"] = rv.ToString(System.Globalization.CultureInfo.InvariantCulture) } }
            : null;
        using var response = await SendAsync(HttpMethod.Delete, r.ObjectPath(ns, name), options, ct).ConfigureAwait(false);
        if (response.StatusCode == HttpStatusCode.NotFound) return want is null ? await RevisionAsync(ct).ConfigureAwait(false) : null;
        if (response.StatusCode == HttpStatusCode.Conflict) return null;
        lock (_lock) _created.Remove(key);
        var body = await ReadObjectAsync(response, ct).ConfigureAwait(false);
        return body["kind"]?.GetValue<string>() == "Status" ? await RevisionAsync(ct).ConfigureAwait(false) : VersionOf(body);
    }

    public async IAsyncEnumerable<WatchEvent> WatchAsync(string prefix, long afterRevision, [EnumeratorCancellation] CancellationToken ct = default)
    {
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var events = Channel.CreateUnbounded<WatchEvent>();
        var kinds = ResourcesUnder(prefix);
        var running = kinds.Select(r => Task.Run(() => WatchKindAsync(r, prefix, afterRevision, events.Writer, stop.Token), CancellationToken.None)).ToList();
        _ = Task.WhenAll(running).ContinueWith(t => events.Writer.TryComplete(t.Exception?.InnerExceptions.FirstOrDefault()), TaskScheduler.Default);
        try
        {
            while (true)
            {
                WatchEvent e;
                try
                {
                    if (!await events.Reader.WaitToReadAsync(ct).ConfigureAwait(false)) yield break;
                    if (!events.Reader.TryRead(out e!)) continue;
                }
                catch (OperationCanceledException) { yield break; }
                yield return e;
            }
        }
        finally
        {
            await stop.CancelAsync().ConfigureAwait(false);
        }
    }

    /// <summary>One kind's watch from a revision, resumed after every stream end; 410 Gone ends it with <see cref="DatastoreCompactedException"/>.</summary>
    private async Task WatchKindAsync(KubeResource r, string prefix, long afterRevision, ChannelWriter<WatchEvent> output, CancellationToken ct)
    {
        var from = afterRevision;
        var backoff = TimeSpan.FromMilliseconds(100);
        while (!ct.IsCancellationRequested)
        {
            try
            {
                var query = $"?watch=1&allowWatchBookmarks=true&resourceVersion={from}&timeoutSeconds=300";
                using var response = await SendAsync(HttpMethod.Get, r.CollectionPath + query, null, ct, HttpCompletionOption.ResponseHeadersRead).ConfigureAwait(false);
                if (response.StatusCode == HttpStatusCode.Gone) throw new DatastoreCompactedException(from, from);
                await EnsureSuccessAsync(response, ct).ConfigureAwait(false);
                using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(ct).ConfigureAwait(false));
                while (await reader.ReadLineAsync(ct).ConfigureAwait(false) is { } line)
                {
                    if (line.Length == 0) continue;
                    var e = JsonNode.Parse(line) as JsonObject ?? throw new InvalidDataException("a watch event is not a JSON object");
                    var type = e["type"]?.GetValue<string>();
                    var o = e["object"] as JsonObject ?? throw new InvalidDataException($"a {type} event without an object");
                    switch (type)
                    {
                        case "BOOKMARK":
                            from = VersionOf(o);
                            continue;
                        case "ERROR":
                            if (o["code"]?.GetValue<int>() == (int)HttpStatusCode.Gone)
                                throw new DatastoreCompactedException(from, from);
                            throw new InvalidDataException($"{r.CollectionPath}: watch error: {o["message"]}");
                        case "ADDED" or "MODIFIED" or "DELETED":
                            from = VersionOf(o);
                            var key = KeyOf(r, o);
                            if (!key.StartsWith(prefix, StringComparison.Ordinal)) continue;
                            if (type == "DELETED") await output.WriteAsync(new WatchEvent(WatchEventKind.Delete, key, null, from), ct).ConfigureAwait(false);
                            else if (ToKeyValue(r, o) is { } kv) await output.WriteAsync(new WatchEvent(WatchEventKind.Put, key, kv.Value, from), ct).ConfigureAwait(false);
                            continue;
                        default:
                            throw new InvalidDataException($"{r.CollectionPath}: unknown watch event type '{type}'");
                    }
                }
                backoff = TimeSpan.FromMilliseconds(100); // the server ended the stream (timeoutSeconds): resume
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested) { return; }
            catch (Exception e) when (e is HttpRequestException or IOException or JsonException or InvalidDataException or DatastoreUnavailableException)
            {
                try { await Task.Delay(backoff, ct).ConfigureAwait(false); }
                catch (OperationCanceledException) { return; }
                backoff = TimeSpan.FromTicks(Math.Min(backoff.Ticks * 2, TimeSpan.FromSeconds(5).Ticks));
            }
        }
    }

    /// <summary>The API server's current revision: a list of one object of Weft's own kind answers it.</summary>
    public async ValueTask<long> RevisionAsync(CancellationToken ct = default)
    {
        using var response = await SendAsync(HttpMethod.Get, Other.CollectionPath + "?limit=1", null, ct).ConfigureAwait(false);
        var list = await ReadObjectAsync(response, ct).ConfigureAwait(false);
        return VersionOf(list);
    }

    /// <summary>The API server compacts its own history (every 5 minutes by default); nothing to do here.</summary>
    public ValueTask CompactAsync(long revision, CancellationToken ct = default) => ValueTask.CompletedTask;

    /// <summary>
    /// Every object of a kind, page by page, each handed to <paramref name="each"/> as its page arrives: only one page
    /// is ever held as a JSON tree (50,000 pods as one tree cost the agent hundreds of MB). Returns the list's version.
    /// </summary>
    private async Task<long> ListObjectsAsync(KubeResource r, Action<JsonObject> each, CancellationToken ct)
    {
        string? token = null;
        long? version = null;
        do
        {
            var query = "?limit=500" + (token is null ? "" : "&continue=" + Uri.EscapeDataString(token));
            using var response = await SendAsync(HttpMethod.Get, r.CollectionPath + query, null, ct).ConfigureAwait(false);
            var list = await ReadObjectAsync(response, ct).ConfigureAwait(false);
            version ??= VersionOf(list);
            token = list["metadata"]?["continue"]?.GetValue<string>() is { Length: > 0 } next ? next : null;
            foreach (var item in list["items"]?.AsArray() ?? []) if (item is JsonObject o) each(o);
        } while (token is not null);
        return version ?? 0;
    }

    // ---- keys, names and values ----

    /// <summary>The object's namespace and name for a key; Weft's records get a name that fits the API's rules.</summary>
    internal static (string? Namespace, string Name) NameOf(KubeResource r, string key)
    {
        var suffix = key[r.Prefix.Length..];
        if (r.Form == KubeForm.Record) return (null, RecordName(suffix));
        if (r.Namespaced)
        {
            var slash = suffix.IndexOf('/', StringComparison.Ordinal);
            if (slash <= 0 || slash == suffix.Length - 1 || suffix.IndexOf('/', slash + 1) >= 0)
                throw new ArgumentException($"key {key}: a {r.Kind} key is {r.Prefix}NAMESPACE/NAME");
            return (suffix[..slash], suffix[(slash + 1)..]);
        }
        if (suffix.Length == 0 || suffix.Contains('/', StringComparison.Ordinal)) throw new ArgumentException($"key {key}: a {r.Kind} key is {r.Prefix}NAME");
        return (null, suffix);
    }

    /// <summary>
    /// A DNS-1123 subdomain for any key suffix: lower-cased, other characters as '-', and a hash of the exact suffix
    /// so that suffixes differing only in case or punctuation never share a name. The key itself is an annotation.
    /// </summary>
    internal static string RecordName(string suffix)
    {
        var sb = new StringBuilder();
        foreach (var c in suffix.ToLowerInvariant())
            sb.Append(char.IsAsciiLetterLower(c) || char.IsAsciiDigit(c) || c == '.' ? c : '-');
        var readable = sb.ToString().Replace("..", "-", StringComparison.Ordinal).Trim('-', '.');
        if (readable.Length > 200) readable = readable[..200].Trim('-', '.');
        var hash = 2166136261u;
        foreach (var b in Encoding.UTF8.GetBytes(suffix)) hash = (hash ^ b) * 16777619u;
        return (readable.Length == 0 ? "r" : readable) + "-" + hash.ToString("x8", System.Globalization.CultureInfo.InvariantCulture);
    }

    private static string KeyOf(KubeResource r, JsonObject o)
    {
        var meta = o["metadata"] as JsonObject ?? throw new InvalidDataException("an object without metadata");
        var name = meta["name"]?.GetValue<string>() ?? throw new InvalidDataException("an object without metadata.name");
        if (r.Form == KubeForm.Record) return meta["annotations"]?[KeyAnnotation]?.GetValue<string>() ?? r.Prefix + name;
        return r.Prefix + (r.Namespaced ? meta["namespace"]?.GetValue<string>() + "/" : "") + name;
    }

    private static JsonObject Annotations(JsonObject o)
    {
        var meta = (JsonObject)o["metadata"]!;
        if (meta["annotations"] is not JsonObject a) meta["annotations"] = a = new JsonObject();
        return a;
    }

    /// <summary>The object a key's value is stored as (no resourceVersion: the caller adds it for a compare-and-swap).</summary>
    private static JsonObject ToObject(KubeResource r, string key, byte[] value, string? ns, string name)
    {
        JsonObject o;
        switch (r.Form)
        {
            case KubeForm.Record:
                JsonObject spec;
                var encoding = (string?)null;
                try { spec = JsonNode.Parse(value) as JsonObject ?? throw new JsonException(); }
                catch (JsonException)
                {
                    spec = new JsonObject { ["data"] = Convert.ToBase64String(value) };
                    encoding = "base64";
                }
                o = new JsonObject { ["apiVersion"] = r.ApiVersion, ["kind"] = r.Kind, ["metadata"] = new JsonObject { ["name"] = name }, ["spec"] = spec };
                Annotations(o)[KeyAnnotation] = key;
                if (encoding is not null) Annotations(o)[EncodingAnnotation] = encoding;
                return o;
            case KubeForm.Pool:
                o = CalicoDocuments.ToDocument(Codec.Decode(value, ModelJson.Default.IPPool, key));
                break;
            case KubeForm.Reservation:
                o = CalicoDocuments.ToDocument(Codec.Decode(value, ModelJson.Default.IPReservation, key));
                break;
            default:
                o = (JsonNode.Parse(value) as JsonObject ?? throw new ArgumentException($"key {key}: a {r.Kind} value must be a JSON document")).DeepClone().AsObject();
                o["apiVersion"] ??= r.ApiVersion;
                o["kind"] ??= r.Kind;
                break;
        }
        if (o["metadata"] is not JsonObject meta) o["metadata"] = meta = new JsonObject();
        meta["name"] = name;
        if (ns is not null) meta["namespace"] = ns;
        meta.Remove("resourceVersion");
        meta.Remove("creationTimestamp");
        return o;
    }

    /// <summary>The key and value an object stands for; null (and noted in <see cref="Refused"/>) when Weft cannot read it.</summary>
    private KeyValue? ToKeyValue(KubeResource r, JsonObject o)
    {
        var key = KeyOf(r, o);
        var modified = VersionOf(o);
        var meta = (JsonObject)o["metadata"]!;
        var created = long.TryParse(meta["annotations"]?[CreatedAnnotation]?.GetValue<string>(), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var c) ? c : 0;
        lock (_lock)
        {
            if (created > 0) _created[key] = created;
            else created = _created.TryGetValue(key, out var known) ? known : modified;
        }
        byte[] value;
        try
        {
            value = r.Form switch
            {
                KubeForm.Record => meta["annotations"]?[EncodingAnnotation]?.GetValue<string>() == "base64"
                    ? Convert.FromBase64String(o["spec"]?["data"]?.GetValue<string>() ?? "")
                    : Encoding.UTF8.GetBytes((o["spec"] ?? new JsonObject()).ToJsonString()),
                KubeForm.Pool => ReadPool(o),
                KubeForm.Reservation => ReadReservation(o),
                _ when r.Prefix == Keys.K8sPods => Encoding.UTF8.GetBytes(PodAsRead(o).ToJsonString()),
                _ => Encoding.UTF8.GetBytes(AsApplied(o).ToJsonString()),
            };
        }
        catch (Exception e) when (e is ResourceException or FormatException or JsonException or InvalidOperationException)
        {
            lock (_lock)
            {
                var why = $"{r.Kind} {key[r.Prefix.Length..]}: {e.Message}";
                if (!_refused.Contains(why)) _refused.Add(why);
            }
            return null;
        }
        return new KeyValue(key, value, created, modified);
    }

    private static byte[] ReadPool(JsonObject o)
    {
        var res = (IPPoolResource)ResourceReader.Read(AsApplied(o), new DocumentSource("kubernetes", 0));
        var p = res.Pool;
        var pool = new IPPool
        {
            Name = p.Name, Cidr = p.Cidr, BlockSize = p.BlockSize, NodeSelector = p.NodeSelector, Disabled = p.Disabled,
            NatOutgoing = p.NatOutgoing, IpipMode = p.IpipMode, VxlanMode = p.VxlanMode, AllowedUses = p.AllowedUses,
            DisableBGPExport = p.DisableBGPExport, AssignmentMode = p.AssignmentMode,
            CreationTimestamp = o["metadata"]?["creationTimestamp"]?.GetValue<string>() ?? p.CreationTimestamp,
        };
        return Codec.Encode(pool, ModelJson.Default.IPPool);
    }

    private static byte[] ReadReservation(JsonObject o) =>
        Codec.Encode(((IPReservationResource)ResourceReader.Read(AsApplied(o), new DocumentSource("kubernetes", 0))).Reservation, ModelJson.Default.IPReservation);

    /// <summary>The document without what the API server adds to every object (versions, uid, timestamps, field managers).</summary>
    /// <summary>
    /// A Pod as Weft reads it. Pods are the API's largest objects (volumes, env, resources, statuses: often 5-15 KB)
    /// and every agent keeps every pod of the cluster, so only what Weft reads is kept: name, namespace, labels,
    /// Calico's IPAM annotations and the deletion mark; the node, host networking and named ports; phase and IPs.
    /// </summary>
    internal static JsonObject PodAsRead(JsonObject o)
    {
        static JsonNode? Copy(JsonNode? n) => n?.DeepClone();
        var meta = o["metadata"] as JsonObject;
        var slimMeta = new JsonObject { ["name"] = Copy(meta?["name"]), ["namespace"] = Copy(meta?["namespace"]) };
        if (meta?["labels"] is JsonObject labels) slimMeta["labels"] = labels.DeepClone();
        if (meta?["deletionTimestamp"] is { } deleting) slimMeta["deletionTimestamp"] = deleting.DeepClone();
        if (meta?["annotations"] is JsonObject annotations)
        {
            var kept = new JsonObject();
            foreach (var (k, v) in annotations)
                if (k.StartsWith("cni.projectcalico.org/", StringComparison.Ordinal)) kept[k] = Copy(v);
            if (kept.Count > 0) slimMeta["annotations"] = kept;
        }
        var slim = new JsonObject { ["apiVersion"] = Copy(o["apiVersion"]) ?? "v1", ["kind"] = Copy(o["kind"]) ?? "Pod", ["metadata"] = slimMeta };
        if (o["spec"] is JsonObject spec)
        {
            var slimSpec = new JsonObject();
            foreach (var f in new[] { "nodeName", "hostNetwork" })
                if (spec[f] is { } v) slimSpec[f] = v.DeepClone();
            // Named ports (NetworkPolicy's port names) come from the containers.
            if (spec["containers"] is JsonArray containers)
                slimSpec["containers"] = new JsonArray([.. containers.Select(c => (JsonNode?)new JsonObject
                {
                    ["name"] = Copy(c?["name"]),
                    ["ports"] = c?["ports"] is JsonArray ports ? ports.DeepClone() : new JsonArray(),
                })]);
            slim["spec"] = slimSpec;
        }
        if (o["status"] is JsonObject status)
        {
            var slimStatus = new JsonObject();
            foreach (var f in new[] { "phase", "podIP", "podIPs" })
                if (status[f] is { } v) slimStatus[f] = v.DeepClone();
            slim["status"] = slimStatus;
        }
        return slim;
    }

    private static JsonObject AsApplied(JsonObject o)
    {
        var doc = o.DeepClone().AsObject();
        if (doc["metadata"] is JsonObject meta)
        {
            foreach (var f in new[] { "resourceVersion", "uid", "creationTimestamp", "generation", "managedFields", "selfLink" }) meta.Remove(f);
            if (meta["annotations"] is JsonObject a)
            {
                a.Remove("kubectl.kubernetes.io/last-applied-configuration");
                a.Remove(CreatedAnnotation);
                if (a.Count == 0) meta.Remove("annotations");
            }
        }
        return doc;
    }

    private static long VersionOf(JsonObject o) =>
        long.TryParse(o["metadata"]?["resourceVersion"]?.GetValue<string>(), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var v)
            ? v : throw new InvalidDataException("an object or list without a numeric metadata.resourceVersion");

    // ---- HTTP ----

    /// <summary>Any API object by path (`/apis/apps/v1/namespaces/NS/daemonsets/NAME`); null when it does not exist.</summary>
    public async Task<JsonObject?> GetObjectAsync(string path, CancellationToken ct = default)
    {
        using var response = await SendAsync(HttpMethod.Get, path, null, ct).ConfigureAwait(false);
        if (response.StatusCode == HttpStatusCode.NotFound) return null;
        return await ReadObjectAsync(response, ct).ConfigureAwait(false);
    }

    private async Task<HttpResponseMessage> SendAsync(HttpMethod method, string pathAndQuery, JsonObject? body, CancellationToken ct, HttpCompletionOption completion = HttpCompletionOption.ResponseContentRead)
    {
        using var request = new HttpRequestMessage(method, new Uri(_server, pathAndQuery));
        request.Headers.Accept.ParseAdd("application/json");
        if (body is not null) request.Content = new StringContent(body.ToJsonString(), Encoding.UTF8, "application/json");
        if (_authorize is not null) await _authorize(request, ct).ConfigureAwait(false);
        HttpResponseMessage response;
        try { response = await _http.SendAsync(request, completion, ct).ConfigureAwait(false); }
        catch (HttpRequestException e) { throw new DatastoreUnavailableException($"kubernetes API server {_server}: {e.Message}", e); }
        if (response.StatusCode is HttpStatusCode.Unauthorized or HttpStatusCode.Forbidden)
        {
            using (response)
            {
                var text = await response.Content.ReadAsStringAsync(ct).ConfigureAwait(false);
                // The API server's Status message says who may not do what; the raw body when it is not one.
                string message;
                try { message = (JsonNode.Parse(text) as JsonObject)?["message"]?.GetValue<string>() ?? text; }
                catch (JsonException) { message = text; }
                throw new UnauthorizedAccessException($"kubernetes API server: {(int)response.StatusCode} on {method} {pathAndQuery}: {message} (the ClusterRole in deploy/weft.yaml grants what Weft needs)");
            }
        }
        if ((int)response.StatusCode >= 500)
        {
            using (response) throw new DatastoreUnavailableException($"kubernetes API server: {(int)response.StatusCode} on {method} {pathAndQuery}");
        }
        return response;
    }

    private static async Task EnsureSuccessAsync(HttpResponseMessage response, CancellationToken ct)
    {
        if (response.IsSuccessStatusCode) return;
        var text = await response.Content.ReadAsStringAsync(ct).ConfigureAwait(false);
        throw new InvalidDataException($"kubernetes API server: {(int)response.StatusCode}: {text}");
    }

    private static async Task<JsonObject> ReadObjectAsync(HttpResponseMessage response, CancellationToken ct)
    {
        await EnsureSuccessAsync(response, ct).ConfigureAwait(false);
        var text = await response.Content.ReadAsStringAsync(ct).ConfigureAwait(false);
        return JsonNode.Parse(text) as JsonObject ?? throw new InvalidDataException("the API server's answer is not a JSON object");
    }

    public void Dispose() => _owner?.Dispose();
}
