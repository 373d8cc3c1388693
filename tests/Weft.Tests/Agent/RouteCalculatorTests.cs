using System.Net;
using System.Net.NetworkInformation;
using CsCheck;
using Weft.Agent.Backends;
using Weft.Agent.Calculators;
using Weft.Agent.Drivers;
using Weft.Agent.Reconcile;
using Weft.Datastore;
using Weft.Model;
using Weft.Netlink;

namespace Weft.Tests.Agent;

/// <summary>
/// The route calculator is pure: per-pool encapsulation decided per peer, the same output whatever order the model
/// arrived in, and (with the agent's cache in front) whatever duplicates or replays the watch delivered.
/// </summary>
public sealed class RouteCalculatorTests
{
    /// <summary>A VXLAN-like backend without a kernel: its device is index 7.</summary>
    internal sealed class FakeOverlay : IBackend
    {
        public string Type => "vxlan";
        public int Overhead => 50;
        public int OwnedDeviceIndex => 7;
        public int? TunnelPort => 4789;
        public LocalNode Prepare(RtNetlink netlink, LocalNode me) => me;
        public PeerProgram ProgramFor(LocalNode me, NodeRecord peer, IReadOnlyList<Cidr> peerBlocks)
        {
            var vtep = IPAddress.Parse(peer.VtepAddress!);
            var mac = PhysicalAddress.Parse(peer.VtepMac!.Replace(':', '-'));
            return new PeerProgram(peerBlocks.Select(b => new RouteSpec(b.NetworkAddress, b.PrefixLength) { Gateway = vtep, OutputIndex = 7, OnLink = true, Protocol = RouteProtocols.Agent }).ToList(),
                [new NeighbourEntry(vtep, mac)], [new FdbTarget(mac, IPAddress.Parse(peer.UnderlayAddress!.Split('/')[0]))]);
        }
    }

    internal static readonly LocalNode Me = new("n1", 2, "eth0", IPAddress.Parse("198.51.100.11"), 24, 1500);

    internal static NodeRecord Node(string name, string underlay) =>
        new() { Name = name, UnderlayAddress = underlay + "/24", VtepAddress = "10.99.0." + name[1..], VtepMac = "66:00:00:00:00:0" + name[1..] };

    internal static IPPool Pool(string name, string cidr, string vxlan = "Never", string ipip = "Never") =>
        new() { Name = name, Cidr = cidr, BlockSize = 26, VxlanMode = vxlan, IpipMode = ipip };

    internal static AllocationBlock Block(string cidr, string node, string pool) => new() { Cidr = cidr, Affinity = node, Pool = pool };

    private static RouteSpec RouteTo(RouteState s, string cidr) =>
        s.AllRoutes.Single(r => $"{r.Destination}/{r.PrefixLength}" == cidr);

    [Fact]
    public void Each_pools_encapsulation_decides_per_peer()
    {
        var nodes = new[] { Node("n1", "198.51.100.11"), Node("n2", "198.51.100.12"), Node("n3", "203.0.113.13") };
        var pools = new[] { Pool("vx", "10.1.0.0/16", vxlan: "Always"), Pool("none", "10.2.0.0/16"), Pool("cross", "10.3.0.0/16", vxlan: "CrossSubnet"), Pool("ipip", "10.4.0.0/16", ipip: "Always") };
        var blocks = new[]
        {
            Block("10.1.0.0/26", "n2", "vx"), Block("10.2.0.0/26", "n2", "none"), Block("10.3.0.0/26", "n2", "cross"), Block("10.3.0.64/26", "n3", "cross"),
            Block("10.4.0.0/26", "n2", "ipip"), Block("10.2.0.64/26", "n3", "none"), Block("10.1.0.64/26", "n1", "vx"),
        };
        var s = RouteCalculator.Compute(new FakeOverlay(), Me, nodes, blocks, [], pools);
        Assert.Equal(7, RouteTo(s, "10.1.0.0/26").OutputIndex);                          // Always: the overlay
        Assert.Equal(IPAddress.Parse("198.51.100.12"), RouteTo(s, "10.2.0.0/26").Gateway); // None, same subnet: direct
        Assert.Equal(IPAddress.Parse("198.51.100.12"), RouteTo(s, "10.3.0.0/26").Gateway); // CrossSubnet, same subnet: direct
        Assert.Equal(7, RouteTo(s, "10.3.0.64/26").OutputIndex);                         // CrossSubnet, another subnet: overlay
        Assert.Equal(7, RouteTo(s, "10.4.0.0/26").OutputIndex);                          // IPIP: carried over VXLAN, with a warning
        Assert.Equal(7, RouteTo(s, "10.2.0.64/26").OutputIndex);                         // None to another subnet: only the overlay reaches it
        Assert.Equal(RouteTypes.Blackhole, RouteTo(s, "10.1.0.64/26").Type);             // our own block
        Assert.Contains(s.Warnings, w => w.Contains("IPPool ipip asks for IPIP", StringComparison.Ordinal));
        Assert.Contains(s.Warnings, w => w.Contains("IPPool none has no encapsulation, but n3 is on another subnet", StringComparison.Ordinal));

        var hostGw = RouteCalculator.Compute(new HostGwBackend(), Me, nodes, blocks, [], pools);
        Assert.Equal(IPAddress.Parse("198.51.100.12"), RouteTo(hostGw, "10.1.0.0/26").Gateway);
        Assert.Contains(hostGw.Warnings, w => w.Contains("asks for VXLAN (Always) to n2, but this agent runs host-gw", StringComparison.Ordinal));
        Assert.Equal("unreachable", hostGw.Peers.Single(p => p.Name == "n3").State);
    }

    private static string Render(RouteState s) => string.Join("\n",
        s.AllRoutes.Select(r => $"{r.Destination}/{r.PrefixLength} via {r.Gateway} dev {r.OutputIndex} type {r.Type}")
            .Concat(s.Programs.SelectMany(p => p.Neighbours).Select(n => $"neigh {n.Address} {n.Mac}"))
            .Concat(s.Programs.SelectMany(p => p.Fdb).Select(f => $"fdb {f.Mac} {f.Destination}"))
            .Concat(s.Peers.Select(p => $"peer {p.Name} {p.State} {p.Blocks}")).Concat(s.Warnings));

    private static readonly Gen<(NodeRecord[] Nodes, AllocationBlock[] Blocks, WorkloadEndpoint[] Endpoints)> World =
        Gen.Select(Gen.Int[2, 6], Gen.Int[0, 40].Array[0, 30], Gen.Int[0, 255].Array[0, 10]).Select((n, blocks, eps) =>
        {
            var nodes = Enumerable.Range(1, n).Select(i => Node("n" + i, i % 3 == 0 ? "203.0.113." + i : "198.51.100." + (10 + i))).ToArray();
            var bl = blocks.Distinct().Select(b => Block($"10.{1 + b % 3}.{b / 3 % 4}.{b % 4 * 64}/26", "n" + (1 + b % n), b % 3 == 0 ? "vx" : b % 3 == 1 ? "none" : "cross"))
                .DistinctBy(b => b.Cidr).ToArray();
            var ep = eps.Select((e, i) => new WorkloadEndpoint
            {
                Node = "n" + (1 + e % n), Network = "net", ContainerId = "c" + i, IfName = "eth0", HostInterface = "weft" + i, Addresses = [$"10.{1 + e % 3}.9.{e}/32"],
            }).ToArray();
            return (nodes, bl, ep);
        });

    private static readonly IPPool[] Pools = [Pool("vx", "10.1.0.0/16", vxlan: "Always"), Pool("none", "10.2.0.0/16"), Pool("cross", "10.3.0.0/16", vxlan: "CrossSubnet")];

    [Fact]
    public void The_same_model_in_any_order_gives_the_same_routes()
    {
        Gen.Select(World, Gen.Int.Array[4]).Sample((w, seeds) =>
        {
            var expected = Render(RouteCalculator.Compute(new FakeOverlay(), Me, w.Nodes, w.Blocks, w.Endpoints, Pools));
            T[] Shuffle<T>(T[] xs, int seed) => [.. xs.OrderBy(_ => new Random(seed).Next()).Select((x, i) => (x, k: new Random(seed + i).Next())).OrderBy(p => p.k).Select(p => p.x)];
            var got = Render(RouteCalculator.Compute(new FakeOverlay(), Me, Shuffle(w.Nodes, seeds[0]), Shuffle(w.Blocks, seeds[1]), Shuffle(w.Endpoints, seeds[2]), Shuffle(Pools, seeds[3])));
            Assert.Equal(expected, got);
        }, iter: 200);
    }

    /// <summary>
    /// The watch's history, delivered as it was, or with every revision twice and earlier revisions replayed after
    /// later ones (a reconnect that resumed too early): the cache ends in the same state, so the routes are the same.
    /// </summary>
    [Fact]
    public void Duplicated_and_replayed_watch_history_leaves_the_same_cache_and_routes()
    {
        Gen.Select(World, Gen.Int[0, 1000]).Sample((w, seed) =>
        {
            // History: put every record, then delete or rewrite some, one revision per change.
            var history = new List<WatchEvent>();
            long rev = 0;
            foreach (var n in w.Nodes) history.Add(new(WatchEventKind.Put, Keys.Node(n.Name), Codec.Encode(n, ModelJson.Default.NodeRecord), ++rev));
            foreach (var p in Pools) history.Add(new(WatchEventKind.Put, Keys.Pool(p.Name), Codec.Encode(p, ModelJson.Default.IPPool), ++rev));
            foreach (var b in w.Blocks) history.Add(new(WatchEventKind.Put, Keys.Block(b.Network), Codec.Encode(b, ModelJson.Default.AllocationBlock), ++rev));
            var random = new Random(seed);
            foreach (var b in w.Blocks.Where(_ => random.Next(3) == 0))
                history.Add(random.Next(2) == 0
                    ? new(WatchEventKind.Delete, Keys.Block(b.Network), null, ++rev)
                    : new(WatchEventKind.Put, Keys.Block(b.Network), Codec.Encode(Block(b.Cidr, w.Nodes[random.Next(w.Nodes.Length)].Name, b.Pool), ModelJson.Default.AllocationBlock), ++rev));

            string Routes(IEnumerable<WatchEvent> delivered)
            {
                var cache = new DatastoreCache(new NoStore());
                cache.Load(new RangeResult([], 0));
                foreach (var e in delivered) cache.Apply([e]);
                var nodes = cache.ListAsync(Keys.Nodes).AsTask().Result.Items.Select(kv => Codec.Decode(kv.Value, ModelJson.Default.NodeRecord, kv.Key)).ToList();
                var blocks = cache.ListAsync(Keys.Blocks).AsTask().Result.Items.Select(kv => Codec.Decode(kv.Value, ModelJson.Default.AllocationBlock, kv.Key)).ToList();
                var pools = cache.ListAsync(Keys.Pools).AsTask().Result.Items.Select(kv => Codec.Decode(kv.Value, ModelJson.Default.IPPool, kv.Key)).ToList();
                return Render(RouteCalculator.Compute(new FakeOverlay(), Me, nodes, blocks, [], pools));
            }
            var once = Routes(history);
            var messy = history.SelectMany(e => new[] { e, e }).Concat(history.Where(_ => random.Next(2) == 0)).ToList();
            Assert.Equal(once, Routes(messy));
        }, iter: 100);
    }

    [Fact]
    public void Delta_upserts_what_is_missing_or_changed_and_removes_the_rest()
    {
        var d = Delta.Compute(new[] { ("a", 1), ("b", 2), ("c", 3) }, new[] { ("b", 2), ("c", 4), ("d", 5) }, x => x.Item1);
        Assert.Equal([("a", 1), ("c", 3)], d.Upserts);
        Assert.Equal([("d", 5)], d.Removals);
        Assert.True(Delta.Compute(new[] { 1, 2 }, new[] { 2, 1 }, x => x).IsEmpty);
    }

    /// <summary>The cache's backing store is never read in these tests.</summary>
    private sealed class NoStore : IDatastore
    {
        public string Describe => "none";
        public ValueTask<KeyValue?> GetAsync(string key, CancellationToken ct = default) => throw new NotSupportedException();
        public ValueTask<RangeResult> ListAsync(string prefix, CancellationToken ct = default) => throw new NotSupportedException();
        public ValueTask<TxnResult> CommitAsync(IReadOnlyList<Precondition> preconditions, IReadOnlyList<Mutation> mutations, CancellationToken ct = default) => throw new NotSupportedException();
        public IAsyncEnumerable<WatchEvent> WatchAsync(string prefix, long afterRevision, CancellationToken ct = default) => throw new NotSupportedException();
        public ValueTask<long> RevisionAsync(CancellationToken ct = default) => throw new NotSupportedException();
        public ValueTask CompactAsync(long revision, CancellationToken ct = default) => throw new NotSupportedException();
        public void Dispose() { }
    }
}
