using System.Diagnostics;
using System.Net.Sockets;
using Weft.Agent.Backends;
using Weft.Datastore;
using Weft.Model;
using Weft.Netlink;

namespace Weft.Agent.Reconcile;

/// <summary>
/// Keeps this node's routes, neighbours and FDB entries to every peer in step with the datastore: watch nodes and
/// blocks, coalesce changes, compute the whole desired state through the backend, diff it against what the kernel
/// holds (entries marked with the agent's route protocol or on the backend's own device) and apply only the
/// difference. A restart reads the kernel back and adopts it, so traffic keeps flowing; a periodic resync repairs
/// drift (someone deleting a route by hand).
/// </summary>
public sealed class RouteReconciler(IDatastore store, DatastoreTrigger trigger, IBackend backend, LocalNode me, AgentState state, TimeSpan resync, ILogger<RouteReconciler> log, bool policyEnforced = true,
    BpfMasquerade? bpfMasquerade = null)
    : Reconciler(trigger, resync, log)
{
    private readonly NatProgrammer _nat = new(policyEnforced, (backend as VxlanBackend)?.Port, masquerade: bpfMasquerade is null);
    private SortedSet<string> _warned = new(StringComparer.Ordinal);

    protected override string Concern => "routes";

    protected override bool IsInput(string key) =>
        key.StartsWith(Keys.Nodes, StringComparison.Ordinal) || key.StartsWith(Keys.Blocks, StringComparison.Ordinal) ||
        key.StartsWith(Keys.Pools, StringComparison.Ordinal) || key.StartsWith(Keys.Endpoints, StringComparison.Ordinal);

    protected override void OnFailed(Exception e, TimeSpan retryIn) =>
        state.Update(s => s with { ReconcileErrors = s.ReconcileErrors + 1, LastError = e.Message });

    protected override async Task ReconcileAsync(bool drift, CancellationToken ct)
    {
        var sw = Stopwatch.StartNew();
        // Read the revision first: everything up to it is in what we load next.
        var revision = await store.RevisionAsync(ct).ConfigureAwait(false);
        var nodes = (await store.ListAsync(Keys.Nodes, ct).ConfigureAwait(false)).Items
            .Select(kv => Codec.Decode(kv.Value, ModelJson.Default.NodeRecord, kv.Key)).ToList();
        var blocks = (await store.ListAsync(Keys.Blocks, ct).ConfigureAwait(false)).Items
            .Select(kv => Codec.Decode(kv.Value, ModelJson.Default.AllocationBlock, kv.Key)).ToList();
        var endpoints = (await store.ListAsync(Keys.Endpoints, ct).ConfigureAwait(false)).Items
            .Select(kv => Codec.Decode(kv.Value, ModelJson.Default.WorkloadEndpoint, kv.Key)).ToList();
        var pools = (await store.ListAsync(Keys.Pools, ct).ConfigureAwait(false)).Items
            .Select(kv => Codec.Decode(kv.Value, ModelJson.Default.IPPool, kv.Key)).ToList();
        var peers = new List<PeerStatus>();
        var programs = new List<PeerProgram>();
        var warnings = new SortedSet<string>(StringComparer.Ordinal);
        foreach (var peer in nodes.Where(n => n.Name != me.Name))
        {
            var peerBlocks = blocks.Where(b => b.Affinity == peer.Name).ToList();
            // A peer's pod whose address came from a block affine to another node (borrowed, or pinned with
            // cni.projectcalico.org/ipAddrs) needs its own host route, as Calico programs for borrowed IPs.
            var blockRoutes = peerBlocks.Select(b => (Cidr: b.Network, Pool: b.Pool)).ToList();
            foreach (var ep in endpoints.Where(e => e.Node == peer.Name))
                foreach (var a in ep.Addresses)
                    if (System.Net.IPAddress.TryParse(a.Split('/')[0], out var ip) && ip.AddressFamily == AddressFamily.InterNetwork &&
                        !peerBlocks.Any(b => b.Network.Contains(ip)))
                        blockRoutes.Add((Cidr.Host(ip), blocks.FirstOrDefault(b => b.Network.Contains(ip))?.Pool ?? ""));
            try
            {
                // Each pool's encapsulation decides, per peer, whether its blocks go through the overlay or direct.
                var onSubnet = PoolEncapsulation.OnSubnet(me, peer);
                var overlay = new List<Cidr>();
                var direct = new List<Cidr>();
                foreach (var (cidr, poolName) in blockRoutes)
                {
                    var (path, warning) = PoolEncapsulation.For(PoolEncapsulation.PoolOf(cidr, pools, poolName), backend.Type, onSubnet, peer.Name);
                    if (warning is not null) warnings.Add(warning);
                    (path == BlockPath.Overlay ? overlay : direct).Add(cidr);
                }
                var program = backend.OwnedDeviceIndex == 0
                    ? backend.ProgramFor(me, peer, [.. overlay, .. direct]) // no overlay here: everything is direct
                    : backend.ProgramFor(me, peer, overlay);
                if (backend.OwnedDeviceIndex > 0 && direct.Count > 0)
                    program = program with { Routes = [.. program.Routes, .. HostGwBackend.Direct(me, peer, direct).Routes] };
                programs.Add(program);
                peers.Add(new PeerStatus(peer.Name, peer.UnderlayAddress, peerBlocks.Count, "programmed", null));
            }
            catch (BackendException e)
            {
                peers.Add(new PeerStatus(peer.Name, peer.UnderlayAddress, peerBlocks.Count, "unreachable", e.Message));
                log.LogWarning("{Error}", e.Message);
            }
        }
        foreach (var w in warnings.Except(_warned, StringComparer.Ordinal)) log.LogWarning("{Warning}", w);
        _warned = warnings;
        // This node's own blocks end in a blackhole (as Calico programs): an address of ours with no pod behind
        // it must not follow the default route out of the node. Pods' /32 routes are more specific; the high
        // metric keeps a bridge's connected route of the same prefix (bridge mode) in charge.
        var own = blocks.Where(b => b.Affinity == me.Name && b.Network.IsIPv4)
            .Select(b => new RouteSpec(b.Network.NetworkAddress, b.Network.PrefixLength) { Type = RouteTypes.Blackhole, Priority = 1024, Protocol = RouteProtocols.Agent })
            .ToList();
        var routes = Apply(programs, own);
        var natPools = NatPools.From(pools);
        // BPF first: when it takes over from nftables masquerade, packets nftables already translated pass it as
        // the node's own, so no packet leaves untranslated in between.
        if (bpfMasquerade?.Apply(natPools) == true) log.LogInformation("BPF masquerade programmed for {Count} pool(s)", natPools.Masquerading.Count);
        if (_nat.Apply(natPools)) log.LogInformation("nftables NAT table rewritten ({Count} natOutgoing pool(s))", natPools.Masquerading.Count);
        state.Update(s => s with
        {
            Synced = true, LastReconcile = DateTime.UtcNow, LastReconcileMs = sw.Elapsed.TotalMilliseconds,
            Reconciles = s.Reconciles + 1, Routes = routes, Peers = peers, LastError = null, Warnings = [.. warnings], RoutesRevision = revision,
        });
    }

    /// <summary>Diff against the kernel and apply: add/replace what is missing, then remove what is stale.</summary>
    private int Apply(IReadOnlyList<PeerProgram> programs, IReadOnlyList<RouteSpec> blackholes)
    {
        using var nl = RtNetlink.Open();
        var wantRoutes = programs.SelectMany(p => p.Routes).Concat(blackholes).ToList();
        var haveRoutes = nl.ListRoutes(AddressFamily.InterNetwork).Where(r => r.Protocol == RouteProtocols.Agent).ToList();
        foreach (var r in wantRoutes)
        {
            var present = haveRoutes.Any(h => h.Destination.Equals(r.Destination) && h.PrefixLength == r.PrefixLength &&
                                              Equals(h.Gateway, r.Gateway) && h.OutputIndex == r.OutputIndex && h.Type == r.Type);
            if (!present) nl.ReplaceRoute(r);
        }
        // Neighbours and FDB before stale routes go, so a moved block never points at a missing VTEP.
        if (backend.OwnedDeviceIndex > 0)
        {
            var dev = backend.OwnedDeviceIndex;
            var wantNeigh = programs.SelectMany(p => p.Neighbours).ToList();
            foreach (var n in wantNeigh) nl.ReplaceNeighbour(dev, n.Address, n.Mac);
            foreach (var n in nl.ListNeighbours(dev, AddressFamily.InterNetwork))
                if (n.State == NeighbourState.Permanent && !wantNeigh.Any(w => w.Address.Equals(n.Address)))
                    nl.DeleteNeighbour(dev, n.Address);
            var wantFdb = programs.SelectMany(p => p.Fdb).ToList();
            var haveFdb = nl.ListFdb(dev);
            foreach (var f in wantFdb)
                if (!haveFdb.Any(h => h.Mac.Equals(f.Mac) && f.Destination.Equals(h.Destination)))
                    nl.AppendFdb(dev, f.Mac, f.Destination);
            foreach (var h in haveFdb)
                if (h.Destination is not null && !wantFdb.Any(f => f.Mac.Equals(h.Mac) && f.Destination.Equals(h.Destination)))
                    nl.DeleteFdb(dev, h.Mac, h.Destination);
        }
        foreach (var h in haveRoutes)
        {
            var wanted = wantRoutes.Any(r => h.Destination.Equals(r.Destination) && h.PrefixLength == r.PrefixLength &&
                                             Equals(h.Gateway, r.Gateway) && h.OutputIndex == r.OutputIndex && h.Type == r.Type);
            if (!wanted)
                nl.DeleteRoute(new RouteSpec(h.Destination, h.PrefixLength)
                {
                    Gateway = h.Gateway, OutputIndex = h.OutputIndex, Protocol = RouteProtocols.Agent, Type = h.Type,
                    Priority = h.Type == RouteTypes.Blackhole ? 1024 : 0,
                });
        }
        return wantRoutes.Count;
    }
}
