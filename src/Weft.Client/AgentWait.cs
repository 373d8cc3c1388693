using System.Diagnostics;
using System.Net.Sockets;
using System.Text.Json;
using System.Text.Json.Nodes;
using Weft.Datastore;
using Weft.Model;
using Weft.Resources;

namespace Weft.Client;

/// <summary>Where a command writes: weftctl passes the console, tests and benchmarks their own writers.</summary>
public sealed record Terminal(TextWriter Out, TextWriter Err);

/// <summary>One node's agent API: its unix socket (HTTP/2, as in the lab) or its metrics port (HTTP/1.1).</summary>
public sealed record AgentEndpoint(string Node, HttpClient Client, Uri Base) : IDisposable
{
    public const int AgentPort = 9962;

    public void Dispose() => Client.Dispose();

    public static AgentEndpoint ForSocket(string node, string socket) => new(node, UnixClient(socket), new Uri("http://agent/"));

    /// <summary>An HTTP/2 (prior knowledge) client for an agent's unix socket.</summary>
    public static HttpClient UnixClient(string socket) => new(new SocketsHttpHandler
    {
        ConnectCallback = async (_, ct) =>
        {
            var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            try { await s.ConnectAsync(new UnixDomainSocketEndPoint(socket), ct).ConfigureAwait(false); }
            catch { s.Dispose(); throw; }
            return new NetworkStream(s, ownsSocket: true);
        },
    })
    {
        DefaultRequestVersion = System.Net.HttpVersion.Version20,
        DefaultVersionPolicy = HttpVersionPolicy.RequestVersionExact,
    };

    /// <summary>Every registered node's agent at its underlay address on the metrics port, as outside a lab.</summary>
    public static async Task<List<AgentEndpoint>> FromNodesAsync(IDatastore store, CancellationToken ct)
    {
        var nodes = await store.ListRecordsAsync(Keys.Nodes, ModelJson.Default.NodeRecord, ct).ConfigureAwait(false);
        return nodes.Select(n =>
        {
            var ip = n.UnderlayAddress?.Split('/')[0] ?? throw new ResourceException($"node {n.Name} has no underlay address registered: is its agent running?");
            var host = ip.Contains(':', StringComparison.Ordinal) ? $"[{ip}]" : ip;
            return new AgentEndpoint(n.Name, new HttpClient(), new Uri($"http://{host}:{AgentPort}/"));
        }).ToList();
    }
}

/// <summary>
/// `apply --wait`, `delete --wait` and `lab sync`: return once every agent enforces a datastore revision. Each agent
/// is asked once, with a long poll (`GET /status/wait?revision=N`) that it answers the moment its reconciler has
/// programmed that revision: through the lab's node sockets, else at each registered node's underlay address on
/// the agent's metrics port (9962, where /status also answers).
/// </summary>
public static class AgentWait
{
    /// <summary>Which reconcilers a change reaches: policy inputs, route inputs (pools, nodes), or neither.</summary>
    public static string? ScopeFor(IEnumerable<string> kinds)
    {
        var list = kinds.Select(ResourceService.NormaliseKind).ToList();
        // The Installation picks the policy dataplane: agents report its revision once the switch is complete.
        var policy = list.Any(k => k is "NetworkPolicy" or "KubernetesNetworkPolicy" or "GlobalNetworkPolicy" or "Tier" or "Namespace" or "Pod" or "Installation");
        var routes = list.Any(k => k is "IPPool" or "Node");
        return policy && routes ? "all" : policy ? "policy" : routes ? "routes" : null;
    }

    /// <summary>Waits for every agent to enforce <paramref name="revision"/>; throws naming the nodes that lag.</summary>
    public static async Task<TimeSpan> WaitAsync(IReadOnlyList<AgentEndpoint> agents, long revision, string scope, TimeSpan timeout, CancellationToken ct)
    {
        var sw = Stopwatch.StartNew();
        try
        {
            var results = await Task.WhenAll(agents.Select(a => AskAsync(a, revision, scope, timeout, ct))).ConfigureAwait(false);
            var lagging = results.Where(r => r is not null).ToList();
            if (lagging.Count > 0)
                throw new ResourceException($"revision {revision} is not enforced after {timeout.TotalSeconds:0.#} s by {lagging.Count} of {agents.Count} node(s): {string.Join("; ", lagging)}");
            return sw.Elapsed;
        }
        finally
        {
            foreach (var a in agents) a.Dispose();
        }
    }

    /// <summary>Null when the agent enforces the revision, else why not (its revision and last error, or unreachable).</summary>
    private static async Task<string?> AskAsync(AgentEndpoint agent, long revision, string scope, TimeSpan timeout, CancellationToken ct)
    {
        var deadline = Stopwatch.StartNew();
        string last = "no answer";
        while (true)
        {
            var left = timeout - deadline.Elapsed;
            if (left <= TimeSpan.Zero) return $"{agent.Node} ({last})";
            try
            {
                using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
                cts.CancelAfter(left + TimeSpan.FromSeconds(2));
                var uri = new Uri(agent.Base, $"status/wait?revision={revision}&scope={scope}&timeoutMs={(long)left.TotalMilliseconds}");
                using var response = await agent.Client.GetAsync(uri, cts.Token).ConfigureAwait(false);
                var body = await response.Content.ReadAsStringAsync(cts.Token).ConfigureAwait(false);
                if (response.IsSuccessStatusCode) return null;
                // 504: the agent waited the whole timeout and says where it is.
                if (response.StatusCode == System.Net.HttpStatusCode.GatewayTimeout) return $"{agent.Node} ({Describe(body, scope)})";
                last = $"HTTP {(int)response.StatusCode}: {body.Trim()}";
            }
            catch (Exception e) when (e is HttpRequestException or SocketException or IOException || (e is OperationCanceledException && !ct.IsCancellationRequested))
            {
                last = "unreachable: " + e.Message;
            }
            // An agent restarting (socket not there yet) gets another try within the timeout.
            await Task.Delay(TimeSpan.FromMilliseconds(Math.Min(200, Math.Max(1, (timeout - deadline.Elapsed).TotalMilliseconds))), ct).ConfigureAwait(false);
        }
    }

    private static string Describe(string body, string scope)
    {
        try
        {
            var s = JsonNode.Parse(body);
            var policy = s?["policy"];
            var parts = new List<string>();
            if (scope is "policy" or "all") parts.Add($"policy at revision {policy?["revision"]}" + (policy?["lastError"] is { } pe ? $", last error: {pe}" : ""));
            if (scope is "routes" or "all") parts.Add($"routes at revision {s?["routesRevision"]}" + (s?["lastError"] is { } re ? $", last error: {re}" : ""));
            return string.Join(", ", parts);
        }
        catch (JsonException) { return body.Trim(); }
    }
}
