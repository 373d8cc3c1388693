using System.Text.Json.Nodes;
using Weft.Client;
using Weft.Client.Documents;
using Weft.Client.Output;
using Weft.Ctl.Output;
using Weft.Ipam;
using Weft.Datastore;
using Weft.Model;
using Weft.Resources;

namespace Weft.Ctl.Commands;

/// <summary>apply, get and delete.</summary>
public static class ResourceCommands
{
    public static async Task<int> ApplyAsync(CtlContext ctx, IReadOnlyList<string> files, TimeSpan? wait, CancellationToken ct)
    {
        var resources = YamlDocuments.ResourcesFrom(files);
        if (resources.Count == 0) throw new ResourceException($"{string.Join(", ", files)}: no documents found");
        using var store = ctx.OpenStore();
        var service = new ResourceService(store);
        foreach (var line in await service.ApplyAsync(resources, ct).ConfigureAwait(false))
            await ctx.Out.WriteLineAsync(line).ConfigureAwait(false);
        if (wait is { } timeout) await WaitAsync(ctx, store, service.LastRevision, resources.Select(r => r.Kind), timeout, ct).ConfigureAwait(false);
        return 0;
    }

    /// <summary>"30s", "2m", "500ms", "1h" (Go's duration words, as kubectl's --timeout).</summary>
    public static TimeSpan ParseDuration(string text, string flag)
    {
        var (number, unit) = text.EndsWith("ms", StringComparison.Ordinal) ? (text[..^2], "ms") : text.Length > 1 ? (text[..^1], text[^1..]) : (text, "");
        if (double.TryParse(number, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out var n) && n > 0 && n < 1e7)
            switch (unit)
            {
                case "ms": return TimeSpan.FromMilliseconds(n);
                case "s": return TimeSpan.FromSeconds(n);
                case "m": return TimeSpan.FromMinutes(n);
                case "h": return TimeSpan.FromHours(n);
            }
        throw new ArgumentException($"{flag} '{text}' is not a duration (500ms, 30s, 2m, 1h)");
    }

    private static async Task WaitAsync(CtlContext ctx, Weft.Datastore.IDatastore store, long revision, IEnumerable<string> kinds, TimeSpan timeout, CancellationToken ct)
    {
        if (AgentWait.ScopeFor(kinds) is not { } scope)
        {
            await ctx.Err.WriteLineAsync("--wait: nothing here changes what the agents program (IP reservations are read by the plugin at its next ADD)").ConfigureAwait(false);
            return;
        }
        var agents = ctx.Lab is { } lab ? Weft.Lab.LabState.LoadOrThrow(lab).AgentEndpoints() : await AgentEndpoint.FromNodesAsync(store, ct).ConfigureAwait(false);
        var took = await AgentWait.WaitAsync(agents, revision, scope, timeout, ct).ConfigureAwait(false);
        await ctx.Err.WriteLineAsync($"every agent enforces revision {revision} ({took.TotalMilliseconds:0} ms)").ConfigureAwait(false);
    }

    public static async Task<int> DeleteAsync(CtlContext ctx, string? kind, string? name, IReadOnlyList<string> files, bool force, TimeSpan? wait, CancellationToken ct)
    {
        var targets = new List<(string Kind, string Name)>();
        if (files.Count > 0)
        {
            foreach (var (doc, source) in YamlDocuments.LoadPaths(files))
            {
                var r = ResourceReader.Read(doc, source);
                targets.Add((r.Kind, r.Name));
            }
        }
        else if (kind is not null && name is not null) targets.Add((ResourceService.NormaliseKind(kind), name));
        else throw new ResourceException("delete needs KIND NAME (e.g. `weftctl delete ippool default-ipv4`) or -f FILE");
        using var store = ctx.OpenStore();
        var service = new ResourceService(store);
        var failed = 0;
        foreach (var (k, n) in targets)
        {
            if (await service.DeleteAsync(k, n, force, ct).ConfigureAwait(false))
            {
                await ctx.Out.WriteLineAsync($"Successfully deleted 1 '{k}' resource(s): {n}").ConfigureAwait(false);
                if (k == "Node" && service.LastNodeRelease is { } released)
                    await ctx.Out.WriteLineAsync($"Released node {n}'s IPAM: {released.Addresses} address(es), {released.Blocks} block(s)" +
                        (released.Kept.Count == 0 ? "" : $"; kept {released.Kept.Count} address(es) of pods that still have endpoints (released when they are deleted)")).ConfigureAwait(false);
            }
            else
            {
                failed++;
                await ctx.Err.WriteLineAsync($"error: {k} {n} not found").ConfigureAwait(false);
            }
        }
        if (wait is { } timeout && failed < targets.Count)
            await WaitAsync(ctx, store, service.LastRevision, targets.Select(t => t.Kind), timeout, ct).ConfigureAwait(false);
        return failed == 0 ? 0 : 1;
    }

    public static async Task<int> GetAsync(CtlContext ctx, string kind, string? name, string output, CancellationToken ct)
    {
        using var store = ctx.OpenStore();
        var service = new ResourceService(store);
        switch (ResourceService.NormaliseKind(kind))
        {
            case "IPPool":
            {
                var pools = (await service.ListPoolsAsync(ct).ConfigureAwait(false)).Where(p => name is null || p.Name == name).ToList();
                if (name is not null && pools.Count == 0) return NotFound(ctx, "IPPool", name);
                if (WriteDocuments(ctx, pools.Select(DocumentWriter.ToDocument).ToList(), output, name is null)) return 0;
                var usage = (await new IpamInspector(store).UsageAsync(ct).ConfigureAwait(false)).ToDictionary(u => u.Pool.Name, StringComparer.Ordinal);
                var wide = output == "wide";
                var table = wide
                    ? new TextTable("NAME", "CIDR", "SELECTOR", "BLOCKSIZE", "NAT", "ENCAPSULATION", "DISABLED", "USAGE")
                    : new TextTable("NAME", "CIDR", "SELECTOR");
                foreach (var p in pools)
                {
                    if (!wide) { table.Add(p.Name, p.Cidr, p.NodeSelector); continue; }
                    var u = usage.GetValueOrDefault(p.Name);
                    var inUse = u?.InUse ?? 0;
                    table.Add(p.Name, p.Cidr, p.NodeSelector, p.BlockSize.ToString(System.Globalization.CultureInfo.InvariantCulture),
                        p.NatOutgoing ? "true" : "false", p.Encapsulation, p.Disabled ? "true" : "false",
                        $"{inUse}/{p.Network.Size} ({Percent((UInt128)inUse, p.Network.Size)})");
                }
                await ctx.Out.WriteAsync(table.Render()).ConfigureAwait(false);
                return 0;
            }
            case "IPReservation":
            {
                var list = (await service.ListReservationsAsync(ct).ConfigureAwait(false)).Where(r => name is null || r.Name == name).ToList();
                if (name is not null && list.Count == 0) return NotFound(ctx, "IPReservation", name);
                if (WriteDocuments(ctx, list.Select(DocumentWriter.ToDocument).ToList(), output, name is null)) return 0;
                var table = new TextTable("NAME", "RESERVED CIDRS");
                foreach (var r in list) table.Add(r.Name, string.Join(",", r.ReservedCIDRs));
                await ctx.Out.WriteAsync(table.Render()).ConfigureAwait(false);
                return 0;
            }
            case "Node":
            {
                var list = (await store.ListRecordsAsync(Keys.Nodes, ModelJson.Default.NodeRecord, ct).ConfigureAwait(false)).Where(n => name is null || n.Name == name).ToList();
                if (name is not null && list.Count == 0) return NotFound(ctx, "Node", name);
                var table = new TextTable("NAME", "UNDERLAY", "BACKEND", "VTEP", "MTU");
                foreach (var n in list) table.Add(n.Name, n.UnderlayAddress ?? "-", n.Backend ?? "-", n.VtepAddress ?? "-", n.Mtu.ToString(System.Globalization.CultureInfo.InvariantCulture));
                await ctx.Out.WriteAsync(table.Render()).ConfigureAwait(false);
                return 0;
            }
            case "NetworkPolicy" or "KubernetesNetworkPolicy" or "GlobalNetworkPolicy" or "Tier" or "Namespace" or "Pod" or "Installation":
                return await GetDocumentsAsync(ctx, store, ResourceService.NormaliseKind(kind), name, output, ct).ConfigureAwait(false);
            default:
                if (kind.ToLowerInvariant() is "block" or "blocks" or "ipamblock" or "ipamblocks")
                    return await IpamCommands.BlocksAsync(ctx, store, output, ct).ConfigureAwait(false);
                throw new ResourceException($"unknown resource type '{kind}'; try ippool, ipreservation, blocks, nodes, networkpolicy, globalnetworkpolicy, tier, namespace or pod");
        }
    }

    /// <summary>Stored documents (policies, tiers, namespaces, pods) as applied; a table by default.</summary>
    private static async Task<int> GetDocumentsAsync(CtlContext ctx, Weft.Datastore.IDatastore store, string kind, string? name, string output, CancellationToken ct)
    {
        var prefixes = kind switch
        {
            // `get networkpolicy` lists both dialects, as an operator switching from kubectl expects.
            "NetworkPolicy" or "KubernetesNetworkPolicy" => new[] { Keys.Policies + "np/", Keys.Policies + "knp/" },
            "GlobalNetworkPolicy" => [Keys.Policies + "gnp/"],
            "Tier" => [Keys.Tiers],
            "Installation" => [Keys.Installations],
            "Namespace" => [Keys.K8sNamespaces],
            _ => [Keys.K8sPods],
        };
        var docs = new List<(string Key, JsonObject Doc)>();
        foreach (var prefix in prefixes)
            foreach (var kv in (await store.ListAsync(prefix, ct).ConfigureAwait(false)).Items)
                if (JsonNode.Parse(kv.Value) is JsonObject o) docs.Add((kv.Key[prefix.Length..], o));
        if (name is not null)
        {
            docs = docs.Where(d => d.Key == name || d.Key == "default/" + name || d.Key.EndsWith("/" + name, StringComparison.Ordinal) && !name.Contains('/', StringComparison.Ordinal)).ToList();
            if (docs.Count == 0) return NotFound(ctx, kind, name);
        }
        if (WriteDocuments(ctx, docs.Select(d => d.Doc).ToList(), output, name is null)) return 0;
        var table = kind switch
        {
            "Namespace" => new TextTable("NAME", "LABELS"),
            "Pod" => new TextTable("NAMESPACE", "NAME", "IP", "LABELS"),
            "Tier" => new TextTable("NAME", "ORDER"),
            "Installation" => new TextTable("NAME", "LINUXDATAPLANE"),
            _ => new TextTable("NAMESPACE", "NAME", "DIALECT", "ORDER", "SELECTOR", "TYPES"),
        };
        foreach (var (key, doc) in docs)
        {
            var meta = doc["metadata"] as JsonObject;
            var labels = meta?["labels"] is JsonObject l ? string.Join(",", l.Select(kv => $"{kv.Key}={kv.Value}")) : "";
            var spec = doc["spec"] as JsonObject;
            switch (kind)
            {
                case "Namespace": table.Add(key, labels); break;
                case "Pod": table.Add(meta?["namespace"]?.ToString() ?? "default", meta?["name"]?.ToString() ?? key, doc["status"]?["podIP"]?.ToString() ?? "-", labels); break;
                case "Tier": table.Add(key, spec?["order"]?.ToString() ?? "-"); break;
                case "Installation": table.Add(key, spec?["calicoNetwork"]?["linuxDataplane"]?.ToString() ?? "Iptables"); break;
                default:
                    var kubernetes = doc["apiVersion"]?.ToString() == "networking.k8s.io/v1";
                    var types = kubernetes
                        ? spec?["policyTypes"] is JsonArray pt ? string.Join(",", pt) : "Ingress" + (spec?["egress"] is not null ? ",Egress" : "")
                        : spec?["types"] is JsonArray t ? string.Join(",", t) : "-";
                    var selector = kubernetes ? spec?["podSelector"]?.ToJsonString() ?? "{}" : spec?["selector"]?.ToString() ?? "all()";
                    table.Add(meta?["namespace"]?.ToString() ?? "-", meta?["name"]?.ToString() ?? key, kubernetes ? "kubernetes" : "calico",
                        kubernetes ? "1000" : spec?["order"]?.ToString() ?? "-", selector, types);
                    break;
            }
        }
        await ctx.Out.WriteAsync(table.Render()).ConfigureAwait(false);
        return 0;
    }

    private static bool WriteDocuments(CtlContext ctx, IReadOnlyList<JsonObject> docs, string output, bool asList)
    {
        switch (output)
        {
            case "json": ctx.Out.Write(DocumentWriter.Json(docs, asList)); return true;
            case "yaml": ctx.Out.Write(DocumentWriter.Yaml(docs, asList)); return true;
            case "" or "wide" or "table": return false;
            default: throw new ResourceException($"-o {output}: unknown output format; use wide, json or yaml");
        }
    }

    private static int NotFound(CtlContext ctx, string kind, string name)
    {
        ctx.Err.WriteLine($"error: {kind} {name} not found");
        return 1;
    }

    public static string Percent(UInt128 part, UInt128 total) =>
        total == 0 ? "0%" : $"{(double)part / (double)total * 100:0.##}%";
}
