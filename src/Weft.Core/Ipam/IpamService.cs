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
    /// <summary>Pools to assign from, by name or CIDR (Calico's cni.projectcalico.org/ipv4pools and ipv6pools annotations); null: any.</summary>
    public IReadOnlyList<string>? Pools { get; init; }
}

/// <summary>What releasing a departed node's IPAM did: addresses and blocks given back, handles kept for pods still running.</summary>
public sealed record NodeRelease(int Addresses, int Blocks, IReadOnlyList<string> Kept);

/// <summary>One address given to a handle, with the block and pool it came from.</summary>
public sealed record AssignedAddress(IPAddress Address, Cidr Block, string PoolName, Cidr Pool)
{
    public AddressFamily Family => Address.AddressFamily;
}

/// <summary>
/// Calico-style block IPAM over the datastore. Every write is a compare-and-swap of one record, the most the
/// Kubernetes API offers, so the same code runs on sqlite, etcd and the API server. The block alone says who holds
/// an address (concurrent plugins race on its revision: never one address for two handles), and the writes go in an
/// order that keeps the other records pointing at it safely:
///  - a handle names a block before the block records an address for it, and forgets the block after the block let
///    go: an address is never held by a handle that does not exist (CNI GC finds every leak by its handle);
///  - a node claims a block by its claim record (one claim at a time per node), then its affinity, then the block.
/// A crash between two writes leaves at most a handle naming a block where it holds nothing (`ipam check`: dangling;
/// a later release or CNI GC removes it) or a claim not yet written out, which the node's next ADD completes.
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
        if (request.Pools is { } wantedPools)
        {
            // Only the pools asked for, each of which must exist and be usable on this node (as Calico refuses).
            foreach (var w in wantedPools)
                if (!usable.Any(p => Names(p, w)))
                    throw new IpamException(IpamCodes.AddressUnavailable, pools.Any(p => Names(p, w))
                        ? $"pool {w} (asked for by the pod) is disabled, not for workloads or does not select node {request.Node}"
                        : $"pool {w} (asked for by the pod) does not exist; pools: {string.Join(", ", pools.Select(p => $"{p.Name} ({p.Cidr})"))}");
            usable = [.. usable.Where(p => wantedPools.Any(w => Names(p, w)) || !wantedPools.Any(w => pools.Any(q => Names(q, w) && q.Network.Family == p.Network.Family)))];
        }
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
            var claimKv = await store.GetAsync(Keys.BlockClaim(request.Node), ct).ConfigureAwait(false);
            var claimRevision = claimKv?.ModRevision ?? 0;
            var claimed = claimKv is null ? null : ClaimedBlock(claimKv.Value);
            // 0. A claim of this node not written out yet (another ADD is writing it, or one was killed doing so): the
            // block is this node's, whoever writes it first.
            if (claimed is { } pending && pending.Family == family && pools.FirstOrDefault(p => p.Network.Contains(pending)) is { } pendingPool &&
                FindFree(new AllocationBlock { Cidr = pending.ToString(), Pool = pendingPool.Name }, pendingPool, reservations) >= 0 &&
                await store.GetAsync(Keys.Block(pending), ct).ConfigureAwait(false) is null)
            {
                var outcome = await ClaimAndAllocateAsync(request, pending, pendingPool, reservations, ct).ConfigureAwait(false);
                if (outcome is not null) return outcome;
                goto retry;
            }
            // 1. Blocks this node already owns.
            var affinities = await store.ListAsync(Keys.NodeAffinities(request.Node), ct).ConfigureAwait(false);
            foreach (var kv in affinities.Items)
            {
                var cidr = Cidr.FromKey(kv.Key[(kv.Key.LastIndexOf('/') + 1)..]);
                var pool = pools.FirstOrDefault(p => p.Network.Contains(cidr));
                if (cidr.Family != family || pool is null) continue;
                var blockKv = await store.GetAsync(Keys.Block(cidr), ct).ConfigureAwait(false);
                // No block yet: a claim being written out (by an ADD whose claim record this read may predate), or one a
                // killed client left; either way not this node's to use or to remove here.
                if (blockKv is null) continue;
                if (Codec.Decode<AllocationBlock>(blockKv.Value, blockKv.Key).Affinity != request.Node)
                {
                    // Left by a claim that lost its block to another node.
                    await store.DeleteAsync(kv.Key, kv.ModRevision, ct).ConfigureAwait(false);
                    continue;
                }
                var block = Codec.Decode<AllocationBlock>(blockKv.Value, blockKv.Key);
                var ordinal = FindFree(block, pool, reservations);
                if (ordinal < 0) continue;
                var outcome = await TryAllocateAsync(request, block, blockKv.ModRevision, ordinal, pool, ct).ConfigureAwait(false);
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
                    if (FindFree(new AllocationBlock { Cidr = cidr.ToString(), Pool = pool.Name }, pool, reservations) < 0) continue;
                    // One claim at a time per node: parallel first ADDs on a fresh node share the block this one claims.
                    var claim = System.Text.Encoding.UTF8.GetBytes($"{{\"block\":\"{cidr}\"}}");
                    if (!(await store.PutAsync(Keys.BlockClaim(request.Node), claim, claimRevision, ct).ConfigureAwait(false)).Succeeded) goto retry;
                    var outcome = await ClaimAndAllocateAsync(request, cidr, pool, reservations, ct).ConfigureAwait(false);
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
                var outcome = await TryAllocateAsync(request, block, kv.ModRevision, ordinal, pool, ct).ConfigureAwait(false);
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
            var ordinal = (int)cidr.OffsetOf(ip);
            AssignedAddress? outcome;
            if (kv is null)
                outcome = await ClaimAndAllocateAsync(request, cidr, pool, reservations, ct, ordinal).ConfigureAwait(false);
            else
            {
                var block = Codec.Decode<AllocationBlock>(kv.Value, kv.Key);
                if (block.Allocations.FirstOrDefault(a => a.Ordinal == ordinal) is { } holder)
                    throw new IpamException(IpamCodes.AddressUnavailable, $"requested address {ip} is already in use (handle {holder.Handle})");
                outcome = await TryAllocateAsync(request, block, kv.ModRevision, ordinal, pool, ct).ConfigureAwait(false);
            }
            if (outcome is not null) return outcome;
            await Task.Delay(Random.Shared.Next(1, 5 + attempt), ct).ConfigureAwait(false);
        }
        throw new IpamException(IpamCodes.Conflict, $"gave up allocating {ip} for {request.HandleId} after {MaxAttempts} conflicting concurrent updates; retry");
    }

    /// <summary>
    /// A block this node does not hold yet (claimed, or asked for by address): its affinity, then the block itself with
    /// the allocation (and, in bridge mode, the gateway's). Null when another writer got there first; a block another
    /// node wrote meanwhile makes this node's affinity stale, and it goes.
    /// </summary>
    private async Task<AssignedAddress?> ClaimAndAllocateAsync(AssignRequest request, Cidr cidr, IPPool pool, IReadOnlyList<Cidr> reservations, CancellationToken ct, int? ordinal = null)
    {
        var affinityKey = Keys.Affinity(request.Node, cidr);
        var affinity = await store.GetAsync(affinityKey, ct).ConfigureAwait(false);
        if (affinity is null && !(await store.PutAsync(affinityKey, "{}"u8.ToArray(), 0, ct).ConfigureAwait(false)).Succeeded) return null;
        var block = new AllocationBlock { Cidr = cidr.ToString(), Affinity = request.Node, Pool = pool.Name };
        IpamHandle? gateway = null;
        if (request.ReserveBlockGateway && FindFree(block, pool, reservations) is var gw and >= 0 && gw != ordinal)
        {
            gateway = new IpamHandle { Id = GatewayHandleId(cidr), Node = request.Node, Blocks = { [cidr.ToString()] = 1 }, Created = DateTime.UtcNow.ToString("O") };
            block.Allocations.Add(new BlockAllocation { Ordinal = gw, Handle = gateway.Id, Attributes = { ["node"] = request.Node, ["use"] = "gateway" } });
            // Named before the block holds its address, like every handle. One left by an earlier try is the same.
            await store.PutAsync(Keys.Handle(gateway.Id), Codec.Encode(gateway), 0, ct).ConfigureAwait(false);
        }
        var at = ordinal ?? FindFree(block, pool, reservations);
        if (at < 0) return null;
        var outcome = await TryAllocateAsync(request, block, 0, at, pool, ct).ConfigureAwait(false);
        if (outcome is not null) return outcome;
        if (await store.GetAsync(Keys.Block(cidr), ct).ConfigureAwait(false) is { } won && Codec.Decode<AllocationBlock>(won.Value, won.Key).Affinity != request.Node)
        {
            if (await store.GetAsync(affinityKey, ct).ConfigureAwait(false) is { } mine) await store.DeleteAsync(affinityKey, mine.ModRevision, ct).ConfigureAwait(false);
            if (gateway is not null && await store.GetAsync(Keys.Handle(gateway.Id), ct).ConfigureAwait(false) is { } g &&
                Codec.Decode<IpamHandle>(g.Value, g.Key).Node == request.Node)
                await store.DeleteAsync(g.Key, g.ModRevision, ct).ConfigureAwait(false);
        }
        return null;
    }

    /// <summary>
    /// The handle names the block, then the block records the address (compare-and-swap on its revision; 0 creates
    /// it). Null on conflict, after the handle forgets a block it named for this try alone.
    /// </summary>
    private async Task<AssignedAddress?> TryAllocateAsync(AssignRequest request, AllocationBlock block, long blockRevision, int ordinal, IPPool pool, CancellationToken ct)
    {
        var cidr = block.Network;
        var named = await NameBlockAsync(request, cidr, ct).ConfigureAwait(false);
        if (named is null) return null;
        var attrs = new Dictionary<string, string>(request.Attributes) { ["node"] = request.Node, ["time"] = DateTime.UtcNow.ToString("O") };
        block.Allocations.Add(new BlockAllocation { Ordinal = ordinal, Handle = request.HandleId, Attributes = attrs });
        block.Allocations.Sort((a, b) => a.Ordinal.CompareTo(b.Ordinal));
        if ((await store.PutAsync(Keys.Block(cidr), Codec.Encode(block), blockRevision, ct).ConfigureAwait(false)).Succeeded)
            return new AssignedAddress(cidr.AddressAt((UInt128)ordinal), cidr, pool.Name, pool.Network);
        if (named.Value) await ForgetBlockAsync(request.HandleId, cidr, attempts: 1, ct).ConfigureAwait(false);
        return null;
    }

    /// <summary>Makes the handle name the block (creating the handle); true when this call added it, null on conflict.</summary>
    private async Task<bool?> NameBlockAsync(AssignRequest request, Cidr cidr, CancellationToken ct)
    {
        var key = Keys.Handle(request.HandleId);
        var kv = await store.GetAsync(key, ct).ConfigureAwait(false);
        var handle = kv is null
            ? new IpamHandle
            {
                Id = request.HandleId, Node = request.Node, Network = request.Network, ContainerId = request.ContainerId,
                IfName = request.IfName, Created = DateTime.UtcNow.ToString("O"),
            }
            : Codec.Decode<IpamHandle>(kv.Value, key);
        if (handle.Blocks.ContainsKey(cidr.ToString())) return false;
        handle.Blocks[cidr.ToString()] = 1;
        return (await store.PutAsync(key, Codec.Encode(handle), kv?.ModRevision ?? 0, ct).ConfigureAwait(false)).Succeeded ? true : null;
    }

    /// <summary>
    /// The handle stops naming a block where it holds nothing, trying up to <paramref name="attempts"/> times. A
    /// conflict every time leaves a dangling name, which only `ipam check` sees and a later release removes.
    /// </summary>
    private async Task ForgetBlockAsync(string handleId, Cidr cidr, int attempts, CancellationToken ct)
    {
        for (var i = 0; i < attempts && await store.GetAsync(Keys.Handle(handleId), ct).ConfigureAwait(false) is { } kv; i++)
        {
            var handle = Codec.Decode<IpamHandle>(kv.Value, kv.Key);
            if (!handle.Blocks.Remove(cidr.ToString()) || await SaveHandleAsync(kv, handle, ct).ConfigureAwait(false)) return;
        }
    }

    /// <summary>A handle written back over <paramref name="kv"/>'s revision, deleted when it names no block any more.</summary>
    private async Task<bool> SaveHandleAsync(KeyValue kv, IpamHandle handle, CancellationToken ct) =>
        (handle.Blocks.Count == 0
            ? await store.DeleteAsync(kv.Key, kv.ModRevision, ct).ConfigureAwait(false)
            : await store.PutAsync(kv.Key, Codec.Encode(handle), kv.ModRevision, ct).ConfigureAwait(false)).Succeeded;

    /// <summary>The block a claim record names, or null when it names none readable.</summary>
    private static Cidr? ClaimedBlock(byte[] value)
    {
        try
        {
            return System.Text.Json.JsonDocument.Parse(value).RootElement.TryGetProperty("block", out var b) && b.GetString() is { } text && Cidr.TryParse(text, out var c) ? c : null;
        }
        catch (System.Text.Json.JsonException) { return null; }
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
    public const string GatewayHandlePrefix = "weft-gateway.";

    public static string GatewayHandleId(Cidr block) => GatewayHandlePrefix + block.ToKey();

    public const string TunnelHandlePrefix = "weft-tunnel.";

    /// <summary>The handle that holds a node's VXLAN tunnel address.</summary>
    public static string TunnelHandleId(string node) => TunnelHandlePrefix + node;

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
            var outcome = await TryAllocateAsync(request, block, bkv.ModRevision, ordinal, pool, ct).ConfigureAwait(false);
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
                await SaveHandleAsync(hkv, handle, ct).ConfigureAwait(false);
                continue;
            }
            // Block by block: the block lets go first, then the handle forgets it, so a crash in between leaves the
            // handle naming a block where it holds nothing (never an address held by no handle).
            var blockCidr = handle.Blocks.Keys.First();
            var bkv = await store.GetAsync(Keys.Block(Cidr.Parse(blockCidr)), ct).ConfigureAwait(false);
            if (bkv is not null)
            {
                var block = Codec.Decode<AllocationBlock>(bkv.Value, bkv.Key);
                var removed = block.Allocations.RemoveAll(a => a.Handle == handleId);
                if (removed > 0)
                {
                    if (!(await store.PutAsync(bkv.Key, Codec.Encode(block), bkv.ModRevision, ct).ConfigureAwait(false)).Succeeded)
                    {
                        await Task.Delay(Random.Shared.Next(1, 5 + attempt), ct).ConfigureAwait(false);
                        continue;
                    }
                    released += removed;
                }
            }
            handle.Blocks.Remove(blockCidr);
            if (await SaveHandleAsync(hkv, handle, ct).ConfigureAwait(false)) attempt = 0;
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
                if (!(await store.PutAsync(kv.Key, Codec.Encode(block), kv.ModRevision, ct).ConfigureAwait(false)).Succeeded) goto retry;
                // The handle forgets the block once it holds nothing there.
                if (!block.Allocations.Any(a => a.Handle == alloc.Handle))
                    await ForgetBlockAsync(alloc.Handle, cidr, MaxAttempts, ct).ConfigureAwait(false);
                return alloc.Handle;
            }
            return null;
        retry:
            await Task.Delay(Random.Shared.Next(1, 5 + attempt), ct).ConfigureAwait(false);
        }
        throw new IpamException(IpamCodes.Conflict, $"gave up releasing {ip} after {MaxAttempts} conflicting concurrent updates; retry");
    }

    /// <summary>
    /// Gives <paramref name="node"/> the block <paramref name="cidr"/> before any address is asked for: Flannel's
    /// model, where a node's pods live in its Kubernetes `spec.podCIDR`. The block must be one of a pool's blocks (its
    /// blockSize); the node's first ADDs then allocate from it. A block another node already holds is left to it
    /// (false); the affinity is written first, then the empty block, each one compare-and-swap.
    /// </summary>
    public async Task<bool> ClaimBlockAsync(string node, Cidr cidr, CancellationToken ct = default)
    {
        var pools = await LoadPoolsAsync(ct).ConfigureAwait(false);
        var pool = pools.FirstOrDefault(p => p.Network.Contains(cidr))
            ?? throw new IpamException(IpamCodes.AddressUnavailable, $"{cidr} is in no IP pool; pools: {string.Join(", ", pools.Select(p => p.Cidr))}");
        if (pool.BlockSize != cidr.PrefixLength)
            throw new IpamException(IpamCodes.AddressUnavailable, $"{cidr} is not one of pool {pool.Name}'s blocks (blockSize {pool.BlockSize}); make the node CIDR mask size and the pool's block size agree");
        for (var attempt = 0; attempt < MaxAttempts; attempt++)
        {
            if (await store.GetAsync(Keys.Block(cidr), ct).ConfigureAwait(false) is { } existing)
                return Codec.Decode<AllocationBlock>(existing.Value, existing.Key).Affinity == node;
            var affinityKey = Keys.Affinity(node, cidr);
            if (await store.GetAsync(affinityKey, ct).ConfigureAwait(false) is null)
                await store.PutAsync(affinityKey, "{}"u8.ToArray(), 0, ct).ConfigureAwait(false);
            var block = new AllocationBlock { Cidr = cidr.ToString(), Affinity = node, Pool = pool.Name };
            if ((await store.PutAsync(Keys.Block(cidr), Codec.Encode(block), 0, ct).ConfigureAwait(false)).Succeeded) return true;
            await Task.Delay(Random.Shared.Next(1, 5 + attempt), ct).ConfigureAwait(false);
        }
        throw new IpamException(IpamCodes.Conflict, $"gave up claiming {cidr} for {node} after {MaxAttempts} conflicting concurrent updates; retry");
    }

    /// <summary>
    /// A node gone for good (`weftctl delete node`, or its Kubernetes Node deleted): what its pods held, its tunnel
    /// address, and its blocks with their gateways, affinities and its pending claim are released, so its addresses do
    /// not stay stranded (calico#8643, weave#2797). An address <paramref name="inUse"/> keeps (a pod still running) is
    /// left, and so is its block, affinity and all: if the node comes back under its name, its pods' routes come back
    /// with it; once those pods go, releasing again frees the block. Idempotent; every write is one compare-and-swap.
    /// </summary>
    public async Task<NodeRelease> ReleaseNodeAsync(string node, Func<IpamHandle, CancellationToken, ValueTask<bool>> inUse, CancellationToken ct = default)
    {
        var addresses = 0;
        var kept = new List<string>();
        foreach (var kv in (await store.ListAsync(Keys.Handles, ct).ConfigureAwait(false)).Items)
        {
            var handle = Codec.Decode<IpamHandle>(kv.Value, kv.Key);
            if (handle.Node != node || handle.Id.StartsWith(GatewayHandlePrefix, StringComparison.Ordinal)) continue;
            if (!handle.Id.StartsWith(TunnelHandlePrefix, StringComparison.Ordinal) && await inUse(handle, ct).ConfigureAwait(false))
            {
                kept.Add(handle.Id);
                continue;
            }
            addresses += await ReleaseAsync(handle.Id, ct).ConfigureAwait(false);
        }
        var blocks = 0;
        foreach (var kv in (await store.ListAsync(Keys.Blocks, ct).ConfigureAwait(false)).Items)
        {
            var block = Codec.Decode<AllocationBlock>(kv.Value, kv.Key);
            if (block.Affinity == node && await ReleaseBlockAsync(block.Network, node, ct).ConfigureAwait(false)) blocks++;
        }
        if (kept.Count == 0)
        {
            // Affinities whose block never got written (a claim cut short), and the claim record itself.
            foreach (var kv in (await store.ListAsync(Keys.NodeAffinities(node), ct).ConfigureAwait(false)).Items)
                if (await store.GetAsync(Keys.Block(Cidr.FromKey(kv.Key[(kv.Key.LastIndexOf('/') + 1)..])), ct).ConfigureAwait(false) is null)
                    await store.DeleteAsync(kv.Key, kv.ModRevision, ct).ConfigureAwait(false);
            if (await store.GetAsync(Keys.BlockClaim(node), ct).ConfigureAwait(false) is { } claim)
                await store.DeleteAsync(claim.Key, claim.ModRevision, ct).ConfigureAwait(false);
        }
        return new NodeRelease(addresses, blocks, kept);
    }

    /// <summary>A departed node's block, deleted with its gateway and affinity when nothing else is left in it. True when deleted.</summary>
    private async Task<bool> ReleaseBlockAsync(Cidr cidr, string node, CancellationToken ct)
    {
        var gateway = GatewayHandleId(cidr);
        var deleted = false;
        for (var attempt = 0; attempt < MaxAttempts; attempt++)
        {
            var kv = await store.GetAsync(Keys.Block(cidr), ct).ConfigureAwait(false);
            if (kv is null) break;
            var block = Codec.Decode<AllocationBlock>(kv.Value, kv.Key);
            if (block.Affinity != node || block.Allocations.Any(a => a.Handle != gateway)) return false;
            if (block.Allocations.Count > 0)
            {
                await ReleaseAsync(gateway, ct).ConfigureAwait(false);
                continue;
            }
            if (deleted = (await store.DeleteAsync(kv.Key, kv.ModRevision, ct).ConfigureAwait(false)).Succeeded) break;
            await Task.Delay(Random.Shared.Next(1, 5 + attempt), ct).ConfigureAwait(false);
        }
        if (await store.GetAsync(Keys.Affinity(node, cidr), ct).ConfigureAwait(false) is { } affinity)
            await store.DeleteAsync(affinity.Key, affinity.ModRevision, ct).ConfigureAwait(false);
        return deleted;
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

    /// <summary>Whether a pool is the one named by <paramref name="nameOrCidr"/> (its name, or its CIDR as written or normalised).</summary>
    private static bool Names(IPPool pool, string nameOrCidr) =>
        pool.Name == nameOrCidr || pool.Cidr == nameOrCidr || (Cidr.TryParse(nameOrCidr, out var c) && c == pool.Network);

    private static bool SelectsNode(IPPool pool, IReadOnlyDictionary<string, string> labels) =>
        string.IsNullOrWhiteSpace(pool.NodeSelector) || Selector.Parse(pool.NodeSelector).Matches(labels);

    private static int StableHash(string s)
    {
        var h = 2166136261u;
        foreach (var c in s) h = (h ^ c) * 16777619u;
        return (int)(h & 0x7fffffff);
    }
}
