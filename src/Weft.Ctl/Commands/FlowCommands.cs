using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Grpc.Core;
using Grpc.Net.Client;
using Weft.Client.Output;
using Weft.Flows;
using Weft.Flows.Api;
using Weft.Datastore;
using Weft.Model;

namespace Weft.Ctl.Commands;

/// <summary>`weftctl observe`'s flags, named and meant as `hubble observe`'s.</summary>
public sealed record ObserveOptions
{
    public IReadOnlyList<string> Pods { get; init; } = [];
    public IReadOnlyList<string> Namespaces { get; init; } = [];
    public IReadOnlyList<string> FromPods { get; init; } = [];
    public IReadOnlyList<string> ToPods { get; init; } = [];
    public IReadOnlyList<string> Ips { get; init; } = [];
    public IReadOnlyList<string> FromIps { get; init; } = [];
    public IReadOnlyList<string> ToIps { get; init; } = [];
    public IReadOnlyList<string> Labels { get; init; } = [];
    public IReadOnlyList<string> FromLabels { get; init; } = [];
    public IReadOnlyList<string> ToLabels { get; init; } = [];
    public IReadOnlyList<string> Verdicts { get; init; } = [];
    public IReadOnlyList<string> Protocols { get; init; } = [];
    public IReadOnlyList<int> Ports { get; init; } = [];
    public IReadOnlyList<int> FromPorts { get; init; } = [];
    public IReadOnlyList<int> ToPorts { get; init; } = [];
    public IReadOnlyList<string> Directions { get; init; } = [];
    public IReadOnlyList<string> Nodes { get; init; } = [];
    public int? Last { get; init; }
    public bool All { get; init; }
    public string? Since { get; init; }
    public bool Follow { get; init; }
    public string Output { get; init; } = "compact";
    public IReadOnlyList<string> Servers { get; init; } = [];
    public string? Lab { get; init; }
}

/// <summary>One agent's flow API: a node name and a gRPC channel (unix socket or TCP).</summary>
public sealed record FlowServer(string Node, GrpcChannel Channel) : IDisposable
{
    public void Dispose() => Channel.Dispose();

    public static FlowServer ForSocket(string node, string socketPath) =>
        new(node, GrpcChannel.ForAddress("http://agent", new GrpcChannelOptions
        {
            HttpHandler = new SocketsHttpHandler
            {
                ConnectCallback = async (_, ct) =>
                {
                    var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                    try { await s.ConnectAsync(new UnixDomainSocketEndPoint(socketPath), ct).ConfigureAwait(false); }
                    catch { s.Dispose(); throw; }
                    return new NetworkStream(s, ownsSocket: true);
                },
            },
        }));

    public static FlowServer ForTcp(string node, string hostPort) =>
        new(node, GrpcChannel.ForAddress("http://" + (hostPort.Contains(':', StringComparison.Ordinal) && !hostPort.StartsWith('[') && hostPort.Count(c => c == ':') == 1 ? hostPort : hostPort + ":4244")));
}

public static class FlowCommands
{
    public const int FlowPort = 4244;

    /// <summary>The whitelist filters for the flags: either-side flags (--pod, --namespace, --ip, --label, --port) match on either end, each on its own.</summary>
    public static List<FlowFilter> BuildFilters(ObserveOptions o)
    {
        var ns = o.Namespaces.Count == 1 ? o.Namespaces[0] : "default";
        string Pod(string p) => p.Contains('/', StringComparison.Ordinal) ? p : ns + "/" + p;
        var eitherPods = o.Pods.Select(Pod).Concat(o.Pods.Count == 0 ? o.Namespaces.Select(n => n + "/") : []).ToList();
        foreach (var v in o.Verdicts)
            if (v.ToUpperInvariant() is not ("FORWARDED" or "DROPPED")) throw new ArgumentException($"--verdict {v}: Weft reports FORWARDED or DROPPED");
        foreach (var d in o.Directions)
            if (d.ToLowerInvariant() is not ("ingress" or "egress")) throw new ArgumentException($"--traffic-direction {d}: use ingress or egress");
        foreach (var p in o.Protocols)
            if (FlowMatcher.ProtocolNumber(p) < 0) throw new ArgumentException($"--protocol {p}: use tcp, udp, sctp, icmpv4 or icmpv6");
        foreach (var p in o.Ports.Concat(o.FromPorts).Concat(o.ToPorts))
            if (p is < 0 or > 65535) throw new ArgumentException($"port {p} is out of range");

        var baseFilter = new FlowFilter();
        baseFilter.SourcePod.AddRange(o.FromPods.Select(Pod));
        baseFilter.DestinationPod.AddRange(o.ToPods.Select(Pod));
        baseFilter.SourceIp.AddRange(o.FromIps);
        baseFilter.DestinationIp.AddRange(o.ToIps);
        baseFilter.SourceLabel.AddRange(o.FromLabels);
        baseFilter.DestinationLabel.AddRange(o.ToLabels);
        baseFilter.SourcePort.AddRange(o.FromPorts.Select(p => (uint)p));
        baseFilter.DestinationPort.AddRange(o.ToPorts.Select(p => (uint)p));
        baseFilter.Verdict.AddRange(o.Verdicts.Select(v => v.ToUpperInvariant()));
        baseFilter.Protocol.AddRange(o.Protocols);
        baseFilter.TrafficDirection.AddRange(o.Directions.Select(d => d.ToUpperInvariant()));
        baseFilter.NodeName.AddRange(o.Nodes);

        // Each either-side criterion picks a side independently: the product of the choices.
        var filters = new List<FlowFilter> { baseFilter };
        void Either(bool present, Action<FlowFilter> onSource, Action<FlowFilter> onDestination)
        {
            if (!present) return;
            filters = filters.SelectMany(f =>
            {
                var s = f.Clone();
                onSource(s);
                var d = f.Clone();
                onDestination(d);
                return new[] { s, d };
            }).ToList();
        }
        Either(eitherPods.Count > 0, f => f.SourcePod.AddRange(eitherPods), f => f.DestinationPod.AddRange(eitherPods));
        Either(o.Ips.Count > 0, f => f.SourceIp.AddRange(o.Ips), f => f.DestinationIp.AddRange(o.Ips));
        Either(o.Labels.Count > 0, f => f.SourceLabel.AddRange(o.Labels), f => f.DestinationLabel.AddRange(o.Labels));
        Either(o.Ports.Count > 0, f => f.SourcePort.AddRange(o.Ports.Select(p => (uint)p)), f => f.DestinationPort.AddRange(o.Ports.Select(p => (uint)p)));
        FlowMatcher.Validate(filters);
        return filters;
    }

    public static GetFlowsRequest BuildRequest(ObserveOptions o, DateTime now)
    {
        var request = new GetFlowsRequest { Follow = o.Follow };
        request.Whitelist.AddRange(BuildFilters(o));
        if (o.Since is { } since) request.SinceUnixNano = FlowText.UnixNano(ParseSince(since, now));
        // As hubble: the last 20 unless a window, --all or follow says otherwise.
        request.Number = o.Last is { } n ? (ulong)Math.Max(0, n) : o.All || o.Since is not null || o.Follow ? 0UL : 20UL;
        if (o.Follow && o.Last is null && o.Since is null && !o.All) request.SinceUnixNano = FlowText.UnixNano(now);
        return request;
    }

    public static DateTime ParseSince(string text, DateTime now)
    {
        if (DateTime.TryParse(text, CultureInfo.InvariantCulture, DateTimeStyles.AdjustToUniversal | DateTimeStyles.AssumeUniversal, out var t)) return t;
        if (text.Length >= 2 && double.TryParse(text[..^1], NumberStyles.Float, CultureInfo.InvariantCulture, out var n) && n >= 0)
            switch (text[^1])
            {
                case 's': return now.AddSeconds(-n);
                case 'm': return now.AddMinutes(-n);
                case 'h': return now.AddHours(-n);
            }
        throw new ArgumentException($"--since '{text}' is not a duration (30s, 5m, 1h) or an RFC 3339 time");
    }

    /// <summary>The agents to ask: --server addresses, else the lab's node sockets, else every registered node's underlay address on port 4244.</summary>
    public static async Task<List<FlowServer>> ServersAsync(CtlContext ctx, IReadOnlyList<string> servers, string? lab, CancellationToken ct)
    {
        if (servers.Count > 0) return servers.Select(s => s.StartsWith("unix://", StringComparison.Ordinal) ? FlowServer.ForSocket(s, s["unix://".Length..]) : FlowServer.ForTcp(s, s)).ToList();
        if (lab is not null)
            return Weft.Lab.LabState.LoadOrThrow(lab).Nodes.Select(n => FlowServer.ForSocket(n.Name, n.Socket)).ToList();
        using var store = ctx.OpenStore();
        var nodes = await store.ListRecordsAsync(Keys.Nodes, ModelJson.Default.NodeRecord, ct).ConfigureAwait(false);
        return nodes.Where(n => n.UnderlayAddress is not null)
            .Select(n => FlowServer.ForTcp(n.Name, $"{n.UnderlayAddress!.Split('/')[0]}:{FlowPort}")).ToList();
    }

    public static async Task<int> ObserveAsync(CtlContext ctx, ObserveOptions o, CancellationToken ct)
    {
        if (o.Output is not ("compact" or "json" or "jsonpb" or "table")) throw new ArgumentException($"-o {o.Output}: use compact, json or table");
        var request = BuildRequest(o, DateTime.UtcNow);
        var servers = await ServersAsync(ctx, o.Servers, o.Lab, ct).ConfigureAwait(false);
        if (servers.Count == 0) throw new ArgumentException("no agents to ask: pass --server HOST[:PORT] or --lab NAME, or register nodes");
        try
        {
            var printer = new FlowPrinter(ctx.Out, o.Output);
            if (!o.Follow)
            {
                // Each node answers oldest first; merge by time, then keep the last N across the cluster.
                var perNode = await Task.WhenAll(servers.Select(s => ReadAllAsync(s, request, ctx.Err, ct))).ConfigureAwait(false);
                var merged = perNode.SelectMany(x => x).OrderBy(f => f.TimeUnixNano).ThenBy(f => f.NodeName, StringComparer.Ordinal).ToList();
                if (request.Number > 0 && (ulong)merged.Count > request.Number) merged = merged[^(int)request.Number..];
                foreach (var f in merged) printer.Print(f);
                printer.Flush();
                return perNode.Any(p => p.Failed) && perNode.All(p => p.Failed) ? 1 : 0;
            }
            await FollowAsync(servers, request, printer, ctx.Err, ct).ConfigureAwait(false);
            return 0;
        }
        finally
        {
            foreach (var s in servers) s.Dispose();
        }
    }

    private sealed class NodeFlows : List<Flow>
    {
        public bool Failed { get; set; }
    }

    private static async Task<NodeFlows> ReadAllAsync(FlowServer server, GetFlowsRequest request, TextWriter err, CancellationToken ct)
    {
        var result = new NodeFlows();
        try
        {
            using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
            cts.CancelAfter(TimeSpan.FromSeconds(10));
            using var call = new Observer.ObserverClient(server.Channel).GetFlows(request, cancellationToken: cts.Token);
            while (await call.ResponseStream.MoveNext(cts.Token).ConfigureAwait(false)) result.Add(call.ResponseStream.Current);
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.InvalidArgument)
        {
            throw new ArgumentException(e.Status.Detail);
        }
        catch (Exception e) when (e is RpcException or HttpRequestException or OperationCanceledException && !ct.IsCancellationRequested)
        {
            await err.WriteLineAsync($"warning: node {server.Node}: flows unavailable ({Reason(e)})").ConfigureAwait(false);
            result.Failed = true;
        }
        return result;
    }

    private static string Reason(Exception e) => e is RpcException r ? r.Status.Detail is { Length: > 0 } d ? d : r.StatusCode.ToString() : e.Message;

    /// <summary>
    /// Follow every node at once. Each flow is held a short while after it arrives and what is due is printed in
    /// timestamp order, so a cluster-wide stream reads in the order things happened although each node's stream
    /// arrives on its own schedule; holding by arrival (not by the node's clock) keeps a node with a skewed clock
    /// from stalling the stream. A node whose stream breaks or ends is asked again from now on.
    /// </summary>
    private static async Task FollowAsync(List<FlowServer> servers, GetFlowsRequest request, FlowPrinter printer, TextWriter err, CancellationToken ct)
    {
        var hold = TimeSpan.FromMilliseconds(250);
        var pending = new List<(Flow Flow, DateTime Arrived)>();
        var gate = new Lock();
        async Task ReadAsync(FlowServer s)
        {
            var mine = request.Clone();
            while (!ct.IsCancellationRequested)
            {
                try
                {
                    using var call = new Observer.ObserverClient(s.Channel).GetFlows(mine, cancellationToken: ct);
                    while (await call.ResponseStream.MoveNext(ct).ConfigureAwait(false))
                    {
                        var f = call.ResponseStream.Current;
                        lock (gate) pending.Add((f, DateTime.UtcNow));
                    }
                }
                catch (RpcException e) when (e.StatusCode == StatusCode.InvalidArgument) { throw new ArgumentException(e.Status.Detail); }
                catch (Exception e) when (ct.IsCancellationRequested && e is RpcException or OperationCanceledException) { return; }
                catch (Exception e) when (e is RpcException or HttpRequestException)
                {
                    await err.WriteLineAsync($"warning: node {s.Node}: {Reason(e)}; retrying").ConfigureAwait(false);
                }
                if (ct.IsCancellationRequested) return;
                mine = mine.Clone();
                mine.Number = 0;
                mine.SinceUnixNano = FlowText.UnixNano(DateTime.UtcNow);
                try { await Task.Delay(1000, ct).ConfigureAwait(false); } catch (OperationCanceledException) { return; }
            }
        }
        var readers = servers.Select(s => Task.Run(() => ReadAsync(s), CancellationToken.None)).ToList();
        try
        {
            while (!ct.IsCancellationRequested && !readers.Any(r => r.IsFaulted))
            {
                try { await Task.Delay(50, ct).ConfigureAwait(false); } catch (OperationCanceledException) { break; }
                var due = DateTime.UtcNow - hold;
                List<Flow> ready;
                lock (gate)
                {
                    ready = pending.Where(p => p.Arrived <= due).Select(p => p.Flow).ToList();
                    pending.RemoveAll(p => p.Arrived <= due);
                }
                foreach (var f in ready.OrderBy(f => f.TimeUnixNano).ThenBy(f => f.NodeName, StringComparer.Ordinal)) printer.Print(f);
                if (ready.Count > 0) printer.Flush();
            }
        }
        finally
        {
            lock (gate)
                foreach (var (f, _) in pending.OrderBy(p => p.Flow.TimeUnixNano)) printer.Print(f);
            printer.Flush();
        }
        foreach (var r in readers.Where(r => r.IsFaulted)) await r.ConfigureAwait(false); // surfaces a bad filter
    }

    /// <summary>`weftctl status`: the cluster at a glance, as `cilium status` shows it.</summary>
    public static async Task<int> StatusAsync(CtlContext ctx, string? lab, IReadOnlyList<string> servers, string output, CancellationToken ct)
    {
        using var store = ctx.OpenStore();
        long revision;
        try { revision = await store.RevisionAsync(ct).ConfigureAwait(false); }
        catch (Exception e) when (e is not OperationCanceledException) { throw new Datastore.DatastoreUnavailableException($"datastore {ctx.DatastoreUri}: {e.Message}"); }
        var nodes = await store.ListRecordsAsync(Keys.Nodes, ModelJson.Default.NodeRecord, ct).ConfigureAwait(false);
        var endpoints = (await store.ListAsync(Keys.Endpoints, ct).ConfigureAwait(false)).Items.Count;
        var policies = (await store.ListAsync(Keys.Policies, ct).ConfigureAwait(false)).Items.Count;
        var usage = await new Ipam.IpamInspector(store).UsageAsync(ct).ConfigureAwait(false);
        var flowServers = await ServersAsync(ctx, servers, lab, ct).ConfigureAwait(false);
        var agents = await Task.WhenAll(flowServers.Select(async s =>
        {
            try
            {
                using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
                cts.CancelAfter(TimeSpan.FromSeconds(3));
                var st = await new Observer.ObserverClient(s.Channel).ServerStatusAsync(new ServerStatusRequest(), cancellationToken: cts.Token).ConfigureAwait(false);
                return (s.Node, Status: st, Error: (string?)null);
            }
            catch (Exception e) when (e is RpcException or HttpRequestException or OperationCanceledException && !ct.IsCancellationRequested)
            {
                return (s.Node, Status: (ServerStatusResponse?)null, Error: (string?)Reason(e));
            }
            finally { s.Dispose(); }
        })).ConfigureAwait(false);
        var ok = agents.Count(a => a.Status is not null);
        var fps = agents.Sum(a => a.Status?.FlowsPerSecond ?? 0);
        if (output == "json")
        {
            var buffer = new System.Buffers.ArrayBufferWriter<byte>();
            using (var w = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true }))
            {
                w.WriteStartObject();
                w.WriteString("datastore", ctx.DatastoreUri);
                w.WriteNumber("revision", revision);
                w.WriteStartArray("nodes");
                foreach (var n in nodes)
                {
                    var a = agents.FirstOrDefault(x => x.Node == n.Name);
                    w.WriteStartObject();
                    w.WriteString("name", n.Name);
                    w.WriteString("underlay", n.UnderlayAddress);
                    w.WriteString("backend", n.Backend);
                    w.WriteBoolean("agentReachable", a.Status is not null);
                    if (a.Error is not null) w.WriteString("error", a.Error);
                    if (a.Status is { } st)
                    {
                        w.WriteNumber("flows", st.NumFlows);
                        w.WriteNumber("maxFlows", st.MaxFlows);
                        w.WriteNumber("seenFlows", st.SeenFlows);
                        w.WriteNumber("lostFlows", st.LostFlows);
                        w.WriteNumber("flowsPerSecond", st.FlowsPerSecond);
                    }
                    w.WriteEndObject();
                }
                w.WriteEndArray();
                w.WriteNumber("endpoints", endpoints);
                w.WriteNumber("policies", policies);
                w.WriteNumber("flowsPerSecond", fps);
                w.WriteStartArray("pools");
                foreach (var u in usage)
                {
                    w.WriteStartObject();
                    w.WriteString("cidr", u.Pool.Cidr);
                    w.WriteNumber("inUse", u.InUse);
                    w.WriteString("total", u.Total.ToString(CultureInfo.InvariantCulture));
                    w.WriteEndObject();
                }
                w.WriteEndArray();
                w.WriteEndObject();
            }
            await ctx.Out.WriteLineAsync(Encoding.UTF8.GetString(buffer.WrittenSpan)).ConfigureAwait(false);
            return ok == agents.Length ? 0 : 1;
        }
        var backends = string.Join(", ", nodes.Select(n => n.Backend ?? "?").Distinct(StringComparer.Ordinal));
        var sb = new StringBuilder();
        sb.Append(CultureInfo.InvariantCulture, $"Datastore:      OK   {ctx.DatastoreUri} (revision {revision})\n");
        sb.Append(CultureInfo.InvariantCulture, $"Backend:        {(backends.Length == 0 ? "none" : backends)}\n");
        sb.Append(CultureInfo.InvariantCulture, $"Nodes:          {nodes.Count} registered, {ok}/{agents.Length} agents reachable\n");
        foreach (var a in agents)
            sb.Append(CultureInfo.InvariantCulture, $"  {a.Node,-20} {(a.Status is { } st ? $"OK   flows {st.NumFlows}/{st.MaxFlows}, {st.FlowsPerSecond:0.#}/s, {st.LostFlows} lost" : "ERROR " + a.Error)}\n");
        sb.Append(CultureInfo.InvariantCulture, $"Endpoints:      {endpoints}\n");
        sb.Append(CultureInfo.InvariantCulture, $"Policies:       {policies}\n");
        foreach (var u in usage)
            sb.Append(CultureInfo.InvariantCulture, $"IPAM:           {u.Pool.Cidr}: {u.InUse} of {u.Total} addresses in use\n");
        sb.Append(CultureInfo.InvariantCulture, $"Flows:          {fps:0.#}/s across the cluster\n");
        await ctx.Out.WriteAsync(sb.ToString()).ConfigureAwait(false);
        return ok == agents.Length ? 0 : 1;
    }
}

/// <summary>Prints flows in one of observe's output formats; a table is printed per flush, its header only once.</summary>
public sealed class FlowPrinter(TextWriter output, string format)
{
    private TextTable? _table;
    private bool _headerPrinted;

    public void Print(Flow f)
    {
        switch (format)
        {
            case "json" or "jsonpb": output.WriteLine(FlowText.Json(f)); break;
            case "table":
                _table ??= new TextTable([.. FlowText.TableHeader]);
                _table.Add([.. FlowText.TableRow(f)]);
                break;
            default: output.WriteLine(FlowText.Compact(f)); break;
        }
    }

    public void Flush()
    {
        if (_table is not null)
        {
            var text = _table.Render();
            output.Write(_headerPrinted ? text[(text.IndexOf('\n', StringComparison.Ordinal) + 1)..] : text);
            _headerPrinted = true;
            _table = null;
        }
        output.Flush();
    }
}
