using System.Net;
using System.Net.Sockets;
using Weft.Datastore;
using Weft.Model;
using Weft.Model.Selectors;

namespace Weft.Ipam;

/// <summary>Who asks for addresses: one pod interface on one node.</summary>
public sealed record AssignRequest(string HandleId, string Node)
{
    public string Network { get; init; } = "";
    public string ContainerId { get; init; } = "";
    public string IfName { get; init; } = "";
    public bool IPv4 { get; init; } = true;
    public bool IPv6 { get; init; } = true;
    /// <summary>Specific addresses wanted (CNI_ARGS IP=, the ips capability, Calico's ipAddrs annotation).</summary>
    public IReadOnlyList<IPAddress> Requested { get; init; } = [];
    public IReadOnlyDictionary<string, string> Attributes { get; init; } = new Dictionary<string, string>();
    /// <summary>Bridge mode: a block claimed for this request also reserves its first free address as the gateway.</summary>
    public bool ReserveBlockGateway { get; init; }
}

/// <summary>One address given to a handle, with the block and pool it came from.</summary>
public sealed record AssignedAddress(IPAddress Address, Cidr Block, string PoolName, Cidr Pool)
{
    public AddressFamily Family => Address.AddressFamily;
}

/// <summary>
/// Calico-style block IPAM over the datastore. Every change is one transaction guarded by the mod revisions of
/// the block and the handle it touches, so concurrent plugins (kubelet runs ADDs in parallel) and crashes at any
/// point can never produce one address for two handles: a killed writer either committed both records or neither.
/// </summary>
public sealed class IpamService(IDatastore store)
{
    private const int MaxAttempts = 64;

    public async Task<IReadOnlyList<AssignedAddress>> AssignAsync(AssignRequest request, CancellationToken ct = default)
    {
        var pools = await LoadPoolsAsync(ct).ConfigureAwait(false);
        var existing = await GetByHandleAsync(request.HandleId, ct).ConfigureAwait(false);
        var result = new List<AssignedAddress>();
        var families = new List<AddressFamily>();
        if (request.Requested.Count > 0)
        {
            foreach (var ip in request.Requested)
            {
                var held = existing.FirstOrDefault(a => a.Address.Equals(ip));
                result.Add(held ?? await AssignSpecificAsync(request, ip, pools, ct).ConfigureAwait(false));
            }
            return result;
        }
        var nodeLabels = await NodeLabelsAsync(request.Node, ct).ConfigureAwait(false);
        if (request.IPv4) families.Add(AddressFamily.InterNetwork);
        if (request.IPv6) families.Add(AddressFamily.InterNetworkV6);
        var usable = pools.Where(p => p.UsableForWorkloads && SelectsNode(p, nodeLabels)).ToList();
        var wanted = families.Where(f => usable.Any(p => p.Network.Family == f)).ToList();
        if (wanted.Count == 0)
            throw new NoPoolException(families.Count == 1 ? families[0] : AddressFamily.InterNetwork, request.Node);
        foreach (var family in wanted)
        {
            // A repeated ADD for the same interface gets the addresses it already holds.
            var held = existing.FirstOrDefault(a => a.Family == family);
            result.Add(held ?? await AutoAssignAsync(request, family, usable.Where(p => p.Network.Family == family).ToList(), ct).ConfigureAwait(false));
        }
        return result;
    }

    private async Task<AssignedAddress> AutoAssignAsync(AssignRequest request, AddressFamily family, List<IPPool> pools, CancellationToken ct)
    {
        var reservations = await LoadReservationsAsync(ct).ConfigureAwait(false);
        for (var attempt = 0; attempt < MaxAttempts; attempt++)
        {
            // Read before the affinities: a claim commits only if no other claim for this node landed since, so
            // parallel first ADDs on a fresh node share one block instead of each winning a block of its own.
            var claimRevision = (await store.GetAsync(Keys.BlockClaim(request.Node), ct).ConfigureAwait(false))?.ModRevision ?? 0;
            // 1. Blocks this node already owns.
            var affinities = await store.ListAsync(Keys.NodeAffinities(request.Node), ct).ConfigureAwait(false);
            foreach (var kv in affinities.Items)
            {
                var cidr = Cidr.FromKey(kv.Key[(kv.Key.LastIndexOf('/') + 1)..]);
                var pool = pools.FirstOrDefault(p => p.Network.Contains(cidr));
                if (cidr.Family != family || pool is null) continue;
                var blockKv = await store.GetAsync(Keys.Block(cidr), ct).ConfigureAwait(false);
                if (blockKv is null) continue;
                var block = Codec.Decode<AllocationBlock>(blockKv.Value, blockKv.Key);
                var ordinal = FindFree(block, pool, reservations);
                if (ordinal < 0) continue;
                var outcome = await TryAllocateAsync(request, block, blockKv.ModRevision, ordinal, pool, newAffinity: false, ct).ConfigureAwait(false);
                if (outcome is not null) return outcome;
                goto retry;
            }

            // 2. Claim a free block from a pool.
            var allBlocks = await store.ListAsync(Keys.Blocks, ct).ConfigureAwait(false);
            var taken = new HashSet<string>(allBlocks.Items.Select(i => i.Key), StringComparer.Ordinal);
            foreach (var pool in pools)
            {
                var net = pool.Network;
                var count = net.SubnetCount(pool.BlockSize);
                // Start at a node-dependent offset so nodes racing for blocks rarely pick the same one.
                var start = (UInt128)(uint)StableHash(request.Node) % count;
                for (UInt128 i = 0; i < count && i < 1_000_000; i++)
                {
                    var cidr = net.Subnet(pool.BlockSize, (start + i) % count);
                    if (taken.Contains(Keys.Block(cidr))) continue;
                    var block = new AllocationBlock { Cidr = cidr.ToString(), Affinity = request.Node, Pool = pool.Name };
                    IpamHandle? gatewayHandle = null;
                    if (request.ReserveBlockGateway && FindFree(block, pool, reservations) is var gw and >= 0)
                    {
                        gatewayHandle = new IpamHandle { Id = GatewayHandleId(cidr), Node = request.Node, Blocks = { [cidr.ToString()] = 1 }, Created = DateTime.UtcNow.ToString("O") };
                        block.Allocations.Add(new BlockAllocation { Ordinal = gw, Handle = gatewayHandle.Id, Attributes = { ["node"] = request.Node, ["use"] = "gateway" } });
                    }
                    var ordinal = FindFree(block, pool, reservations);
                    if (ordinal < 0) continue;
                    var outcome = await TryAllocateAsync(request, block, 0, ordinal, pool, newAffinity: true, ct, gatewayHandle, claimRevision).ConfigureAwait(false);
                    if (outcome is not null) return outcome;
                    goto retry;
                }
            }

            // 3. Borrow a free address from another node's block.
            foreach (var kv in allBlocks.Items)
            {
                var block = Codec.Decode<AllocationBlock>(kv.Value, kv.Key);
                var cidr = block.Network;
                var pool = pools.FirstOrDefault(p => p.Network.Contains(cidr));
                if (pool is null || cidr.Family != family || block.Affinity == request.Node) continue;
                var ordinal = FindFree(block, pool, reservations);
                if (ordinal < 0) continue;
                var outcome = await TryAllocateAsync(request, block, kv.ModRevision, ordinal, pool, newAffinity: false, ct).ConfigureAwait(false);
                if (outcome is not null) return outcome;
                goto retry;
            }
            throw new PoolExhaustedException(family, request.Node);
        retry:
            await Task.Delay(Random.Shared.Next(1, 5 + attempt), ct).ConfigureAwait(false);
        }
        throw new IpamException(IpamCodes.Conflict, $"gave up allocating an address for {request.HandleId} after {MaxAttempts} conflicting concurrent updates; retry");
    }

    private async Task<AssignedAddress> AssignSpecificAsync(AssignRequest request, IPAddress ip, IReadOnlyList<IPPool> pools, CancellationToken ct)
    {
        var pool = pools.FirstOrDefault(p => p.Network.Contains(ip))
            ?? throw new IpamException(IpamCodes.AddressUnavailable, $"requested address {ip} is in no IP pool; pools: {string.Join(", ", pools.Select(p => p.Cidr))}");
        if (pool.Disabled)
            throw new IpamException(IpamCodes.AddressUnavailable, $"requested address {ip} is in pool {pool.Name}, which is disabled");
        var reservations = await LoadReservationsAsync(ct).ConfigureAwait(false);
        foreach (var reserved in reservations.Where(r => r.Contains(ip)))
            throw new IpamException(IpamCodes.AddressUnavailable, $"requested address {ip} is reserved by an IPReservation ({reserved})");
        var cidr = Cidr.Enclosing(ip, pool.BlockSize);
        for (var attempt = 0; attempt < MaxAttempts; attempt++)
        {
            var kv = await store.GetAsync(Keys.Block(cidr), ct).ConfigureAwait(false);
            var block = kv is null
                ? new AllocationBlock { Cidr = cidr.ToString(), Affinity = request.Node, Pool = pool.Name }
                : Codec.Decode<AllocationBlock>(kv.Value, kv.Key);
            var ordinal = (int)cidr.OffsetOf(ip);
            if (block.Allocations.FirstOrDefault(a => a.Ordinal == ordinal) is { } holder)
                throw new IpamException(IpamCodes.AddressUnavailable, $"requested address {ip} is already in use (handle {holder.Handle})");
            var outcome = await TryAllocateAsync(request, block, kv?.ModRevision ?? 0, ordinal, pool, newAffinity: kv is null, ct).ConfigureAwait(false);
            if (outcome is not null) return outcome;
            await Task.Delay(Random.Shared.Next(1, 5 + attempt), ct).ConfigureAwait(false);
        }
        throw new IpamException(IpamCodes.Conflict, $"gave up allocating {ip} for {request.HandleId} after {MaxAttempts} conflicting concurrent updates; retry");
    }

    /// <summary>One compare-and-swap: the block (and its affinity when new) plus the handle. Null on conflict.</summary>
    private async Task<AssignedAddress?> TryAllocateAsync(AssignRequest request, AllocationBlock block, long blockRevision, int ordinal, IPPool pool, bool newAffinity, CancellationToken ct, IpamHandle? extraHandle = null, long claimRevision = -1)
    {
        var cidr = block.Network;
        var handleKey = Keys.Handle(request.HandleId);
        var handleKv = await store.GetAsync(handleKey, ct).ConfigureAwait(false);
        var handle = handleKv is null
            ? new IpamHandle
            {
                Id = request.HandleId, Node = request.Node, Network = request.Network, ContainerId = request.ContainerId,
                IfName = request.IfName, Created = DateTime.UtcNow.ToString("O"),
            }
            : Codec.Decode<IpamHandle>(handleKv.Value, handleKey);
        var attrs = new Dictionary<string, string>(request.Attributes) { ["node"] = request.Node, ["time"] = DateTime.UtcNow.ToString("O") };
        block.Allocations.Add(new BlockAllocation { Ordinal = ordinal, Handle = request.HandleId, Attributes = attrs });
        block.Allocations.Sort((a, b) => a.Ordinal.CompareTo(b.Ordinal));
        handle.Blocks[cidr.ToString()] = handle.Blocks.GetValueOrDefault(cidr.ToString()) + 1;

        var pre = new List<Precondition> { new(Keys.Block(cidr), blockRevision), new(handleKey, handleKv?.ModRevision ?? 0) };
        var muts = new List<Mutation>
        {
            Mutation.Put(Keys.Block(cidr), Codec.Encode(block)),
            Mutation.Put(handleKey, Codec.Encode(handle)),
        };
        if (newAffinity && block.Affinity is { } owner)
        {
            pre.Add(Precondition.Absent(Keys.Affinity(owner, cidr)));
            muts.Add(Mutation.Put(Keys.Affinity(owner, cidr), "{}"u8.ToArray()));
            if (claimRevision >= 0) pre.Add(new Precondition(Keys.BlockClaim(owner), claimRevision));
            muts.Add(Mutation.Put(Keys.BlockClaim(owner), System.Text.Encoding.UTF8.GetBytes($"{{\"block\":\"{cidr}\"}}")));
        }
        if (extraHandle is not null)
        {
            pre.Add(Precondition.Absent(Keys.Handle(extraHandle.Id)));
            muts.Add(Mutation.Put(Keys.Handle(extraHandle.Id), Codec.Encode(extraHandle)));
        }
        var txn = await store.CommitAsync(pre, muts, ct).ConfigureAwait(false);
        return txn.Succeeded ? new AssignedAddress(cidr.AddressAt((UInt128)ordinal), cidr, pool.Name, pool.Network) : null;
    }

    /// <summary>The lowest free ordinal in the block, skipping reservations and the pool's own network/broadcast.</summary>
    private static int FindFree(AllocationBlock block, IPPool pool, IReadOnlyList<Cidr> reservations)
    {
        var cidr = block.Network;
        var used = new HashSet<int>(block.Allocations.Select(a => a.Ordinal));
        var size = (int)UInt128.Min(cidr.Size, 1 << 20);
        var poolNet = pool.Network;
        var skipEdges = poolNet.IsIPv4 && poolNet.PrefixLength <= 30;
        for (var i = 0; i < size; i++)
        {
            if (used.Contains(i)) continue;
            var ip = cidr.AddressAt((UInt128)i);
            if (skipEdges && (ip.Equals(poolNet.NetworkAddress) || ip.Equals(poolNet.LastAddress))) continue;
            if (reservations.Any(r => r.Contains(ip))) continue;
            return i;
        }
        return -1;
    }

    /// <summary>The handle that holds a block's bridge gateway address.</summary>
    public static string GatewayHandleId(Cidr block) => "weft-gateway." + block.ToKey();

    /// <summary>Bridge mode: the block's gateway address, allocating the lowest free one when the block has none yet.</summary>
    public async Task<IPAddress> EnsureBlockGatewayAsync(Cidr blockCidr, string node, CancellationToken ct = default)
    {
        var id = GatewayHandleId(blockCidr);
        var reservations = await LoadReservationsAsync(ct).ConfigureAwait(false);
        for (var attempt = 0; attempt < MaxAttempts; attempt++)
        {
            var held = await GetByHandleAsync(id, ct).ConfigureAwait(false);
            if (held.Count > 0) return held[0].Address;
            var bkv = await store.GetAsync(Keys.Block(blockCidr), ct).ConfigureAwait(false)
                ?? throw new IpamException(IpamCodes.AddressUnavailable, $"block {blockCidr} vanished while choosing its gateway");
            var block = Codec.Decode<AllocationBlock>(bkv.Value, bkv.Key);
            var poolKv = await store.GetAsync(Keys.Pool(block.Pool), ct).ConfigureAwait(false)
                ?? throw new IpamException(IpamCodes.AddressUnavailable, $"pool {block.Pool} of block {blockCidr} no longer exists");
            var pool = Codec.Decode<IPPool>(poolKv.Value, poolKv.Key);
            var ordinal = FindFree(block, pool, reservations);
            if (ordinal < 0) throw new IpamException(IpamCodes.PoolExhausted, $"block {blockCidr} has no free address left for its bridge gateway");
            var request = new AssignRequest(id, node) { Attributes = new Dictionary<string, string> { ["use"] = "gateway" } };
            var outcome = await TryAllocateAsync(request, block, bkv.ModRevision, ordinal, pool, newAffinity: false, ct).ConfigureAwait(false);
            if (outcome is not null) return outcome.Address;
            await Task.Delay(Random.Shared.Next(1, 5 + attempt), ct).ConfigureAwait(false);
        }
        throw new IpamException(IpamCodes.Conflict, $"gave up choosing a gateway for block {blockCidr}; retry");
    }

    public async Task<IReadOnlyList<AssignedAddress>> GetByHandleAsync(string handleId, CancellationToken ct = default)
    {
        var kv = await store.GetAsync(Keys.Handle(handleId), ct).ConfigureAwait(false);
        if (kv is null) return [];
        var handle = Codec.Decode<IpamHandle>(kv.Value, kv.Key);
        var result = new List<AssignedAddress>();
        foreach (var blockCidr in handle.Blocks.Keys)
        {
            var cidr = Cidr.Parse(blockCidr);
            var bkv = await store.GetAsync(Keys.Block(cidr), ct).ConfigureAwait(false);
            if (bkv is null) continue;
            var block = Codec.Decode<AllocationBlock>(bkv.Value, bkv.Key);
            var poolKv = await store.GetAsync(Keys.Pool(block.Pool), ct).ConfigureAwait(false);
            var poolNet = poolKv is null ? cidr : Codec.Decode<IPPool>(poolKv.Value, poolKv.Key).Network;
            foreach (var a in block.Allocations.Where(a => a.Handle == handleId))
                result.Add(new AssignedAddress(cidr.AddressAt((UInt128)a.Ordinal), cidr, block.Pool, poolNet));
        }
        return result;
    }

    /// <summary>Release every address a handle holds. Returns how many; 0 when the handle is unknown.</summary>
    public async Task<int> ReleaseAsync(string handleId, CancellationToken ct = default)
    {
        var released = 0;
        for (var attempt = 0; attempt < MaxAttempts; attempt++)
        {
            var handleKey = Keys.Handle(handleId);
            var hkv = await store.GetAsync(handleKey, ct).ConfigureAwait(false);
            if (hkv is null) return released;
            var handle = Codec.Decode<IpamHandle>(hkv.Value, handleKey);
            if (handle.Blocks.Count == 0)
            {
                await store.DeleteAsync(handleKey, hkv.ModRevision, ct).ConfigureAwait(false);
                continue;
            }
            // One block per transaction, each also rewriting the handle, so a crash in between leaves the handle
            // pointing only at blocks that still hold its addresses.
            var blockCidr = handle.Blocks.Keys.First();
            var cidr = Cidr.Parse(blockCidr);
            var bkv = await store.GetAsync(Keys.Block(cidr), ct).ConfigureAwait(false);
            handle.Blocks.Remove(blockCidr);
            var pre = new List<Precondition> { new(handleKey, hkv.ModRevision) };
            var muts = new List<Mutation>
            {
                handle.Blocks.Count == 0 ? Mutation.Delete(handleKey) : Mutation.Put(handleKey, Codec.Encode(handle)),
            };
            var removed = 0;
            if (bkv is not null)
            {
                var block = Codec.Decode<AllocationBlock>(bkv.Value, bkv.Key);
                removed = block.Allocations.RemoveAll(a => a.Handle == handleId);
                pre.Add(new Precondition(bkv.Key, bkv.ModRevision));
                muts.Add(Mutation.Put(bkv.Key, Codec.Encode(block)));
            }
            var txn = await store.CommitAsync(pre, muts, ct).ConfigureAwait(false);
            if (txn.Succeeded) { released += removed; attempt = 0; }
            else await Task.Delay(Random.Shared.Next(1, 5 + attempt), ct).ConfigureAwait(false);
        }
        throw new IpamException(IpamCodes.Conflict, $"gave up releasing handle {handleId} after {MaxAttempts} conflicting concurrent updates; retry");
    }

    /// <summary>Release one address whoever holds it (operator repair). Returns the handle that held it, or null.</summary>
    public async Task<string?> ReleaseAddressAsync(IPAddress ip, CancellationToken ct = default)
    {
        for (var attempt = 0; attempt < MaxAttempts; attempt++)
        {
            var blocks = await store.ListAsync(Keys.Blocks, ct).ConfigureAwait(false);
            foreach (var kv in blocks.Items)
            {
                var block = Codec.Decode<AllocationBlock>(kv.Value, kv.Key);
                var cidr = block.Network;
                if (!cidr.Contains(ip)) continue;
                var ordinal = (int)cidr.OffsetOf(ip);
                var alloc = block.Allocations.FirstOrDefault(a => a.Ordinal == ordinal);
                if (alloc is null) return null;
                block.Allocations.Remove(alloc);
                var pre = new List<Precondition> { new(kv.Key, kv.ModRevision) };
                var muts = new List<Mutation> { Mutation.Put(kv.Key, Codec.Encode(block)) };
                var hkv = await store.GetAsync(Keys.Handle(alloc.Handle), ct).ConfigureAwait(false);
                if (hkv is not null)
                {
                    var handle = Codec.Decode<IpamHandle>(hkv.Value, hkv.Key);
                    var left = handle.Blocks.GetValueOrDefault(cidr.ToString()) - 1;
                    if (left > 0) handle.Blocks[cidr.ToString()] = left; else handle.Blocks.Remove(cidr.ToString());
                    pre.Add(new Precondition(hkv.Key, hkv.ModRevision));
                    muts.Add(handle.Blocks.Count == 0 ? Mutation.Delete(hkv.Key) : Mutation.Put(hkv.Key, Codec.Encode(handle)));
                }
                if ((await store.CommitAsync(pre, muts, ct).ConfigureAwait(false)).Succeeded) return alloc.Handle;
                goto retry;
            }
            return null;
        retry:;
        }
        throw new IpamException(IpamCodes.Conflict, $"gave up releasing {ip} after {MaxAttempts} conflicting concurrent updates; retry");
    }

    /// <summary>Handles of this node and network whose attachment the runtime no longer lists (CNI GC's candidates).</summary>
    public async Task<IReadOnlyList<IpamHandle>> StaleHandlesAsync(string node, string network, IReadOnlySet<string> validHandleIds, CancellationToken ct = default)
    {
        var handles = await store.ListAsync(Keys.Handles, ct).ConfigureAwait(false);
        return handles.Items.Select(kv => Codec.Decode<IpamHandle>(kv.Value, kv.Key))
            .Where(h => h.Node == node && h.Network == network && !validHandleIds.Contains(h.Id)).ToList();
    }

    /// <summary>CNI GC: release every handle of this node and network whose attachment the runtime no longer lists.</summary>
    public async Task<IReadOnlyList<string>> GarbageCollectAsync(string node, string network, IReadOnlySet<string> validHandleIds, CancellationToken ct = default)
    {
        var released = new List<string>();
        foreach (var handle in await StaleHandlesAsync(node, network, validHandleIds, ct).ConfigureAwait(false))
        {
            await ReleaseAsync(handle.Id, ct).ConfigureAwait(false);
            released.Add(handle.Id);
        }
        return released;
    }

    /// <summary>True when at least one usable pool of any family still has a free address for this node.</summary>
    public async Task<bool> HasCapacityAsync(string node, CancellationToken ct = default)
    {
        var labels = await NodeLabelsAsync(node, ct).ConfigureAwait(false);
        var pools = (await LoadPoolsAsync(ct).ConfigureAwait(false)).Where(p => p.UsableForWorkloads && SelectsNode(p, labels)).ToList();
        if (pools.Count == 0) return false;
        var reservations = await LoadReservationsAsync(ct).ConfigureAwait(false);
        var blocks = (await store.ListAsync(Keys.Blocks, ct).ConfigureAwait(false)).Items
            .Select(kv => Codec.Decode<AllocationBlock>(kv.Value, kv.Key)).ToList();
        foreach (var pool in pools)
        {
            var mine = blocks.Where(b => pool.Network.Contains(b.Network)).ToList();
            if ((UInt128)mine.Count < pool.Network.SubnetCount(pool.BlockSize)) return true;
            if (mine.Any(b => FindFree(b, pool, reservations) >= 0)) return true;
        }
        return false;
    }

    public async Task<IReadOnlyList<IPPool>> LoadPoolsAsync(CancellationToken ct = default)
    {
        var list = await store.ListAsync(Keys.Pools, ct).ConfigureAwait(false);
        return list.Items.Select(kv => Codec.Decode<IPPool>(kv.Value, kv.Key)).ToList();
    }

    private async Task<IReadOnlyList<Cidr>> LoadReservationsAsync(CancellationToken ct)
    {
        var list = await store.ListAsync(Keys.Reservations, ct).ConfigureAwait(false);
        var result = new List<Cidr>();
        foreach (var kv in list.Items)
            foreach (var cidr in Codec.Decode<IPReservation>(kv.Value, kv.Key).ReservedCIDRs)
                result.Add(Cidr.Parse(cidr));
        return result;
    }

    private async Task<IReadOnlyDictionary<string, string>> NodeLabelsAsync(string node, CancellationToken ct)
    {
        var kv = await store.GetAsync(Keys.Node(node), ct).ConfigureAwait(false);
        var labels = kv is null ? [] : Codec.Decode<NodeRecord>(kv.Value, kv.Key).Labels;
        labels.TryAdd("kubernetes.io/hostname", node);
        return labels;
    }

    private static bool SelectsNode(IPPool pool, IReadOnlyDictionary<string, string> labels) =>
        string.IsNullOrWhiteSpace(pool.NodeSelector) || Selector.Parse(pool.NodeSelector).Matches(labels);

    private static int StableHash(string s)
    {
        var h = 2166136261u;
        foreach (var c in s) h = (h ^ c) * 16777619u;
        return (int)(h & 0x7fffffff);
    }
}
