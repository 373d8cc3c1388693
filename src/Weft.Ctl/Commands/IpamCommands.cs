using System.Globalization;
using System.Net;
using System.Text.Json;
using System.Text.Json.Nodes;
using Weft.Client.Output;
using Weft.Datastore;
using Weft.Ipam;
using Weft.Resources;

namespace Weft.Ctl.Commands;

/// <summary>ipam show, ipam check, ipam release, get blocks.</summary>
public static class IpamCommands
{
    public static async Task<int> ShowAsync(CtlContext ctx, string? ip, bool showBlocks, CancellationToken ct)
    {
        using var store = ctx.OpenStore();
        var inspector = new IpamInspector(store);
        if (ip is not null)
        {
            if (!IPAddress.TryParse(ip, out var addr)) throw new ResourceException($"--ip '{ip}' is not an IP address");
            var found = await inspector.FindAsync(addr, ct).ConfigureAwait(false);
            if (found is null)
            {
                await ctx.Out.WriteLineAsync($"IP {addr} is not currently assigned").ConfigureAwait(false);
                return 0;
            }
            await ctx.Out.WriteLineAsync($"IP {addr} is in use").ConfigureAwait(false);
            await ctx.Out.WriteLineAsync($"Pool: {found.Pool}").ConfigureAwait(false);
            await ctx.Out.WriteLineAsync($"Block: {found.Block} (affinity {found.Affinity ?? "none"})").ConfigureAwait(false);
            await ctx.Out.WriteLineAsync($"Handle: {found.Handle}").ConfigureAwait(false);
            await ctx.Out.WriteLineAsync("Attributes:").ConfigureAwait(false);
            foreach (var (k, v) in found.Attributes.OrderBy(p => p.Key, StringComparer.Ordinal))
                await ctx.Out.WriteLineAsync($"  {k}: {v}").ConfigureAwait(false);
            return 0;
        }
        var table = new TextTable("GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS FREE");
        foreach (var u in await inspector.UsageAsync(ct).ConfigureAwait(false))
        {
            AddRow(table, "IP Pool", u.Pool.Cidr, u.Total, (UInt128)u.InUse);
            if (!showBlocks) continue;
            foreach (var b in u.Blocks) AddRow(table, "Block", b.Cidr.ToString(), b.Total, (UInt128)b.InUse);
        }
        await ctx.Out.WriteAsync(table.RenderBoxed()).ConfigureAwait(false);
        return 0;
    }

    private static void AddRow(TextTable table, string grouping, string cidr, UInt128 total, UInt128 inUse) =>
        table.Add(grouping, cidr, total.ToString(CultureInfo.InvariantCulture), $"{inUse} ({ResourceCommands.Percent(inUse, total)})",
            $"{total - inUse} ({ResourceCommands.Percent(total - inUse, total)})");

    public static async Task<int> BlocksAsync(CtlContext ctx, IDatastore store, string output, CancellationToken ct)
    {
        var usage = await new IpamInspector(store).UsageAsync(ct).ConfigureAwait(false);
        var blocks = usage.SelectMany(u => u.Blocks.Select(b => (Pool: u.Pool.Name, Block: b))).ToList();
        if (output == "json")
        {
            var arr = new JsonArray(blocks.Select(b => (JsonNode?)new JsonObject
            {
                ["cidr"] = b.Block.Cidr.ToString(), ["pool"] = b.Pool, ["affinity"] = b.Block.Affinity,
                ["total"] = (long)b.Block.Total, ["inUse"] = b.Block.InUse,
            }).ToArray());
            await ctx.Out.WriteLineAsync(arr.ToJsonString(new JsonSerializerOptions { WriteIndented = true })).ConfigureAwait(false);
            return 0;
        }
        var table = new TextTable("CIDR", "POOL", "AFFINITY", "IN USE", "FREE");
        foreach (var (pool, b) in blocks)
            table.Add(b.Cidr.ToString(), pool, b.Affinity is null ? "-" : "host:" + b.Affinity, b.InUse.ToString(CultureInfo.InvariantCulture),
                (b.Total - (UInt128)b.InUse).ToString(CultureInfo.InvariantCulture));
        await ctx.Out.WriteAsync(table.Render()).ConfigureAwait(false);
        return 0;
    }

    public static async Task<int> CheckAsync(CtlContext ctx, TimeSpan grace, string output, CancellationToken ct)
    {
        using var store = ctx.OpenStore();
        var report = await new IpamInspector(store).CheckAsync(grace, File.Exists, ct).ConfigureAwait(false);
        if (output == "json")
        {
            var obj = new JsonObject
            {
                ["allocations"] = report.Allocations, ["handles"] = report.Handles, ["endpoints"] = report.Endpoints,
                ["problems"] = new JsonArray(report.Problems.Select(p => (JsonNode?)new JsonObject
                {
                    ["kind"] = p.Kind, ["detail"] = p.Detail, ["handle"] = p.Handle, ["address"] = p.Address?.ToString(), ["node"] = p.Node,
                }).ToArray()),
            };
            await ctx.Out.WriteLineAsync(obj.ToJsonString(new JsonSerializerOptions { WriteIndented = true })).ConfigureAwait(false);
            return 0;
        }
        await ctx.Out.WriteLineAsync($"Checking IPAM state in {store.Describe}").ConfigureAwait(false);
        await ctx.Out.WriteLineAsync($"Found {report.Allocations} allocations, {report.Handles} handles, {report.Endpoints} endpoints.").ConfigureAwait(false);
        if (report.Problems.Count == 0)
        {
            await ctx.Out.WriteLineAsync("No problems found.").ConfigureAwait(false);
            return 0;
        }
        await ctx.Out.WriteLineAsync($"Found {report.Problems.Count} problem(s), {report.Leaks.Count()} leaked address(es):").ConfigureAwait(false);
        foreach (var p in report.Problems)
            await ctx.Out.WriteLineAsync($"  [{p.Kind}] {p.Detail}").ConfigureAwait(false);
        return 0;
    }

    public static async Task<int> ReleaseAsync(CtlContext ctx, IReadOnlyList<string> ips, CancellationToken ct)
    {
        using var store = ctx.OpenStore();
        var ipam = new IpamService(store);
        var failed = 0;
        foreach (var text in ips)
        {
            if (!IPAddress.TryParse(text, out var ip)) throw new ResourceException($"--ip '{text}' is not an IP address");
            var handle = await ipam.ReleaseAddressAsync(ip, ct).ConfigureAwait(false);
            if (handle is null)
            {
                failed++;
                await ctx.Err.WriteLineAsync($"error: {ip} is not allocated").ConfigureAwait(false);
            }
            else await ctx.Out.WriteLineAsync($"Released {ip} (was held by {handle})").ConfigureAwait(false);
        }
        return failed == 0 ? 0 : 1;
    }
}
