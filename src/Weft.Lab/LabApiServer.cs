using System.Text;
using System.Text.Json.Nodes;
using System.Threading.Channels;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;

namespace Weft.Lab;

/// <summary>
/// A small Kubernetes API server (Kestrel, objects in memory) with the wire behaviour clients meet: discovery, OpenAPI
/// v3 naming fieldValidation, CRDs served once created (and custom resources checked against their schemas), objects
/// with resourceVersions (404, 409 AlreadyExists/Conflict, merge PATCH), lists paged with limit/continue at one
/// consistent version, watches as JSON lines from a resourceVersion (replayed from its event log, then live),
/// bookmarks, 410 Gone for versions older than a compaction. It is the control plane of `lab up --datastore
/// kubernetes` and what the tests drive the kubernetes datastore, kubectl and list/watch against; tests can also
/// script it (put and delete objects directly, compact, drop or silence streams, inject bad lines).
/// No real kube-apiserver runs on the machine Weft is built on; this is not one (no admission, no RBAC, no
/// strategic merge for built-in kinds, no garbage collection).
/// </summary>
public sealed class LabApiServer : IAsyncDisposable
{
    private readonly WebApplication _app;
    private readonly Lock _lock = new();
    private readonly Dictionary<string, SortedDictionary<string, JsonObject>> _collections = new(StringComparer.Ordinal);
    private readonly List<(long Version, string Path, string Type, JsonObject Object)> _log = [];
    private readonly List<Watcher> _watchers = [];
    private long _version = 100, _compacted;

    private sealed record Watcher(string Path, Channel<string> Lines, CancellationTokenSource Drop);
    // Drop is linked to the request: a client that goes away ends its watcher too.

    public Uri BaseAddress { get; }
    /// <summary>When set, every request must carry "Authorization: Bearer" with it (401 otherwise).</summary>
    public string? RequiredToken { get; set; }
    /// <summary>Requests served, as "LIST path?query" or "WATCH path?query".</summary>
    public List<string> Requests { get; } = [];
    /// <summary>While true, watches get no events and no bookmarks (a half-open connection, as the client sees it).</summary>
    public bool Silent { get => Volatile.Read(ref _silent); set => Volatile.Write(ref _silent, value); }
    private bool _silent;

    /// <param name="netns">A network namespace to serve in (on its 127.0.0.1), for clients that run there (the plugin in a node namespace).</param>
    /// <param name="listen">Where to listen (the lab's control plane address); default 127.0.0.1 on a free port.</param>
    /// <param name="certificate">Serve HTTPS with this certificate (kubectl sends no bearer token over plain HTTP).</param>
    public LabApiServer(string? netns = null, System.Net.IPEndPoint? listen = null, System.Security.Cryptography.X509Certificates.X509Certificate2? certificate = null)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        if (listen is not null && certificate is not null)
            builder.WebHost.ConfigureKestrel(o => o.Listen(listen, l => l.UseHttps(certificate)));
        else if (listen is not null) builder.WebHost.UseUrls($"http://{listen}");
        else if (netns is null) builder.WebHost.UseUrls("http://127.0.0.1:0");
        else
        {
            // The listening socket is made inside the namespace and handed to Kestrel.
            _listener = Weft.Netlink.NetNs.Run("/var/run/netns/" + netns, () =>
            {
                var socket = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.InterNetwork, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Tcp);
                socket.Bind(new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, 0));
                socket.Listen(128);
                return socket;
            });
            builder.WebHost.ConfigureKestrel(o => o.ListenHandle((ulong)_listener.Handle));
        }
        _app = builder.Build();
        _app.Run(ServeAsync);
        _app.StartAsync().GetAwaiter().GetResult();
        BaseAddress = listen is not null && certificate is not null ? new Uri($"https://{listen}/")
            : _listener is null ? new Uri(_app.Urls.First()) : new Uri($"http://127.0.0.1:{((System.Net.IPEndPoint)_listener.LocalEndPoint!).Port}/");
        Netns = netns;
    }

    private readonly System.Net.Sockets.Socket? _listener;

    /// <summary>The namespace it serves in, or null (the test's own).</summary>
    public string? Netns { get; }

    /// <summary>An HttpClient whose connections are made in the server's namespace.</summary>
    public HttpClient Client() => Netns is not { } ns ? new HttpClient() : new HttpClient(new SocketsHttpHandler
    {
        ConnectCallback = async (context, ct) =>
        {
            var socket = Weft.Netlink.NetNs.Run("/var/run/netns/" + ns, () => new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.InterNetwork, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Tcp));
            try { await socket.ConnectAsync(context.DnsEndPoint, ct).ConfigureAwait(false); }
            catch { socket.Dispose(); throw; }
            return new System.Net.Sockets.NetworkStream(socket, ownsSocket: true);
        },
    });

    /// <summary>A kubeconfig for this server with <paramref name="token"/> (default <see cref="RequiredToken"/>), written to <paramref name="path"/>.</summary>
    public string WriteKubeconfig(string path, string? token = null)
    {
        var user = $"{{token: \"{token ?? RequiredToken ?? "any"}\"}}"; // KubernetesClient refuses a user without credentials
        File.WriteAllText(path, $"apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster: {{server: \"{BaseAddress.ToString().TrimEnd('/')}\"}}\n" +
                                $"users:\n- name: weft\n  user: {user}\ncontexts:\n- name: weft@test\n  context: {{cluster: test, user: weft}}\ncurrent-context: weft@test\n");
        return path;
    }

    public long Version { get { lock (_lock) return _version; } }

    public void Put(string path, string ns, string name, JsonObject? extra = null)
    {
        lock (_lock)
        {
            var items = Collection(path);
            var key = ns.Length > 0 ? ns + "/" + name : name;
            var type = items.ContainsKey(key) ? "MODIFIED" : "ADDED";
            var metadata = new JsonObject { ["name"] = name, ["resourceVersion"] = (++_version).ToString(System.Globalization.CultureInfo.InvariantCulture) };
            if (ns.Length > 0) metadata["namespace"] = ns;
            var o = new JsonObject { ["metadata"] = metadata };
            foreach (var (k, v) in extra ?? []) if (k != "metadata") o[k] = v?.DeepClone();
            items[key] = o;
            if (path == "/apis/apiextensions.k8s.io/v1/customresourcedefinitions") Register(o);
            Record(path, type, o);
        }
    }

    public void Delete(string path, string key)
    {
        lock (_lock)
        {
            if (!Collection(path).Remove(key, out var o)) return;
            var gone = (JsonObject)o.DeepClone();
            gone["metadata"]!["resourceVersion"] = (++_version).ToString(System.Globalization.CultureInfo.InvariantCulture);
            Record(path, "DELETED", gone);
        }
    }

    /// <summary>Forgets history up to now: watches and continue tokens from older versions get 410 Gone.</summary>
    public void Compact()
    {
        lock (_lock)
        {
            _compacted = _version;
            _log.Clear();
        }
    }

    /// <summary>Ends every open watch stream abruptly.</summary>
    public void DropStreams()
    {
        lock (_lock)
            foreach (var w in _watchers) w.Drop.Cancel();
    }

    /// <summary>Writes a raw line to every open watch (bad input for the client).</summary>
    public void Inject(string line)
    {
        lock (_lock)
            foreach (var w in _watchers) w.Lines.Writer.TryWrite(line + "\n");
    }

    public void Bookmark()
    {
        lock (_lock)
            foreach (var w in _watchers)
                w.Lines.Writer.TryWrite(Line("BOOKMARK", new JsonObject { ["metadata"] = new JsonObject { ["resourceVersion"] = _version.ToString(System.Globalization.CultureInfo.InvariantCulture) } }));
    }

    public IReadOnlyDictionary<string, JsonObject> Items(string path)
    {
        lock (_lock) return new Dictionary<string, JsonObject>(Collection(path), StringComparer.Ordinal);
    }

    private SortedDictionary<string, JsonObject> Collection(string path)
    {
        if (!_collections.TryGetValue(path, out var c)) _collections[path] = c = new(StringComparer.Ordinal);
        return c;
    }

    private void Record(string path, string type, JsonObject o)
    {
        _log.Add((_version, path, type, (JsonObject)o.DeepClone()));
        if (Silent) return;
        foreach (var w in _watchers.Where(w => w.Path == path)) w.Lines.Writer.TryWrite(Line(type, o));
    }

    private static string Line(string type, JsonObject o) => new JsonObject { ["type"] = type, ["object"] = o.DeepClone() }.ToJsonString() + "\n";

    private static string Status(int code, string reason, string message) => new JsonObject
    {
        ["kind"] = "Status", ["apiVersion"] = "v1", ["status"] = "Failure", ["message"] = message, ["reason"] = reason, ["code"] = code,
    }.ToJsonString();

    private async Task ServeAsync(HttpContext http)
    {
        var path = http.Request.Path.Value ?? "/";
        var q = http.Request.Query;
        var watch = q["watch"] is var wv && (wv == "1" || wv == "true");
        lock (Requests) Requests.Add($"{(watch ? "WATCH" : "LIST")} {path}{http.Request.QueryString}");
        http.Response.ContentType = "application/json";
        var bearer = http.Request.Headers.Authorization.ToString();
        var limited = _roles.FirstOrDefault(r => bearer == "Bearer " + r.Token);
        if (RequiredToken is { } token && bearer != "Bearer " + token && limited is null)
        {
            http.Response.StatusCode = 401;
            await http.Response.WriteAsync(Status(401, "Unauthorized", "Unauthorized")).ConfigureAwait(false);
            return;
        }
        if (http.Request.Method == "GET" && Discovery(path) is { } discovery)
        {
            lock (Requests) Requests[^1] = $"DISCOVER {path}";
            await Reply(http, discovery.Length == 0 ? 404 : 200, discovery.Length == 0 ? Status(404, "NotFound", "the server could not find the requested resource") : discovery).ConfigureAwait(false);
            return;
        }
        var target = Target(path);
        if (!Serves(target.Collection))
        {
            await Reply(http, 404, Status(404, "NotFound", "the server could not find the requested resource")).ConfigureAwait(false);
            return;
        }
        if (limited is not null && Forbidden(limited, http.Request.Method, target, watch) is { } forbidden)
        {
            lock (Requests) Requests[^1] = $"FORBIDDEN {http.Request.Method} {path}";
            lock (_lock) _forbidden.Add(forbidden);
            OnForbidden?.Invoke(forbidden);
            await Reply(http, 403, Status(403, "Forbidden", forbidden)).ConfigureAwait(false);
            return;
        }
        if (http.Request.Method != "GET" || target.Name is not null)
        {
            lock (Requests) Requests[^1] = $"{http.Request.Method} {path}{http.Request.QueryString}";
            await ObjectAsync(http, target).ConfigureAwait(false);
            return;
        }
        if (!watch)
        {
            await ListAsync(http, target.Collection, q, target.Namespace).ConfigureAwait(false);
            return;
        }
        path = target.Collection;
        var from = long.TryParse(q["resourceVersion"], out var rv) ? rv : 0;
        var timeout = int.TryParse(q["timeoutSeconds"], out var t) ? TimeSpan.FromSeconds(t) : TimeSpan.FromMinutes(5);
        Watcher watcher;
        lock (_lock)
        {
            watcher = new Watcher(path, Channel.CreateUnbounded<string>(), CancellationTokenSource.CreateLinkedTokenSource(http.RequestAborted));
            if (from < _compacted)
                watcher.Lines.Writer.TryWrite(Line("ERROR", JsonNode.Parse(Status(410, "Expired", $"too old resource version: {from} ({_compacted})"))!.AsObject()));
            else
                foreach (var e in _log.Where(e => e.Path == path && e.Version > from)) watcher.Lines.Writer.TryWrite(Line(e.Type, e.Object));
            _watchers.Add(watcher);
        }
        using var ended = CancellationTokenSource.CreateLinkedTokenSource(watcher.Drop.Token);
        ended.CancelAfter(timeout);
        try
        {
            await http.Response.StartAsync(ended.Token).ConfigureAwait(false);
            await foreach (var line in watcher.Lines.Reader.ReadAllAsync(ended.Token).ConfigureAwait(false))
            {
                await http.Response.WriteAsync(line, ended.Token).ConfigureAwait(false);
                await http.Response.Body.FlushAsync(ended.Token).ConfigureAwait(false);
                if (line.StartsWith("{\"type\":\"ERROR\"", StringComparison.Ordinal)) break;
            }
        }
        catch (OperationCanceledException)
        {
            // Dropped: the connection breaks mid-stream. Timed out (timeoutSeconds): the response ends normally.
            if (watcher.Drop.IsCancellationRequested && !http.RequestAborted.IsCancellationRequested) http.Abort();
        }
        finally
        {
            lock (_lock) _watchers.Remove(watcher);
            watcher.Drop.Dispose();
        }
    }

    /// <summary>Lists in progress: a continue token names the snapshot its first page was cut from (one version).</summary>
    private readonly Dictionary<long, (long Version, List<JsonObject> Items)> _snapshots = [];
    private long _nextSnapshot;

    /// <summary>A token whose requests are limited to a ClusterRole's rules (RBAC as the API server applies it, cluster scope).</summary>
    public sealed record RoleBinding(string Token, string User, IReadOnlyList<JsonObject> Rules);

    private readonly List<RoleBinding> _roles = [];
    private readonly List<string> _forbidden = [];

    /// <summary>Called with every refusal (the lab's server logs them).</summary>
    public Action<string>? OnForbidden { get; set; }

    /// <summary>Requests refused so far, as the API server words them.</summary>
    public IReadOnlyList<string> Forbidden() { lock (_lock) return [.. _forbidden]; }

    /// <summary>Requests with <paramref name="token"/> may do what <paramref name="clusterRole"/>'s rules allow, nothing more (403 otherwise).</summary>
    public void Bind(string token, string user, JsonObject clusterRole)
    {
        lock (_lock) _roles.Add(new RoleBinding(token, user, [.. clusterRole["rules"]!.AsArray().OfType<JsonObject>()]));
    }

    /// <summary>The ClusterRole deploy/weft.yaml gives the agent and the plugin.</summary>
    public static JsonObject WeftAgentRole() =>
        Manifest().Single(d => d["kind"]?.GetValue<string>() == "ClusterRole" && d["metadata"]?["name"]?.GetValue<string>() == "weft-agent");

    /// <summary>Why RBAC refuses the request (the API server's message), or null when a rule allows it.</summary>
    private string? Forbidden(RoleBinding role, string method, ApiTarget target, bool watch)
    {
        var verb = method switch
        {
            "GET" => target.Name is not null ? "get" : watch ? "watch" : "list",
            "POST" => "create", "PUT" => "update", "PATCH" => "patch", "DELETE" => "delete", _ => method.ToLowerInvariant(),
        };
        var parts = target.Collection.Trim('/').Split('/');
        var (group, plural) = parts[0] == "api" ? ("", parts[^1]) : (parts[1], parts[^1]);
        static bool Has(JsonObject rule, string field, string value) =>
            rule[field]?.AsArray().Any(v => v?.GetValue<string>() is { } x && (x == value || x == "*")) == true;
        // resourceNames narrows a rule to the objects it names (never matching a list or watch, as in Kubernetes).
        bool Named(JsonObject rule) => rule["resourceNames"] is not JsonArray names || target.Name is { } n && names.Any(v => v?.GetValue<string>() == n);
        if (role.Rules.Any(r => Has(r, "apiGroups", group) && Has(r, "resources", plural) && Has(r, "verbs", verb) && Named(r))) return null;
        var scope = target.Namespace is { } ns ? $"in the namespace \"{ns}\"" : "at the cluster scope";
        return $"{plural}{(group.Length == 0 ? "" : "." + group)} is forbidden: User \"{role.User}\" cannot {verb} resource \"{plural}\" in API group \"{group}\" {scope}";
    }

    /// <summary>A resource the server serves: built in, or from a CustomResourceDefinition created through it.</summary>
    public sealed record ApiResource(string Group, string Version, string Plural, string Kind, bool Namespaced)
    {
        public string GroupVersion => Group.Length == 0 ? Version : Group + "/" + Version;
    }

    private readonly List<ApiResource> _resources =
    [
        new("", "v1", "namespaces", "Namespace", false),
        new("", "v1", "pods", "Pod", true),
        new("", "v1", "nodes", "Node", false),
        new("", "v1", "configmaps", "ConfigMap", true),
        new("", "v1", "secrets", "Secret", true),
        new("", "v1", "serviceaccounts", "ServiceAccount", true),
        new("", "v1", "services", "Service", true),
        new("apps", "v1", "daemonsets", "DaemonSet", true),
        new("apps", "v1", "deployments", "Deployment", true),
        new("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", false),
        new("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", false),
        new("rbac.authorization.k8s.io", "v1", "roles", "Role", true),
        new("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", true),
        new("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", true),
        new("scheduling.k8s.io", "v1", "priorityclasses", "PriorityClass", false),
        new("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", false),
    ];

    public IReadOnlyList<ApiResource> Resources { get { lock (_lock) return [.. _resources]; } }

    /// <summary>Whether a collection path names a resource this server serves (built in, or a CRD created through it).</summary>
    private bool Serves(string collection)
    {
        lock (_lock) return _resources.Any(r => (r.Group.Length == 0 ? "/api/" : "/apis/") + r.GroupVersion + "/" + r.Plural == collection);
    }

    /// <summary>Discovery (/api, /apis, /api/v1, /apis/G/V) as kubectl reads it; "" for a discovery path that names nothing, null for other paths.</summary>
    private string? Discovery(string path)
    {
        var parts = path.Trim('/').Split('/', StringSplitOptions.RemoveEmptyEntries);
        lock (_lock)
        {
            if (parts is ["api"])
                return new JsonObject { ["kind"] = "APIVersions", ["versions"] = new JsonArray("v1"), ["serverAddressByClientCIDRs"] = new JsonArray() }.ToJsonString();
            if (parts is ["apis"])
            {
                var groups = new JsonArray();
                foreach (var g in _resources.Where(r => r.Group.Length > 0).GroupBy(r => r.Group))
                {
                    var versions = g.Select(r => r.Version).Distinct().ToList();
                    groups.Add(new JsonObject
                    {
                        ["name"] = g.Key,
                        ["versions"] = new JsonArray([.. versions.Select(v => (JsonNode)new JsonObject { ["groupVersion"] = g.Key + "/" + v, ["version"] = v })]),
                        ["preferredVersion"] = new JsonObject { ["groupVersion"] = g.Key + "/" + versions[0], ["version"] = versions[0] },
                    });
                }
                return new JsonObject { ["kind"] = "APIGroupList", ["apiVersion"] = "v1", ["groups"] = groups }.ToJsonString();
            }
            if (parts is ["openapi", "v3"])
            {
                var paths = new JsonObject();
                foreach (var v in _resources.Select(r => r.GroupVersion).Distinct())
                {
                    var at = (v.Contains('/', StringComparison.Ordinal) ? "apis/" : "api/") + v;
                    paths[at] = new JsonObject { ["serverRelativeURL"] = $"/openapi/v3/{at}?hash={_resources.Count}" };
                }
                return new JsonObject { ["paths"] = paths }.ToJsonString();
            }
            if (parts is ["openapi", "v3", .. var rest])
                return OpenApi(string.Join('/', rest.Skip(1)));
            string? gv = parts switch { ["api", var v] => v, ["apis", var g, var v] => g + "/" + v, _ => null };
            if (gv is null) return path.StartsWith("/openapi", StringComparison.Ordinal) ? "" : null;
            var list = _resources.Where(r => r.GroupVersion == gv).ToList();
            if (list.Count == 0) return "";
            return new JsonObject
            {
                ["kind"] = "APIResourceList", ["apiVersion"] = "v1", ["groupVersion"] = gv,
                ["resources"] = new JsonArray([.. list.Select(r => (JsonNode)new JsonObject
                {
                    ["name"] = r.Plural, ["singularName"] = r.Kind.ToLowerInvariant(), ["namespaced"] = r.Namespaced, ["kind"] = r.Kind,
                    ["verbs"] = new JsonArray("create", "delete", "get", "list", "patch", "update", "watch"),
                })]),
            }.ToJsonString();
        }
    }

    /// <summary>
    /// One group-version's OpenAPI v3 document, as much of it as kubectl reads: every resource's PATCH operation with
    /// its group-version-kind and the fieldValidation parameter, so kubectl leaves validation to this server
    /// (`fieldValidation=Strict`), which checks custom resources against their CRD's schema.
    /// </summary>
    private string OpenApi(string gv)
    {
        var paths = new JsonObject();
        foreach (var r in _resources.Where(r => r.GroupVersion == gv))
        {
            var root = (r.Group.Length == 0 ? "/api/" : "/apis/") + gv + (r.Namespaced ? "/namespaces/{namespace}/" : "/") + r.Plural + "/{name}";
            var gvk = new JsonObject { ["group"] = r.Group, ["version"] = r.Version, ["kind"] = r.Kind };
            JsonObject Op() => new()
            {
                ["x-kubernetes-group-version-kind"] = gvk.DeepClone(),
                ["parameters"] = new JsonArray(new JsonObject { ["name"] = "fieldValidation", ["in"] = "query", ["schema"] = new JsonObject { ["type"] = "string" } }),
                ["responses"] = new JsonObject { ["200"] = new JsonObject { ["description"] = "OK" } },
            };
            paths[root] = new JsonObject { ["patch"] = Op(), ["put"] = Op() };
        }
        if (paths.Count == 0) return "";
        return new JsonObject { ["openapi"] = "3.0.0", ["info"] = new JsonObject { ["title"] = "Kubernetes", ["version"] = "scripted" }, ["paths"] = paths, ["components"] = new JsonObject { ["schemas"] = new JsonObject() } }.ToJsonString();
    }

    /// <summary>The openAPIV3Schema of a custom resource's version, or null (built-in kinds are not checked here).</summary>
    private JsonObject? SchemaOf(string collection)
    {
        foreach (var crd in Collection("/apis/apiextensions.k8s.io/v1/customresourcedefinitions").Values)
        {
            var spec = crd["spec"];
            var group = spec?["group"]?.GetValue<string>();
            var plural = spec?["names"]?["plural"]?.GetValue<string>();
            foreach (var v in spec?["versions"]?.AsArray() ?? [])
                if ($"/apis/{group}/{v?["name"]}/{plural}" == collection) return v?["schema"]?["openAPIV3Schema"] as JsonObject;
        }
        return null;
    }

    /// <summary>What the API server's strict validation of a custom resource says: unknown fields, types, enums, required fields.</summary>
    private static void Validate(JsonNode? value, JsonObject schema, string at, List<string> unknown, List<string> invalid)
    {
        if (value is null) return;
        var type = schema["type"]?.GetValue<string>();
        switch (type)
        {
            case "object" when value is not JsonObject:
            case "array" when value is not JsonArray:
            case "string" when value is not JsonValue sv || sv.GetValueKind() != System.Text.Json.JsonValueKind.String:
            case "boolean" when value is not JsonValue bv || bv.GetValueKind() is not (System.Text.Json.JsonValueKind.True or System.Text.Json.JsonValueKind.False):
            case "integer" or "number" when value is not JsonValue nv || nv.GetValueKind() != System.Text.Json.JsonValueKind.Number:
                invalid.Add($"{at}: Invalid value: \"{value.ToJsonString()}\": {at} in body must be of type {type}");
                return;
        }
        if (schema["enum"] is JsonArray allowed && !allowed.Any(a => JsonNode.DeepEquals(a, value)))
            invalid.Add($"{at}: Unsupported value: {value.ToJsonString()}: supported values: {string.Join(", ", allowed.Select(a => a!.ToJsonString()))}");
        if (value is JsonObject o)
        {
            foreach (var req in schema["required"]?.AsArray() ?? [])
                if (o[req!.GetValue<string>()] is null) invalid.Add($"{at}.{req}: Required value");
            if (schema["x-kubernetes-preserve-unknown-fields"]?.GetValue<bool>() == true && schema["properties"] is null) return;
            var props = schema["properties"] as JsonObject;
            foreach (var (k, v) in o)
            {
                if (at.Length == 0 && k is "apiVersion" or "kind" or "metadata") continue;
                if (props?[k] is JsonObject sub) Validate(v, sub, at.Length == 0 ? k : at + "." + k, unknown, invalid);
                else if (schema["x-kubernetes-preserve-unknown-fields"]?.GetValue<bool>() != true) unknown.Add(at.Length == 0 ? k : at + "." + k);
            }
        }
        else if (value is JsonArray list && schema["items"] is JsonObject items)
            for (var i = 0; i < list.Count; i++) Validate(list[i], items, $"{at}[{i}]", unknown, invalid);
    }

    /// <summary>Weft's CustomResourceDefinitions (those of deploy/weft.yaml), as the first thing applied to a cluster.</summary>
    public static IReadOnlyList<JsonObject> WeftCrds() => [.. Manifest().Where(d => d["kind"]?.GetValue<string>() == "CustomResourceDefinition")];

    /// <summary>The documents of deploy/weft.yaml, embedded in this assembly.</summary>
    private static IEnumerable<JsonObject> Manifest()
    {
        using var stream = typeof(LabApiServer).Assembly.GetManifestResourceStream("weft.yaml") ?? throw new InvalidOperationException("weft.yaml is not embedded");
        using var reader = new StreamReader(stream);
        return Weft.Client.Documents.YamlDocuments.Load(reader.ReadToEnd(), "deploy/weft.yaml").Select(d => d.Doc).ToList();
    }

    /// <summary>Creates Weft's CRDs (what `kubectl apply -f deploy/weft.yaml` does first); returns this server.</summary>
    public LabApiServer WithWeftCrds()
    {
        foreach (var crd in WeftCrds()) Put("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", "", crd["metadata"]!["name"]!.GetValue<string>(), crd);
        return this;
    }

    /// <summary>A created CustomResourceDefinition's served versions become resources (discovery, objects, watches).</summary>
    private void Register(JsonObject crd)
    {
        var spec = crd["spec"] as JsonObject;
        var group = spec?["group"]?.GetValue<string>();
        var plural = spec?["names"]?["plural"]?.GetValue<string>();
        var kind = spec?["names"]?["kind"]?.GetValue<string>();
        if (group is null || plural is null || kind is null) return;
        var namespaced = spec!["scope"]?.GetValue<string>() == "Namespaced";
        foreach (var v in spec["versions"]?.AsArray() ?? [])
            if (v?["name"]?.GetValue<string>() is { } version && v["served"]?.GetValue<bool>() != false &&
                !_resources.Any(r => r.Group == group && r.Version == version && r.Plural == plural))
                _resources.Add(new ApiResource(group, version, plural, kind, namespaced));
    }

    /// <summary>RFC 7386 JSON merge patch (kubectl's patch for custom resources; close enough for its strategic patches here).</summary>
    private static JsonNode? MergePatch(JsonNode? target, JsonNode? patch)
    {
        if (patch is not JsonObject p) return patch?.DeepClone();
        var result = target as JsonObject is { } t ? (JsonObject)t.DeepClone() : new JsonObject();
        foreach (var (k, v) in p)
        {
            if (v is null) result.Remove(k);
            else result[k] = MergePatch(result[k], v);
        }
        return result;
    }

    /// <summary>
    /// A request path as the API server reads it: the collection every object of the resource lives in (the
    /// all-namespaces path for namespaced resources), the namespace (null: cluster-scoped or all namespaces), the name.
    /// </summary>
    private readonly record struct ApiTarget(string Collection, string? Namespace, string? Name);

    private static ApiTarget Target(string path)
    {
        var parts = path.Trim('/').Split('/');
        var prefix = parts[0] == "api" ? 2 : 3; // /api/v1/... or /apis/GROUP/VERSION/...
        if (parts.Length <= prefix) return new ApiTarget(path, null, null);
        var root = "/" + string.Join('/', parts[..prefix]);
        var rest = parts[prefix..];
        if (rest[0] == "namespaces" && rest.Length >= 3)
            return new ApiTarget($"{root}/{rest[2]}", rest[1], rest.Length > 3 ? rest[3] : null);
        return new ApiTarget($"{root}/{rest[0]}", null, rest.Length > 1 ? rest[1] : null);
    }

    /// <summary>
    /// GET, POST (create: 409 AlreadyExists), PUT (update: 404 when missing, 409 Conflict when metadata.resourceVersion
    /// is not the stored one) and DELETE (404, or 409 when preconditions.resourceVersion is stale) of one object; every
    /// write moves the version and is a watch event, as on the API server.
    /// </summary>
    private async Task ObjectAsync(HttpContext http, ApiTarget target)
    {
        JsonObject? body = null;
        if (http.Request.ContentLength is > 0 || http.Request.Method is "POST" or "PUT" or "PATCH")
        {
            try { body = await JsonNode.ParseAsync(http.Request.Body).ConfigureAwait(false) as JsonObject; }
            catch (System.Text.Json.JsonException e)
            {
                await Reply(http, 400, Status(400, "BadRequest", "the body is not JSON: " + e.Message)).ConfigureAwait(false);
                return;
            }
        }
        int code;
        string reply;
        lock (_lock)
        {
            var items = Collection(target.Collection);
            var name = target.Name ?? body?["metadata"]?["name"]?.GetValue<string>();
            var key = name is null ? null : target.Namespace is { } ns ? ns + "/" + name : name;
            var exists = key is not null && items.ContainsKey(key);
            var rv = (_version + 1).ToString(System.Globalization.CultureInfo.InvariantCulture);
            var stored = exists ? items[key!]["metadata"]!["resourceVersion"]!.GetValue<string>() : null;
            var putWants = body is null ? null : (body["metadata"] as JsonObject)?["resourceVersion"]?.GetValue<string>();
            var deleteWants = body is null ? null : (body["preconditions"] as JsonObject)?["resourceVersion"]?.GetValue<string>();
            var stalePut = putWants is { Length: > 0 } && putWants != stored;
            var staleDelete = deleteWants is { Length: > 0 } && deleteWants != stored;
            switch (http.Request.Method)
            {
                case "GET":
                    (code, reply) = exists ? (200, items[key!].ToJsonString()) : (404, Status(404, "NotFound", $"\"{name}\" not found"));
                    break;
                case "POST" when body is null || key is null:
                    (code, reply) = (400, Status(400, "BadRequest", "an object with metadata.name is required"));
                    break;
                case "POST" when exists:
                    (code, reply) = (409, Status(409, "AlreadyExists", $"\"{name}\" already exists"));
                    break;
                case "PUT" when body is null || key is null:
                    (code, reply) = (400, Status(400, "BadRequest", "an object is required"));
                    break;
                case "PUT" when !exists:
                    (code, reply) = (404, Status(404, "NotFound", $"\"{name}\" not found"));
                    break;
                case "PUT" when stalePut:
                    (code, reply) = (409, Status(409, "Conflict", $"Operation cannot be fulfilled on \"{name}\": the object has been modified; please apply your changes to the latest version and try again"));
                    break;
                case "PATCH" when !exists:
                    (code, reply) = (404, Status(404, "NotFound", $"\"{name}\" not found"));
                    break;
                case "PATCH" when body is null:
                    (code, reply) = (400, Status(400, "BadRequest", "a patch is required"));
                    break;
                case "POST" or "PUT" or "PATCH" when http.Request.Query["fieldValidation"] == "Strict" && SchemaOf(target.Collection) is { } schema &&
                                                      Problems(http.Request.Method == "PATCH" ? MergePatch(items[key!], body) : body, schema) is { } problem:
                    (code, reply) = problem;
                    break;
                case "POST" or "PUT" or "PATCH":
                    var o = http.Request.Method == "PATCH" ? (JsonObject)MergePatch(items[key!], body)! : (JsonObject)body!.DeepClone();
                    var metadata = o["metadata"] as JsonObject ?? new JsonObject();
                    o["metadata"] = metadata;
                    metadata["name"] = name;
                    if (target.Namespace is { } n) metadata["namespace"] = n;
                    metadata["resourceVersion"] = rv;
                    if (!exists) metadata["uid"] = Guid.NewGuid().ToString();
                    else metadata["uid"] = items[key!]["metadata"]!["uid"]?.DeepClone();
                    _version++;
                    items[key!] = o;
                    if (target.Collection == "/apis/apiextensions.k8s.io/v1/customresourcedefinitions") Register(o);
                    Record(target.Collection, exists ? "MODIFIED" : "ADDED", o);
                    (code, reply) = (exists ? 200 : 201, o.ToJsonString());
                    break;
                case "DELETE" when !exists:
                    (code, reply) = (404, Status(404, "NotFound", $"\"{name}\" not found"));
                    break;
                case "DELETE" when staleDelete:
                    (code, reply) = (409, Status(409, "Conflict", $"Precondition failed: ResourceVersion in precondition: {deleteWants}"));
                    break;
                case "DELETE":
                    items.Remove(key!, out var gone);
                    gone = (JsonObject)gone!.DeepClone();
                    gone["metadata"]!["resourceVersion"] = rv;
                    _version++;
                    Record(target.Collection, "DELETED", gone);
                    (code, reply) = (200, gone.ToJsonString());
                    break;
                default:
                    (code, reply) = (405, Status(405, "MethodNotAllowed", http.Request.Method + " is not supported here"));
                    break;
            }
        }
        await Reply(http, code, reply).ConfigureAwait(false);
    }

    /// <summary>The API server's answer to an invalid custom resource (400 for unknown fields, 422 for invalid values), or null.</summary>
    private static (int, string)? Problems(JsonNode? o, JsonObject schema)
    {
        var unknown = new List<string>();
        var invalid = new List<string>();
        Validate(o, schema, "", unknown, invalid);
        if (unknown.Count > 0)
            return (400, Status(400, "BadRequest", "strict decoding error: " + string.Join(", ", unknown.Select(u => $"unknown field \"{u}\""))));
        if (invalid.Count > 0)
            return (422, Status(422, "Invalid", $"{o?["kind"]} \"{o?["metadata"]?["name"]}\" is invalid: " + string.Join(", ", invalid)));
        return null;
    }

    private static async Task Reply(HttpContext http, int code, string body)
    {
        http.Response.StatusCode = code;
        await http.Response.WriteAsync(body).ConfigureAwait(false);
    }

    private async Task ListAsync(HttpContext http, string path, IQueryCollection q, string? ns = null)
    {
        var limit = int.TryParse(q["limit"], out var l) && l > 0 ? l : int.MaxValue;
        string body;
        lock (_lock)
        {
            long id, start = 0;
            if (q["continue"].ToString() is { Length: > 0 } token)
            {
                var parts = Encoding.UTF8.GetString(Convert.FromBase64String(token)).Split(':');
                (id, start) = (long.Parse(parts[0], System.Globalization.CultureInfo.InvariantCulture), long.Parse(parts[1], System.Globalization.CultureInfo.InvariantCulture));
                if (!_snapshots.TryGetValue(id, out var snap) || snap.Version < _compacted)
                {
                    http.Response.StatusCode = 410;
                    body = Status(410, "Expired", "The provided continue parameter is too old");
                    goto write;
                }
            }
            else
            {
                id = ++_nextSnapshot;
                _snapshots[id] = (_version, Collection(path).Where(kv => ns is null || kv.Key.StartsWith(ns + "/", StringComparison.Ordinal))
                    .Select(kv => (JsonObject)kv.Value.DeepClone()).ToList());
            }
            var (version, items) = _snapshots[id];
            var page = items.Skip((int)start).Take(limit).ToList();
            var next = start + page.Count < items.Count ? Convert.ToBase64String(Encoding.UTF8.GetBytes($"{id}:{start + page.Count}")) : null;
            var metadata = new JsonObject { ["resourceVersion"] = version.ToString(System.Globalization.CultureInfo.InvariantCulture) };
            if (next is not null) metadata["continue"] = next;
            body = new JsonObject { ["kind"] = "List", ["apiVersion"] = "v1", ["metadata"] = metadata, ["items"] = new JsonArray([.. page.Select(o => (JsonNode)o.DeepClone())]) }.ToJsonString();
        }
        write:
        await http.Response.WriteAsync(body).ConfigureAwait(false);
    }

    public async ValueTask DisposeAsync()
    {
        DropStreams();
        await _app.StopAsync().ConfigureAwait(false);
        await _app.DisposeAsync().ConfigureAwait(false);
        _listener?.Dispose();
    }
}
