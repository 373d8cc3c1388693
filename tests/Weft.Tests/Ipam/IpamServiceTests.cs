using System.Net;
using System.Net.Sockets;
using CsCheck;
using Weft.Datastore;
using Weft.Ipam;
using Weft.Model;
using Weft.Resources;

namespace Weft.Tests.Ipam;

/// <summary>The IPAM service's behaviour, run against every datastore backend.</summary>
public abstract class IpamServiceContract : IDisposable
{
    /// <summary>A new client on the same underlying store (another plugin process, as far as IPAM knows).</summary>
    protected abstract IDatastore Open();

    public abstract void Dispose();

    private async Task Pools(params IPPool[] pools)
    {
        using var ds = Open();
        await new ResourceService(ds).ApplyAsync(pools.Select(p => (Resource)new IPPoolResource(p, new DocumentSource("test", 1))).ToList());
    }

    protected static IPPool Pool(string name, string cidr, int blockSize, string selector = "all()", bool disabled = false) =>
        new() { Name = name, Cidr = cidr, BlockSize = blockSize, NodeSelector = selector, Disabled = disabled };

    protected static AssignRequest Req(string handle, string node = "n1", bool v6 = true) => new(handle, node) { Network = "net", IPv6 = v6 };

    /// <summary>IPAM over a store that refuses any write but a compare-and-swap of one record (all the Kubernetes API offers).</summary>
    protected static IpamService Ipam(IDatastore ds) => new(new SingleObjectWrites(ds));

    /// <summary>
    /// A client killed after each of its writes in turn (every point a SIGKILL can land between two records), while
    /// claiming blocks (plain and bridge mode), assigning in a held block, asking for an address, releasing a handle
    /// and one address. Then other clients carry on in parallel: no address twice, none held by a missing handle;
    /// after CNI GC of the dead client's attachments nothing is left inconsistent.
    /// </summary>
    [Fact]
    public async Task A_client_killed_after_any_write_leaves_nothing_the_next_clients_and_gc_cannot_handle()
    {
        await Pools(Pool("v4", "10.13.0.0/16", 28));
        using (var ds = Open()) await Ipam(ds).AssignAsync(Req("net.h0.eth0", v6: false));
        var total = await DyingClientAsync(int.MaxValue, 0);
        Assert.InRange(total, 12, 40);
        for (var n = 0; n <= total; n++)
        {
            await DyingClientAsync(n, n + 1);
            var round = n + 1;
            // Two new pods on each node, the dead client's nodes included (bridge nodes reserve their gateways).
            string[] nodes = ["n1", "n2", "n3", $"fresh{round}", $"bridge{round}"];
            var survivors = await Task.WhenAll(Enumerable.Range(0, 2 * nodes.Length).Select(i => Task.Run(async () =>
            {
                using var ds = Open();
                var node = nodes[i % nodes.Length];
                var req = Req($"net.ok{round}-{i}.eth0", node, v6: false) with { ReserveBlockGateway = node == "n3" || node.StartsWith("bridge", StringComparison.Ordinal) };
                return (req.HandleId, node, Assert.Single(await Ipam(ds).AssignAsync(req)).Address);
            })));
            Assert.Equal(2 * nodes.Length, survivors.Select(s => s.Address).Distinct().Count());
            using var check = Open();
            var report = await new IpamInspector(check).CheckAsync(TimeSpan.MaxValue);
            Assert.DoesNotContain(report.Problems, p => p.Kind is IpamInspector.Duplicate or IpamInspector.MissingHandle);
            // The runtime retries a DEL until it succeeds (the dead client may have been releasing h0), then runs CNI GC
            // on each node with its live attachments (the survivors of every round so far).
            await Ipam(check).ReleaseAsync("net.h0.eth0");
            var live = new HashSet<string>(StringComparer.Ordinal);
            for (var r = 1; r <= round; r++)
                for (var i = 0; i < 2 * nodes.Length; i++) live.Add($"net.ok{r}-{i}.eth0");
            foreach (var node in nodes) await Ipam(check).GarbageCollectAsync(node, "net", live);
            var after = await new IpamInspector(check).CheckAsync(TimeSpan.MaxValue);
            Assert.True(after.Problems.Count == 0, $"killed after write {n}: " + string.Join("; ", after.Problems.Select(p => p.Detail)));
            foreach (var node in nodes)
                foreach (var kv in (await check.ListAsync(Keys.NodeAffinities(node))).Items)
                {
                    var block = await check.GetAsync(Keys.Blocks + kv.Key[(kv.Key.LastIndexOf('/') + 1)..]);
                    Assert.True(block is null || Codec.Decode(block.Value, ModelJson.Default.AllocationBlock, block.Key).Affinity == node, $"killed after write {n}: {kv.Key} names another node's block");
                }
            using (var ds = Open()) await Ipam(ds).AssignAsync(Req("net.h0.eth0", v6: false));
        }
    }

    /// <summary>Runs the dying client's work, killed after <paramref name="writes"/> writes; returns how many it made.</summary>
    private async Task<int> DyingClientAsync(int writes, int round)
    {
        using var inner = Open();
        var dying = new DiesAfterWrites(new SingleObjectWrites(inner), writes);
        var ipam = new IpamService(dying);
        try
        {
            var node = $"fresh{round}";
            await ipam.AssignAsync(Req($"net.d{round}-a.eth0", node, v6: false));
            var b = Assert.Single(await ipam.AssignAsync(Req($"net.d{round}-b.eth0", node, v6: false)));
            await ipam.AssignAsync(Req($"net.d{round}-c.eth0", $"bridge{round}", v6: false) with { ReserveBlockGateway = true });
            await ipam.AssignAsync(Req($"net.d{round}-d.eth0", node, v6: false) with { Requested = [IPAddress.Parse($"10.13.{200 + round % 50}.{1 + round % 13}")] });
            await ipam.ReleaseAsync("net.h0.eth0");
            await ipam.ReleaseAddressAsync(b.Address);
        }
        catch (DiesAfterWrites.Killed) { }
        return dying.Writes;
    }

    /// <summary>Refuses every write that is not a compare-and-swap of the one record it writes.</summary>
    private sealed class SingleObjectWrites(IDatastore inner) : ForwardingStore(inner)
    {
        public override ValueTask<TxnResult> CommitAsync(IReadOnlyList<Precondition> preconditions, IReadOnlyList<Mutation> mutations, CancellationToken ct = default)
        {
            Assert.True(mutations.Count == 1 && preconditions.All(p => p.Key == mutations[0].Key),
                $"a write of several records: {string.Join(", ", mutations.Select(m => m.Key))} guarded by {string.Join(", ", preconditions.Select(p => p.Key))}");
            return base.CommitAsync(preconditions, mutations, ct);
        }
    }

    /// <summary>A client that dies (every later call throws) once it has made <c>limit</c> writes.</summary>
    private sealed class DiesAfterWrites(IDatastore inner, int limit) : ForwardingStore(inner)
    {
        public sealed class Killed : Exception;

        public int Writes { get; private set; }

        public override ValueTask<KeyValue?> GetAsync(string key, CancellationToken ct = default) => Writes >= limit ? throw new Killed() : base.GetAsync(key, ct);
        public override ValueTask<RangeResult> ListAsync(string prefix, CancellationToken ct = default) => Writes >= limit ? throw new Killed() : base.ListAsync(prefix, ct);

        public override async ValueTask<TxnResult> CommitAsync(IReadOnlyList<Precondition> preconditions, IReadOnlyList<Mutation> mutations, CancellationToken ct = default)
        {
            if (Writes >= limit) throw new Killed();
            var r = await base.CommitAsync(preconditions, mutations, ct);
            Writes++;
            return r;
        }
    }

    private abstract class ForwardingStore(IDatastore inner) : IDatastore
    {
        public string Describe => inner.Describe;
        public virtual ValueTask<KeyValue?> GetAsync(string key, CancellationToken ct = default) => inner.GetAsync(key, ct);
        public virtual ValueTask<RangeResult> ListAsync(string prefix, CancellationToken ct = default) => inner.ListAsync(prefix, ct);
        public virtual ValueTask<TxnResult> CommitAsync(IReadOnlyList<Precondition> preconditions, IReadOnlyList<Mutation> mutations, CancellationToken ct = default) => inner.CommitAsync(preconditions, mutations, ct);
        public IAsyncEnumerable<WatchEvent> WatchAsync(string prefix, long afterRevision, CancellationToken ct = default) => inner.WatchAsync(prefix, afterRevision, ct);
        public ValueTask<long> RevisionAsync(CancellationToken ct = default) => inner.RevisionAsync(ct);
        public ValueTask CompactAsync(long revision, CancellationToken ct = default) => inner.CompactAsync(revision, ct);
        public void Dispose() { }
    }

    [Fact]
    public async Task Assigns_from_a_block_affine_to_the_node_and_is_idempotent_per_handle()
    {
        await Pools(Pool("v4", "10.244.0.0/16", 26));
        using var ds = Open();
        var ipam = Ipam(ds);
        var a = Assert.Single(await ipam.AssignAsync(Req("h1")));
        Assert.True(Cidr.Parse("10.244.0.0/16").Contains(a.Address));
        Assert.Equal(26, a.Block.PrefixLength);
        var again = Assert.Single(await ipam.AssignAsync(Req("h1")));
        Assert.Equal(a.Address, again.Address);
        var b = Assert.Single(await ipam.AssignAsync(Req("h2")));
        Assert.Equal(a.Block, b.Block);
        Assert.NotEqual(a.Address, b.Address);
        var affinities = await ds.ListAsync(Keys.NodeAffinities("n1"));
        Assert.Single(affinities.Items);
    }

    /// <summary>A node's tunnel address is the node's while it is registered (ipam check used to call it leaked); a gone node's is a leak.</summary>
    [Fact]
    public async Task A_registered_nodes_tunnel_address_is_not_a_leak_and_a_gone_nodes_is()
    {
        await Pools(Pool("v4", "10.14.0.0/16", 26));
        using var ds = Open();
        await ds.PutAsync(Keys.Node("n1"), Codec.Encode(new NodeRecord { Name = "n1" }, ModelJson.Default.NodeRecord), 0);
        await Ipam(ds).AssignAsync(new AssignRequest(IpamService.TunnelHandleId("n1"), "n1") { IPv6 = false });
        await Ipam(ds).AssignAsync(new AssignRequest(IpamService.TunnelHandleId("gone"), "gone") { IPv6 = false });
        var report = await new IpamInspector(ds).CheckAsync(TimeSpan.Zero);
        var leak = Assert.Single(report.Leaks);
        Assert.Equal(IpamService.TunnelHandleId("gone"), leak.Handle);
    }

    /// <summary>
    /// A node gone for good (calico#8643): its tunnel address, pods' addresses, gateway, block, affinity and claim are
    /// released; a pod still running keeps its address and its block (affinity included) until it goes.
    /// </summary>
    [Fact]
    public async Task A_departed_nodes_ipam_is_released_and_a_running_pod_keeps_its_address_until_it_goes()
    {
        await Pools(Pool("v4", "10.15.0.0/16", 28));
        using var ds = Open();
        var ipam = Ipam(ds);
        await ipam.AssignAsync(new AssignRequest(IpamService.TunnelHandleId("gone"), "gone") { IPv6 = false });
        await ipam.AssignAsync(Req("net.p1.eth0", "gone", v6: false) with { ReserveBlockGateway = true });
        var p2 = Assert.Single(await ipam.AssignAsync(Req("net.p2.eth0", "gone", v6: false) with { ReserveBlockGateway = true })).Address;
        var mine = Assert.Single(await ipam.AssignAsync(Req("net.m1.eth0", "n1", v6: false))).Address;
        var goneBlock = Cidr.Enclosing(p2, 28);

        var first = await ipam.ReleaseNodeAsync("gone", (h, _) => ValueTask.FromResult(h.Id == "net.p2.eth0"));
        Assert.Equal(2, first.Addresses); // the tunnel address and p1
        Assert.Equal(["net.p2.eth0"], first.Kept);
        Assert.Equal(0, first.Blocks);
        var kept = Codec.Decode((await ds.GetAsync(Keys.Block(goneBlock)))!.Value, ModelJson.Default.AllocationBlock, "block");
        Assert.Equal("gone", kept.Affinity);
        Assert.Equal(["net.p2.eth0"], kept.Allocations.Select(a => a.Handle));
        Assert.Equal(p2, Assert.Single(await ipam.GetByHandleAsync("net.p2.eth0")).Address);
        // Another node claims a block of its own, never the departed node's.
        Assert.False(goneBlock.Contains(Assert.Single(await ipam.AssignAsync(Req("net.o1.eth0", "n2", v6: false))).Address));

        var second = await ipam.ReleaseNodeAsync("gone", NodeCleanup.NothingInUse);
        Assert.Equal(1, second.Addresses);
        Assert.Equal(1, second.Blocks);
        Assert.Null(await ds.GetAsync(Keys.Block(goneBlock)));
        Assert.Empty((await ds.ListAsync(Keys.NodeAffinities("gone"))).Items);
        Assert.Equal(mine, Assert.Single(await ipam.GetByHandleAsync("net.m1.eth0")).Address);
        var report = await new IpamInspector(ds).CheckAsync(TimeSpan.MaxValue);
        Assert.True(report.Problems.Count == 0, string.Join("; ", report.Problems.Select(p => p.Detail)));
        Assert.Equal(0, (await ipam.ReleaseNodeAsync("gone", NodeCleanup.NothingInUse)).Addresses);
    }

    /// <summary>Flannel's model: a node's podCIDR claimed as its block before any ADD; its pods' addresses come from it.</summary>
    [Fact]
    public async Task A_claimed_pod_cidr_is_the_nodes_block_and_no_other_node_takes_it()
    {
        await Pools(Pool("v4", "10.17.0.0/16", 24));
        using var ds = Open();
        var ipam = Ipam(ds);
        var podCidr = Cidr.Parse("10.17.5.0/24");
        Assert.True(await ipam.ClaimBlockAsync("n1", podCidr));
        Assert.True(await ipam.ClaimBlockAsync("n1", podCidr)); // a restarted agent claims it again: already its own
        Assert.False(await ipam.ClaimBlockAsync("n2", podCidr));
        Assert.True(podCidr.Contains(Assert.Single(await ipam.AssignAsync(Req("net.a.eth0", "n1", v6: false))).Address));
        Assert.False(podCidr.Contains(Assert.Single(await ipam.AssignAsync(Req("net.b.eth0", "n2", v6: false))).Address));
        Assert.Contains("blockSize 24", (await Assert.ThrowsAsync<IpamException>(() => ipam.ClaimBlockAsync("n3", Cidr.Parse("10.17.9.0/26")))).Message);
        Assert.Contains("no IP pool", (await Assert.ThrowsAsync<IpamException>(() => ipam.ClaimBlockAsync("n3", Cidr.Parse("10.99.0.0/24")))).Message);
    }

    /// <summary>`weftctl delete node`, as `calicoctl delete node`: the record, its endpoints and its IPAM go together.</summary>
    [Fact]
    public async Task Deleting_a_node_releases_its_addresses_and_endpoints()
    {
        await Pools(Pool("v4", "10.16.0.0/16", 26));
        using var ds = Open();
        await ds.PutAsync(Keys.Node("gone"), Codec.Encode(new NodeRecord { Name = "gone" }, ModelJson.Default.NodeRecord), 0);
        await Ipam(ds).AssignAsync(new AssignRequest(IpamService.TunnelHandleId("gone"), "gone") { IPv6 = false });
        await Ipam(ds).AssignAsync(Req("net.p1.eth0", "gone", v6: false));
        await Ipam(ds).AssignAsync(Req("net.p2.eth0", "gone", v6: false)); // an ADD whose pod never got an endpoint
        var endpoint = new WorkloadEndpoint { Node = "gone", Network = "net", ContainerId = "p1", IfName = "eth0", HostInterface = "weft123" };
        await ds.PutAsync(Keys.Endpoint("gone", "net.p1.eth0"), Codec.Encode(endpoint, ModelJson.Default.WorkloadEndpoint), 0);

        var service = new ResourceService(ds);
        Assert.True(await service.DeleteAsync("node", "gone", force: false));
        Assert.Equal(2, service.LastNodeRelease!.Addresses); // the tunnel address and p2
        Assert.Equal(["net.p1.eth0"], service.LastNodeRelease.Kept); // p1's pod still has its endpoint
        Assert.Null(await ds.GetAsync(Keys.Node("gone")));
        // CNI DEL of p1 (its endpoint and address), then the node's blocks go with the next release.
        await ds.DeleteAsync(Keys.Endpoint("gone", "net.p1.eth0"), (await ds.GetAsync(Keys.Endpoint("gone", "net.p1.eth0")))!.ModRevision);
        await Ipam(ds).ReleaseAsync("net.p1.eth0");
        var after = await NodeCleanup.RemoveAsync(ds, "gone", NodeCleanup.EndpointExists(ds, "gone"));
        Assert.Equal(1, after.Blocks);
        Assert.Empty((await ds.ListAsync(Keys.Blocks)).Items);
        Assert.Empty((await ds.ListAsync(Keys.Handles)).Items);
        Assert.False(await service.DeleteAsync("node", "gone", force: false));
    }

    [Fact]
    public async Task Released_addresses_are_reused_and_unknown_handles_release_nothing()
    {
        await Pools(Pool("v4", "10.1.0.0/24", 28));
        using var ds = Open();
        var ipam = Ipam(ds);
        var first = (await ipam.AssignAsync(Req("h1")))[0].Address;
        await ipam.AssignAsync(Req("h2"));
        Assert.Equal(1, await ipam.ReleaseAsync("h1"));
        Assert.Equal(0, await ipam.ReleaseAsync("h1"));
        Assert.Equal(0, await ipam.ReleaseAsync("never-existed"));
        Assert.Equal(first, (await ipam.AssignAsync(Req("h3")))[0].Address);
        Assert.Empty(await ipam.GetByHandleAsync("h1"));
    }

    [Fact]
    public async Task No_pool_names_the_fix()
    {
        using var ds = Open();
        var e = await Assert.ThrowsAsync<NoPoolException>(() => Ipam(ds).AssignAsync(Req("h")));
        Assert.Contains("weftctl apply -f", e.Message);
        Assert.Equal(IpamCodes.NoPool, e.CniCode);
    }

    [Fact]
    public async Task Dual_stack_when_pools_of_both_families_exist()
    {
        await Pools(Pool("v4", "10.2.0.0/16", 26), Pool("v6", "fd00:2::/64", 122));
        using var ds = Open();
        var got = await Ipam(ds).AssignAsync(Req("h"));
        Assert.Equal([AddressFamily.InterNetwork, AddressFamily.InterNetworkV6], got.Select(a => a.Family));
        Assert.Equal(122, got[1].Block.PrefixLength);
    }

    [Fact]
    public async Task Disabled_pools_and_pools_not_selecting_the_node_are_skipped()
    {
        await Pools(Pool("off", "10.3.0.0/24", 26, disabled: true), Pool("other", "10.4.0.0/24", 26, "kubernetes.io/hostname == 'n9'"), Pool("mine", "10.5.0.0/24", 26, "kubernetes.io/hostname == 'n1'"));
        using var ds = Open();
        var ipam = Ipam(ds);
        Assert.True(Cidr.Parse("10.5.0.0/24").Contains((await ipam.AssignAsync(Req("h", "n1")))[0].Address));
        Assert.True(Cidr.Parse("10.4.0.0/24").Contains((await ipam.AssignAsync(Req("h2", "n9")))[0].Address));
        await Assert.ThrowsAsync<NoPoolException>(() => ipam.AssignAsync(Req("h3", "n5")));
    }

    [Fact]
    public async Task Reservations_are_never_handed_out()
    {
        await Pools(Pool("v4", "10.6.0.0/28", 28));
        using var ds = Open();
        await new ResourceService(ds).ApplyAsync([new IPReservationResource(new IPReservation { Name = "r", ReservedCIDRs = ["10.6.0.1/32", "10.6.0.4/31"] }, new DocumentSource("t", 1))]);
        var ipam = Ipam(ds);
        var got = new List<IPAddress>();
        for (var i = 0; i < 11; i++) got.Add((await ipam.AssignAsync(Req("h" + i)))[0].Address);
        Assert.DoesNotContain(IPAddress.Parse("10.6.0.1"), got);
        Assert.DoesNotContain(IPAddress.Parse("10.6.0.4"), got);
        Assert.DoesNotContain(IPAddress.Parse("10.6.0.5"), got);
        Assert.DoesNotContain(IPAddress.Parse("10.6.0.0"), got); // pool network address
        Assert.DoesNotContain(IPAddress.Parse("10.6.0.15"), got); // pool broadcast address
        await Assert.ThrowsAsync<PoolExhaustedException>(() => ipam.AssignAsync(Req("one-too-many")));
        var e = await Assert.ThrowsAsync<IpamException>(() => ipam.AssignAsync(Req("x") with { Requested = [IPAddress.Parse("10.6.0.4")] }));
        Assert.Contains("reserved", e.Message);
    }

    [Fact]
    public async Task Borrows_from_another_nodes_block_when_no_free_block_is_left()
    {
        await Pools(Pool("tiny", "10.7.0.0/29", 30));
        using var ds = Open();
        var ipam = Ipam(ds);
        for (var i = 0; i < 5; i++) await ipam.AssignAsync(Req("a" + i, "node-a"));
        var borrowed = (await ipam.AssignAsync(Req("b0", "node-b")))[0];
        var blocks = (await ds.ListAsync(Keys.Blocks)).Items.Select(kv => Codec.Decode(kv.Value, ModelJson.Default.AllocationBlock, kv.Key)).ToList();
        Assert.All(blocks, b => Assert.Equal("node-a", b.Affinity));
        Assert.Contains(blocks, b => b.Network.Contains(borrowed.Address));
        await Assert.ThrowsAsync<PoolExhaustedException>(() => ipam.AssignAsync(Req("b1", "node-b")));
    }

    [Fact]
    public async Task Specific_addresses_are_honoured_and_refused_when_taken_or_outside_pools()
    {
        await Pools(Pool("v4", "10.8.0.0/16", 26));
        using var ds = Open();
        var ipam = Ipam(ds);
        var want = IPAddress.Parse("10.8.3.77");
        Assert.Equal(want, (await ipam.AssignAsync(Req("h1") with { Requested = [want] }))[0].Address);
        Assert.Contains("already in use", (await Assert.ThrowsAsync<IpamException>(() => ipam.AssignAsync(Req("h2") with { Requested = [want] }))).Message);
        Assert.Contains("no IP pool", (await Assert.ThrowsAsync<IpamException>(() => ipam.AssignAsync(Req("h3") with { Requested = [IPAddress.Parse("192.168.1.1")] }))).Message);
    }

    [Fact]
    public async Task Garbage_collection_releases_only_this_nodes_invalid_attachments_of_this_network()
    {
        await Pools(Pool("v4", "10.9.0.0/16", 26));
        using var ds = Open();
        var ipam = Ipam(ds);
        await ipam.AssignAsync(new AssignRequest("net.keep.eth0", "n1") { Network = "net" });
        await ipam.AssignAsync(new AssignRequest("net.gone.eth0", "n1") { Network = "net" });
        await ipam.AssignAsync(new AssignRequest("net.other-node.eth0", "n2") { Network = "net" });
        await ipam.AssignAsync(new AssignRequest("other.x.eth0", "n1") { Network = "other" });
        var released = await ipam.GarbageCollectAsync("n1", "net", new HashSet<string> { "net.keep.eth0" });
        Assert.Equal(["net.gone.eth0"], released);
        Assert.NotEmpty(await ipam.GetByHandleAsync("net.keep.eth0"));
        Assert.NotEmpty(await ipam.GetByHandleAsync("net.other-node.eth0"));
        Assert.NotEmpty(await ipam.GetByHandleAsync("other.x.eth0"));
    }

    [Fact]
    public async Task Bridge_mode_blocks_reserve_their_first_address_as_gateway()
    {
        await Pools(Pool("v4", "10.10.0.0/16", 26));
        using var ds = Open();
        var ipam = Ipam(ds);
        var a = (await ipam.AssignAsync(Req("h1") with { ReserveBlockGateway = true, IPv6 = false }))[0];
        var gw = await ipam.EnsureBlockGatewayAsync(a.Block, "n1");
        // The pool's own network address is never used, so the pool's first block starts at ordinal 1.
        var first = a.Block.NetworkAddress.Equals(IPAddress.Parse("10.10.0.0")) ? 1 : 0;
        Assert.Equal(a.Block.AddressAt((UInt128)first), gw);
        Assert.Equal(a.Block.AddressAt((UInt128)first + 1), a.Address);
        Assert.Equal(gw, await ipam.EnsureBlockGatewayAsync(a.Block, "n1"));
    }

    [Fact]
    public async Task Parallel_assignments_through_separate_clients_get_distinct_addresses()
    {
        await Pools(Pool("v4", "10.11.0.0/22", 26));
        var results = await Task.WhenAll(Enumerable.Range(0, 64).Select(i => Task.Run(async () =>
        {
            using var ds = Open();
            return (await Ipam(ds).AssignAsync(Req($"h{i}", i % 2 == 0 ? "n1" : "n2")))[0].Address;
        })));
        Assert.Equal(64, results.Distinct().Count());
    }

    /// <summary>
    /// kubelet starts a fresh node's pods in parallel: each first ADD must not win a block of its own (stranded
    /// address space at scale). 64 parallel first assignments, each through its own client, share one block while it
    /// has room; every round on a node that has never held a block.
    /// </summary>
    [Fact]
    public async Task Parallel_first_assignments_on_a_fresh_node_claim_one_block()
    {
        await Pools(Pool("v4", "10.12.0.0/16", 25));
        for (var round = 0; round < 8; round++)
        {
            var node = $"fresh-{round}";
            var results = await Task.WhenAll(Enumerable.Range(0, 64).Select(i => Task.Run(async () =>
            {
                using var ds = Open();
                return Assert.Single(await Ipam(ds).AssignAsync(Req($"r{round}-h{i}", node, v6: false)));
            })));
            Assert.Equal(64, results.Select(r => r.Address).Distinct().Count());
            Assert.Single(results.Select(r => r.Block).Distinct());
            using var check = Open();
            Assert.Single((await check.ListAsync(Keys.NodeAffinities(node))).Items);
        }
    }

}

public sealed class IpamServiceTests : IpamServiceContract
{
    private readonly string _dir = Support.TestEnv.TempDir("ipam");
    protected override IDatastore Open() => DatastoreFactory.Open("sqlite://" + Path.Combine(_dir, "weft.db"));

    public override void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>
    /// Property: whatever interleaving of assigns and releases across nodes and handles, no address is ever held
    /// by two handles, and every handle's view matches the blocks.
    /// </summary>
    [Fact]
    public void Random_operation_sequences_never_duplicate_an_address()
    {
        var op = Gen.Select(Gen.Int[0, 2], Gen.Int[0, 11], Gen.Bool);
        Gen.Select(op.Array[1, 60], Gen.Int[27, 30]).Sample((ops, blockSize) =>
        {
            var dir = Support.TestEnv.TempDir("prop");
            try
            {
                using var ds = DatastoreFactory.Open("sqlite://" + Path.Combine(dir, "w.db"));
                new ResourceService(ds).ApplyAsync([new IPPoolResource(Pool("p", "10.50.0.0/26", blockSize), new DocumentSource("t", 1))]).GetAwaiter().GetResult();
                var ipam = Ipam(ds);
                foreach (var (node, handle, assign) in ops)
                {
                    try
                    {
                        if (assign) ipam.AssignAsync(Req("h" + handle, "n" + node, v6: false)).GetAwaiter().GetResult();
                        else ipam.ReleaseAsync("h" + handle).GetAwaiter().GetResult();
                    }
                    catch (PoolExhaustedException) { }
                }
                var report = new IpamInspector(ds).CheckAsync(TimeSpan.MaxValue).GetAwaiter().GetResult();
                Assert.DoesNotContain(report.Problems, p => p.Kind is IpamInspector.Duplicate or IpamInspector.MissingHandle or IpamInspector.DanglingHandle);
                var held = Enumerable.Range(0, 12).SelectMany(h => ipam.GetByHandleAsync("h" + h).GetAwaiter().GetResult().Select(a => a.Address)).ToList();
                Assert.Equal(held.Count, held.Distinct().Count());
                Assert.Equal(report.Allocations, held.Count);
            }
            finally { Directory.Delete(dir, true); }
        }, iter: 40);
    }
}

/// <summary>The same IPAM behaviour on a real etcd: compare-and-swap of blocks across concurrent clients.</summary>
public sealed class EtcdIpamServiceTests : IpamServiceContract, IClassFixture<Support.EtcdFixture>
{
    private readonly Support.EtcdFixture _etcd;

    public EtcdIpamServiceTests(Support.EtcdFixture etcd)
    {
        _etcd = etcd;
        etcd.Wipe();
    }

    protected override IDatastore Open() => DatastoreFactory.Open(_etcd.Uri);
    public override void Dispose() { }
}

/// <summary>
/// The same IPAM behaviour on the kubernetes datastore (against the scripted API server): pools are projectcalico.org/v3
/// IPPool objects, blocks, affinities, handles and claims objects of Weft's group, each written by compare-and-swap
/// on its resourceVersion.
/// </summary>
public sealed class KubeIpamServiceTests : IpamServiceContract
{
    private readonly Weft.Lab.LabApiServer _api = new Weft.Lab.LabApiServer().WithWeftCrds();
    private readonly HttpClient _http = new();

    protected override IDatastore Open() => new Weft.Kubernetes.KubeDatastore(_http, _api.BaseAddress);

    public override void Dispose()
    {
        _http.Dispose();
        _api.DisposeAsync().AsTask().GetAwaiter().GetResult();
    }
}
