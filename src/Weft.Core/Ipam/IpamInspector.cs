using System.Net;
using Weft.Datastore;
using Weft.Model;

namespace Weft.Ipam;

public sealed record BlockUsage(Cidr Cidr, string? Affinity, UInt128 Total, int InUse);

public sealed record PoolUsage(IPPool Pool, UInt128 Total, long InUse, IReadOnlyList<BlockUsage> Blocks);

public sealed record AllocationInfo(IPAddress Address, string Handle, IReadOnlyDictionary<string, string> Attributes, Cidr Block, string? Affinity, string Pool = "");

/// <summary>One inconsistency found by <see cref="IpamInspector.CheckAsync"/>.</summary>
public sealed record IpamProblem(string Kind, string Detail, string? Handle = null, IPAddress? Address = null, string? Node = null);

public sealed record IpamCheckReport(int Allocations, int Handles, int Endpoints, IReadOnlyList<IpamProblem> Problems)
{
    public IEnumerable<IpamProblem> Leaks => Problems.Where(p => p.Kind == IpamInspector.Leaked);
}

/// <summary>Read-only views of IPAM state for operators: usage per pool and block, one address, consistency.</summary>
public sealed class IpamInspector(IDatastore store)
{
    public const string Leaked = "leaked";
    public const string MissingHandle = "missing-handle";
    public const string DanglingHandle = "dangling-handle";
    public const string Duplicate = "duplicate-address";
    public const string OrphanBlock = "block-outside-pools";
    public const string StaleEndpoint = "stale-endpoint";
    public const string EndpointWithoutAllocation = "endpoint-without-allocation";

    private async Task<(List<IPPool> Pools, List<AllocationBlock> Blocks)> LoadAsync(CancellationToken ct)
    {
        var pools = await store.ListRecordsAsync(Keys.Pools, ModelJson.Default.IPPool, ct).ConfigureAwait(false);
        var blocks = await store.ListRecordsAsync(Keys.Blocks, ModelJson.Default.AllocationBlock, ct).ConfigureAwait(false);
        return (pools, blocks);
    }

    public async Task<IReadOnlyList<PoolUsage>> UsageAsync(CancellationToken ct = default)
    {
        var (pools, blocks) = await LoadAsync(ct).ConfigureAwait(false);
        return pools.Select(p =>
        {
            var mine = blocks.Where(b => p.Network.Contains(b.Network))
                .Select(b => new BlockUsage(b.Network, b.Affinity, b.Network.Size, b.Allocations.Count)).OrderBy(b => b.Cidr).ToList();
            return new PoolUsage(p, p.Network.Size, mine.Sum(b => (long)b.InUse), mine);
        }).ToList();
    }

    public async Task<IReadOnlyList<AllocationInfo>> AllocationsAsync(CancellationToken ct = default)
    {
        var (_, blocks) = await LoadAsync(ct).ConfigureAwait(false);
        return blocks.SelectMany(b => b.Allocations.Select(a =>
            new AllocationInfo(b.Network.AddressAt((UInt128)a.Ordinal), a.Handle, a.Attributes, b.Network, b.Affinity, b.Pool))).ToList();
    }

    public async Task<AllocationInfo?> FindAsync(IPAddress ip, CancellationToken ct = default) =>
        (await AllocationsAsync(ct).ConfigureAwait(false)).FirstOrDefault(a => a.Address.Equals(ip));

    /// <summary>
    /// Cross-checks blocks, handles and endpoints. An allocation whose handle has no endpoint and is older than
    /// <paramref name="grace"/> is a leak (an ADD that died before finishing, or a pod removed without DEL).
    /// </summary>
    public async Task<IpamCheckReport> CheckAsync(TimeSpan grace, Func<string, bool>? netnsExists = null, CancellationToken ct = default)
    {
        var (pools, blocks) = await LoadAsync(ct).ConfigureAwait(false);
        var handles = (await store.ListRecordsAsync(Keys.Handles, ModelJson.Default.IpamHandle, ct).ConfigureAwait(false)).ToDictionary(h => h.Id, StringComparer.Ordinal);
        var endpoints = (await store.ListRecordsAsync(Keys.Endpoints, ModelJson.Default.WorkloadEndpoint, ct).ConfigureAwait(false))
            .ToDictionary(e => Keys.HandleId(e.Network, e.ContainerId, e.IfName), StringComparer.Ordinal);
        var nodes = (await store.ListRecordsAsync(Keys.Nodes, ModelJson.Default.NodeRecord, ct).ConfigureAwait(false)).Select(n => n.Name).ToHashSet(StringComparer.Ordinal);
        var problems = new List<IpamProblem>();
        var seen = new Dictionary<IPAddress, string>();
        var held = new Dictionary<string, List<IPAddress>>(StringComparer.Ordinal);
        var now = DateTime.UtcNow;
        var allocations = 0;

        foreach (var b in blocks)
        {
            if (!pools.Any(p => p.Network.Contains(b.Network)))
                problems.Add(new IpamProblem(OrphanBlock, $"block {b.Network} (node {b.Affinity ?? "-"}) is in no IP pool", Node: b.Affinity));
            foreach (var a in b.Allocations)
            {
                allocations++;
                var ip = b.Network.AddressAt((UInt128)a.Ordinal);
                if (!seen.TryAdd(ip, a.Handle))
                    problems.Add(new IpamProblem(Duplicate, $"{ip} is allocated twice: to {seen[ip]} and to {a.Handle}", a.Handle, ip));
                (held.TryGetValue(a.Handle, out var l) ? l : held[a.Handle] = []).Add(ip);
                var node = a.Attributes.GetValueOrDefault("node") ?? b.Affinity;
                if (!handles.ContainsKey(a.Handle))
                    problems.Add(new IpamProblem(MissingHandle, $"{ip} is held by handle {a.Handle}, which does not exist", a.Handle, ip, node));
                if (a.Handle.StartsWith(IpamService.GatewayHandlePrefix, StringComparison.Ordinal)) continue;
                // A node's tunnel address belongs to the node while it is registered, not to a pod.
                if (a.Handle.StartsWith(IpamService.TunnelHandlePrefix, StringComparison.Ordinal) && nodes.Contains(a.Handle[IpamService.TunnelHandlePrefix.Length..])) continue;
                var age = a.Attributes.TryGetValue("time", out var t) && DateTime.TryParse(t, null, System.Globalization.DateTimeStyles.RoundtripKind, out var when)
                    ? now - when : TimeSpan.MaxValue;
                if (!endpoints.ContainsKey(a.Handle) && age >= grace)
                    problems.Add(new IpamProblem(Leaked, $"{ip} is allocated to {a.Handle} (pod {Pod(a.Attributes)}) but no endpoint exists for it; " +
                        "release it with CNI GC or `weftctl ipam release --ip " + ip + "`", a.Handle, ip, node));
            }
        }
        foreach (var h in handles.Values)
            if (!held.ContainsKey(h.Id))
                problems.Add(new IpamProblem(DanglingHandle, $"handle {h.Id} records blocks {string.Join(", ", h.Blocks.Keys)} but holds no address", h.Id, Node: h.Node));
        foreach (var (id, ep) in endpoints)
        {
            if (!held.ContainsKey(id) && ep.Addresses.Count > 0 && IsWeftManaged(ep, blocks))
                problems.Add(new IpamProblem(EndpointWithoutAllocation, $"endpoint {id} on {ep.Node} uses {string.Join(", ", ep.Addresses)} but IPAM holds nothing for it", id, Node: ep.Node));
            if (netnsExists is not null && ep.Netns is { Length: > 0 } ns && !netnsExists(ns))
                problems.Add(new IpamProblem(StaleEndpoint, $"endpoint {id} on {ep.Node}: its network namespace {ns} is gone (pod removed without CNI DEL)", id, Node: ep.Node));
        }
        return new IpamCheckReport(allocations, handles.Count, endpoints.Count, problems);
    }

    /// <summary>Endpoints whose addresses came from a delegated IPAM plugin are not ours to account for.</summary>
    private static bool IsWeftManaged(WorkloadEndpoint ep, List<AllocationBlock> blocks) =>
        ep.Addresses.Any(a => Cidr.TryParse(a, out var c) && blocks.Any(b => b.Network.Contains(c.NetworkAddress)));

    private static string Pod(IReadOnlyDictionary<string, string> attrs) =>
        attrs.TryGetValue("pod", out var p) && p.Length > 0 ? $"{attrs.GetValueOrDefault("namespace")}/{p}" : "unknown";
}
