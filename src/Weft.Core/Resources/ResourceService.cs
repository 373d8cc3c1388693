using Weft.Datastore;
using Weft.Ipam;
using Weft.Model;

namespace Weft.Resources;

/// <summary>
/// Applies and deletes operator resources. Validates the whole batch against itself and the stored state first
/// (overlapping pools, immutable fields), then writes it in one transaction: all of it or none of it.
/// </summary>
public sealed class ResourceService(IDatastore store)
{
    /// <summary>The datastore revision of this service's last write (what `--wait` waits for agents to enforce).</summary>
    public long LastRevision { get; private set; }

    public async Task<IReadOnlyList<string>> ApplyAsync(IReadOnlyList<Resource> resources, CancellationToken ct = default)
    {
        var seen = new Dictionary<(string, string), Resource>();
        foreach (var r in resources)
            if (!seen.TryAdd((r.Kind, r.Name), r))
                throw new ResourceException($"{r.Source}: {r.Kind} {r.Name} is also defined in {seen[(r.Kind, r.Name)].Source}");

        var storedPools = await store.ListAsync(Keys.Pools, ct).ConfigureAwait(false);
        var pools = storedPools.Items.ToDictionary(kv => Codec.Decode(kv.Value, ModelJson.Default.IPPool, kv.Key).Name, kv => kv, StringComparer.Ordinal);
        var blocks = await store.ListAsync(Keys.Blocks, ct).ConfigureAwait(false);
        var preconditions = new List<Precondition>();
        var mutations = new List<Mutation>();
        var messages = new List<string>();

        // The pool set as it will be after this apply, to check overlaps against.
        var after = pools.ToDictionary(p => p.Key, p => Codec.Decode(p.Value.Value, ModelJson.Default.IPPool, p.Value.Key).Network, StringComparer.Ordinal);
        foreach (var r in resources.OfType<IPPoolResource>()) after[r.Name] = r.Pool.Network;

        foreach (var r in resources)
        {
            switch (r)
            {
                case IPPoolResource { Pool: var pool }:
                {
                    foreach (var (otherName, otherCidr) in after)
                        if (otherName != pool.Name && otherCidr.Overlaps(pool.Network))
                            throw new ResourceException($"{r.Source} (IPPool {pool.Name}): spec.cidr {pool.Cidr} overlaps IPPool {otherName} ({otherCidr}); pools must not overlap");
                    var key = Keys.Pool(pool.Name);
                    var stored = pools.GetValueOrDefault(pool.Name);
                    var storedPool = stored is null ? null : Codec.Decode(stored.Value, ModelJson.Default.IPPool, stored.Key);
                    if (storedPool is not null && (storedPool.Cidr != pool.Cidr || storedPool.BlockSize != pool.BlockSize) &&
                        blocks.Items.Any(b => storedPool.Network.Contains(Cidr.FromKey(b.Key[Keys.Blocks.Length..]))))
                        throw new ResourceException($"{r.Source} (IPPool {pool.Name}): spec.cidr and spec.blockSize cannot change while the pool has allocation blocks; create a new pool, migrate pods, then delete this one");
                    var toStore = storedPool?.CreationTimestamp is { } created ? With(pool, created) : pool;
                    var bytes = Codec.Encode(toStore, ModelJson.Default.IPPool);
                    preconditions.Add(new Precondition(key, stored?.ModRevision ?? 0));
                    mutations.Add(Mutation.Put(key, bytes));
                    messages.Add($"Successfully {(stored is null ? "created" : "applied")} 1 'IPPool' resource(s): {pool.Name}");
                    break;
                }
                case IPReservationResource { Reservation: var res }:
                {
                    var key = Keys.Reservation(res.Name);
                    var stored = await store.GetAsync(key, ct).ConfigureAwait(false);
                    preconditions.Add(new Precondition(key, stored?.ModRevision ?? 0));
                    mutations.Add(Mutation.Put(key, Codec.Encode(res, ModelJson.Default.IPReservation)));
                    messages.Add($"Successfully {(stored is null ? "created" : "applied")} 1 'IPReservation' resource(s): {res.Name}");
                    break;
                }
                case PolicyResource pr:
                    await Document(Keys.Policy(pr.Policy.Id), pr.Kind, pr.Name, pr.Document).ConfigureAwait(false);
                    break;
                case InstallationResource ir:
                    await Document(Keys.Installations + ir.InstallationName, "Installation", ir.Name, ir.Document).ConfigureAwait(false);
                    messages.Add($"Installation {ir.Name}: linuxDataplane {ir.LinuxDataplane} runs Weft's {ir.WeftDataplane} dataplane" +
                                 (ir.LinuxDataplane == "Iptables" ? " (Calico's iptables rules, written as one nftables table)" :
                                  ir.LinuxDataplane == "BPF" ? " (tc eBPF programs on every pod interface; running agents switch over, unless started with --dataplane)" : ""));
                    break;
                case TierResource tr:
                    await Document(Keys.Tier(tr.TierName), "Tier", tr.TierName, tr.Document).ConfigureAwait(false);
                    break;
                case NamespaceResource nr:
                    await Document(Keys.K8sNamespace(nr.Namespace.Name), "Namespace", nr.Name, nr.Document).ConfigureAwait(false);
                    break;
                case PodResource podr:
                    await Document(Keys.K8sPod(podr.Pod.Namespace, podr.Pod.Name), "Pod", podr.Name, podr.Document).ConfigureAwait(false);
                    break;
            }
        }
        // Documents are stored as applied (JSON), so every agent reads them through the same dialect readers.
        async Task Document(string key, string kind, string name, System.Text.Json.Nodes.JsonObject doc)
        {
            var stored = await store.GetAsync(key, ct).ConfigureAwait(false);
            var bytes = System.Text.Encoding.UTF8.GetBytes(doc.ToJsonString());
            preconditions.Add(new Precondition(key, stored?.ModRevision ?? 0));
            mutations.Add(Mutation.Put(key, bytes));
            var verb = stored is null ? "created" : stored.Value.AsSpan().SequenceEqual(bytes) ? "unchanged" : "configured";
            messages.Add($"{kind} {name} {verb}");
        }
        var txn = await store.CommitAsync(preconditions, mutations, ct).ConfigureAwait(false);
        if (!txn.Succeeded)
            throw new ResourceConflictException("the datastore changed while applying (another apply ran at the same time); nothing was written, run the command again");
        LastRevision = txn.Revision;
        return messages;
    }

    private static IPPool With(IPPool p, string created) => new()
    {
        Name = p.Name, Cidr = p.Cidr, BlockSize = p.BlockSize, NodeSelector = p.NodeSelector, Disabled = p.Disabled,
        NatOutgoing = p.NatOutgoing, IpipMode = p.IpipMode, VxlanMode = p.VxlanMode, AllowedUses = p.AllowedUses,
        DisableBGPExport = p.DisableBGPExport, AssignmentMode = p.AssignmentMode, CreationTimestamp = created,
    };

    public async Task<IReadOnlyList<IPPool>> ListPoolsAsync(CancellationToken ct = default) =>
        await store.ListRecordsAsync(Keys.Pools, ModelJson.Default.IPPool, ct).ConfigureAwait(false);

    public async Task<IReadOnlyList<IPReservation>> ListReservationsAsync(CancellationToken ct = default) =>
        await store.ListRecordsAsync(Keys.Reservations, ModelJson.Default.IPReservation, ct).ConfigureAwait(false);

    /// <summary>What the last Node deleted here gave back.</summary>
    public NodeRelease? LastNodeRelease { get; private set; }

    /// <summary>Deletes one resource. A pool still holding addresses is refused unless forced.</summary>
    public async Task<bool> DeleteAsync(string kind, string name, bool force, CancellationToken ct = default)
    {
        var key = NormaliseKind(kind) switch
        {
            "IPPool" => Keys.Pool(name),
            "IPReservation" => Keys.Reservation(name),
            "Node" => Keys.Node(name),
            "KubernetesNetworkPolicy" => Keys.Policy("knp/" + Namespaced(name)),
            "NetworkPolicy" => Keys.Policy("np/" + Namespaced(name)),
            "GlobalNetworkPolicy" => Keys.Policy("gnp/" + name),
            "Tier" => Keys.Tier(name),
            "Installation" => Keys.Installations + name,
            "Namespace" => Keys.K8sNamespace(name),
            "Pod" => Keys.K8sPod(Namespaced(name).Split('/')[0], Namespaced(name).Split('/')[1]),
            var k => throw new ResourceException($"cannot delete kind '{k}'; known kinds: {string.Join(", ", ResourceReader.Kinds)}"),
        };
        var kv = await store.GetAsync(key, ct).ConfigureAwait(false);
        // "networkpolicy NAME" finds a Kubernetes NetworkPolicy too, as kubectl users expect.
        if (kv is null && NormaliseKind(kind) == "NetworkPolicy")
            kv = await store.GetAsync(key = Keys.Policy("knp/" + Namespaced(name)), ct).ConfigureAwait(false);
        if (kv is null) return false;
        if (NormaliseKind(kind) == "IPPool" && !force)
        {
            var pool = Codec.Decode(kv.Value, ModelJson.Default.IPPool, kv.Key);
            var inUse = (await store.ListRecordsAsync(Keys.Blocks, ModelJson.Default.AllocationBlock, ct).ConfigureAwait(false))
                .Where(b => pool.Network.Contains(b.Network))
                .Sum(b => b.Allocations.Count(a => !a.Handle.StartsWith(IpamService.GatewayHandlePrefix, StringComparison.Ordinal)));
            if (inUse > 0)
                throw new ResourceException($"IPPool {name} still has {inUse} address(es) in use; set spec.disabled: true, move the pods, then delete (or pass --force)");
        }
        var txn = await store.DeleteAsync(key, kv.ModRevision, ct).ConfigureAwait(false);
        if (!txn.Succeeded) throw new ResourceConflictException($"{kind} {name} changed while deleting; try again");
        LastRevision = txn.Revision;
        // As calicoctl: a deleted node's addresses and blocks go too; those of pods that still have endpoints stay
        // (with their blocks) until CNI DEL or GC removes the pods.
        if (NormaliseKind(kind) == "Node")
            LastNodeRelease = await NodeCleanup.RemoveAsync(store, name, NodeCleanup.EndpointExists(store, name), ct).ConfigureAwait(false);
        return true;
    }

    /// <summary>"ns/name", or "name" in the default namespace.</summary>
    private static string Namespaced(string name) => name.Contains('/', StringComparison.Ordinal) ? name : "default/" + name;

    /// <summary>Accepts the names calicoctl accepts: ippool, ippools, IPPool, ipp...</summary>
    public static string NormaliseKind(string kind) => kind.ToLowerInvariant() switch
    {
        "ippool" or "ippools" or "ipp" or "pool" or "pools" => "IPPool",
        "ipreservation" or "ipreservations" or "ipr" => "IPReservation",
        "node" or "nodes" or "no" => "Node",
        "networkpolicy" or "networkpolicies" or "netpol" or "np" or "calico-networkpolicy" => "NetworkPolicy",
        "knp" or "kubernetesnetworkpolicy" or "networkpolicy.networking.k8s.io" or "networkpolicies.networking.k8s.io" => "KubernetesNetworkPolicy",
        "globalnetworkpolicy" or "globalnetworkpolicies" or "gnp" => "GlobalNetworkPolicy",
        "tier" or "tiers" => "Tier",
        "installation" or "installations" => "Installation",
        "namespace" or "namespaces" or "ns" => "Namespace",
        "pod" or "pods" or "po" => "Pod",
        _ => kind,
    };
}
