using System.Net;
using System.Net.NetworkInformation;
using System.Net.Sockets;
using System.Text;
using Weft.Agent.Backends;
using Weft.Agent.Config;
using Weft.Datastore;
using Weft.Ipam;
using Weft.Model;
using Weft.Netlink;
using Weft.Resources;

namespace Weft.Agent.Reconcile;

/// <summary>A setting or a conflict the agent cannot start with; the message says what to change.</summary>
public sealed class AgentStartupException(string message) : Exception(message);

/// <summary>Start-up: find the underlay, ensure net-conf's pool, claim a tunnel address, and register the node.</summary>
public static class NodeRegistration
{
    public static LocalNode DiscoverUnderlay(string node, string? interfaceName)
    {
        using var nl = RtNetlink.Open();
        LinkInfo? link;
        if (interfaceName is not null)
        {
            link = nl.GetLink(interfaceName) ?? throw new AgentStartupException($"underlay interface {interfaceName} does not exist on node {node}");
        }
        else
        {
            var def = nl.ListRoutes(AddressFamily.InterNetwork).FirstOrDefault(r => r.PrefixLength == 0 && r.OutputIndex > 0);
            link = def is not null ? nl.GetLink(def.OutputIndex)
                : nl.ListLinks().FirstOrDefault(l => l.IsUp && l.Name != "lo" && nl.ListAddresses(l.Index).Any(a => a.Address.AddressFamily == AddressFamily.InterNetwork));
            if (link is null) throw new AgentStartupException($"node {node}: no default route and no interface with an IPv4 address; pass --underlay-interface");
        }
        var addr = nl.ListAddresses(link.Index).FirstOrDefault(a => a.Address.AddressFamily == AddressFamily.InterNetwork && a.Scope == 0)
            ?? throw new AgentStartupException($"underlay interface {link.Name} has no IPv4 address");
        return new LocalNode(node, link.Index, link.Name, addr.Address, addr.PrefixLength, link.Mtu > 0 ? link.Mtu : 1500);
    }

    /// <summary>A locally administered MAC derived from the node name: the same across restarts, so peers' FDBs stay valid.</summary>
    public static PhysicalAddress VtepMacFor(string node)
    {
        var hash = 14695981039346656037UL;
        foreach (var b in Encoding.UTF8.GetBytes(node)) hash = (hash ^ b) * 1099511628211UL;
        var mac = new byte[6];
        mac[0] = 0x0e; // locally administered, unicast
        for (var i = 1; i < 6; i++) mac[i] = (byte)(hash >> (8 * i));
        return new PhysicalAddress(mac);
    }

    public static async Task EnsureNetConfPoolAsync(IDatastore store, FlannelNetConf netConf, CancellationToken ct)
    {
        var service = new ResourceService(store);
        var network = Cidr.Parse(netConf.Network);
        // Every node's agent starts from the same file at once: whoever loses the race to create the pool finds it
        // on the next look.
        for (var attempt = 1; ; attempt++)
        {
            var pools = await service.ListPoolsAsync(ct).ConfigureAwait(false);
            if (pools.Any(p => p.Network == network)) return;
            var pool = new IPPool { Name = "net-conf", Cidr = network.ToString(), BlockSize = netConf.SubnetLen, VxlanMode = netConf.BackendType == "vxlan" ? "Always" : "Never", CreationTimestamp = DateTime.UtcNow.ToString("yyyy-MM-ddTHH:mm:ssZ") };
            try
            {
                await service.ApplyAsync([new IPPoolResource(pool, new DocumentSource("net-conf.json", 1))], ct).ConfigureAwait(false);
                return;
            }
            catch (ResourceConflictException) when (attempt < 5)
            {
                await Task.Delay(Random.Shared.Next(5, 50), ct).ConfigureAwait(false);
            }
            catch (ResourceException e)
            {
                throw new AgentStartupException($"net-conf.json Network {network}: {e.Message}");
            }
        }
    }

    /// <summary>
    /// Flannel's kube subnet manager in Weft's terms: with a net-conf.json on the kubernetes datastore, the node's
    /// Kubernetes `spec.podCIDRs` (given by kube-controller-manager's --allocate-node-cidrs) become the node's blocks
    /// before its first address is asked for, so its pods get addresses from its podCIDR as they do under Flannel.
    /// A Node without a podCIDR (the controller does not allocate them) leaves IPAM to claim blocks as usual.
    /// </summary>
    public static async Task ClaimPodCidrsAsync(IDatastore store, string node, ILogger log, CancellationToken ct)
    {
        var kv = await store.GetAsync(Keys.K8sNode(node), ct).ConfigureAwait(false);
        if (kv is null)
        {
            log.LogWarning("node {Node}: no Kubernetes Node of this name; its pods' blocks are claimed as needed, not from a podCIDR", node);
            return;
        }
        var spec = System.Text.Json.Nodes.JsonNode.Parse(kv.Value)?["spec"];
        var cidrs = spec?["podCIDRs"] is System.Text.Json.Nodes.JsonArray list ? list.Select(c => c?.GetValue<string>()).OfType<string>().ToList()
            : spec?["podCIDR"]?.GetValue<string>() is { } one ? [one] : [];
        var ipam = new IpamService(store);
        foreach (var text in cidrs)
        {
            if (!Cidr.TryParse(text, out var cidr)) throw new AgentStartupException($"node {node}: spec.podCIDR '{text}' is not a CIDR");
            try
            {
                if (await ipam.ClaimBlockAsync(node, cidr, ct).ConfigureAwait(false)) log.LogInformation("node {Node}: pods get addresses from its podCIDR {Cidr}", node, cidr);
                else log.LogWarning("node {Node}: its podCIDR {Cidr} is held by another node's block; pods get addresses from other blocks", node, cidr);
            }
            catch (IpamException e) when (e.CniCode == IpamCodes.AddressUnavailable)
            {
                log.LogWarning("node {Node}: podCIDR not used: {Error}", node, e.Message);
            }
        }
    }

    /// <summary>The VXLAN endpoint address, held in IPAM under the node's tunnel handle (Calico's approach).</summary>
    public static async Task<IPAddress> TunnelAddressAsync(IDatastore store, string node, ILogger log, CancellationToken ct)
    {
        var ipam = new IpamService(store);
        while (true)
        {
            try
            {
                var got = await ipam.AssignAsync(new AssignRequest(IpamService.TunnelHandleId(node), node) { IPv6 = false, Network = "" }, ct).ConfigureAwait(false);
                return got[0].Address;
            }
            catch (NoPoolException e)
            {
                log.LogWarning("waiting for an IP pool: {Error}", e.Message);
                await Task.Delay(2000, ct).ConfigureAwait(false);
            }
        }
    }

    /// <summary>
    /// Writes the node record. A record with another underlay address means a second machine claims this name:
    /// refused, so two nodes never fight over one set of routes. The same address is this node restarting.
    /// </summary>
    /// <summary>Refuses early, before touching the kernel, when another machine holds this node name.</summary>
    public static async Task EnsureNameAvailableAsync(IDatastore store, LocalNode me, CancellationToken ct)
    {
        var kv = await store.GetAsync(Keys.Node(me.Name), ct).ConfigureAwait(false);
        if (kv is null) return;
        var existing = Codec.Decode(kv.Value, ModelJson.Default.NodeRecord, kv.Key);
        var underlay = $"{me.UnderlayAddress}/{me.UnderlayPrefix}";
        if (existing.UnderlayAddress is not null && existing.UnderlayAddress != underlay)
            throw new AgentStartupException($"node name '{me.Name}' is already registered by a node at {existing.UnderlayAddress}; " +
                $"this node is at {underlay}. Give this node another --nodename, or remove the old node's record first (`weftctl delete node {me.Name}`)");
    }

    public static async Task RegisterAsync(IDatastore store, LocalNode me, string backend, int mtu, IReadOnlyDictionary<string, string> labels, CancellationToken ct)
    {
        var key = Keys.Node(me.Name);
        var underlay = $"{me.UnderlayAddress}/{me.UnderlayPrefix}";
        for (var attempt = 0; attempt < 20; attempt++)
        {
            var kv = await store.GetAsync(key, ct).ConfigureAwait(false);
            await EnsureNameAvailableAsync(store, me, ct).ConfigureAwait(false);
            var mergedLabels = new Dictionary<string, string>(labels) { ["kubernetes.io/hostname"] = me.Name };
            var record = new NodeRecord
            {
                Name = me.Name, Labels = mergedLabels, UnderlayAddress = underlay, Backend = backend, Mtu = mtu,
                VtepMac = me.VtepMac is null ? null : string.Join(':', me.VtepMac.GetAddressBytes().Select(b => b.ToString("x2", System.Globalization.CultureInfo.InvariantCulture))),
                VtepAddress = me.VtepAddress?.ToString(), AgentId = Guid.NewGuid().ToString("N"), Heartbeat = DateTime.UtcNow.ToString("O"),
            };
            var txn = await store.PutAsync(key, Codec.Encode(record, ModelJson.Default.NodeRecord), kv?.ModRevision ?? 0, ct).ConfigureAwait(false);
            if (txn.Succeeded) return;
        }
        throw new AgentStartupException($"could not register node {me.Name}: the record kept changing under us");
    }
}
