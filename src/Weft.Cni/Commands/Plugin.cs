using System.Net;
using System.Net.Sockets;
using System.Runtime.ExceptionServices;
using Weft.Cni.Config;
using Weft.Cni.Interfaces;
using Weft.Cni.Results;
using Weft.Cni.Skeleton;
using Weft.Datastore;
using Weft.Ipam;
using Weft.Model;
using Weft.Netlink;

namespace Weft.Cni.Commands;

/// <summary>The plugin's verbs. Each reads top to bottom: config → IPAM → interfaces → record → result.</summary>
public sealed class Plugin(CniEnvironment env, NetConf conf)
{
    private string Node => string.IsNullOrEmpty(conf.NodeName) ? Environment.MachineName : conf.NodeName;
    private string HandleId => Keys.HandleId(conf.Name, env.ContainerId, env.IfName);

    public async Task<CniResult> AddAsync(CniArgs args, CancellationToken ct)
    {
        if (!NetNs.Exists(env.Netns))
            throw new CniException(CniCodes.InvalidEnvironment, $"CNI_NETNS {env.Netns} does not exist or is not a network namespace");
        using var store = OpenStore();
        var ipam = new IpamService(store);
        var interfaces = new PodInterfaces(conf, env);
        var delegated = conf.DelegatesIpam ? new DelegatedIpam(conf, env) : null;
        var success = false;
        try
        {
            var addresses = delegated is not null
                ? delegated.Add()
                : await AssignAsync(ipam, store, args, ct).ConfigureAwait(false);
            var result = interfaces.Build(addresses);
            if (delegated is not null)
            {
                result.DnsNameservers.AddRange(delegated.Result?.DnsNameservers ?? []);
                result.DnsSearch.AddRange(delegated.Result?.DnsSearch ?? []);
            }
            var endpoint = new WorkloadEndpoint
            {
                Node = Node, Network = conf.Name, ContainerId = env.ContainerId, IfName = env.IfName,
                Namespace = args.PodNamespace, Pod = args.PodName, Netns = env.Netns, HostInterface = interfaces.HostVethName,
                Mac = result.Interfaces[^1].Mac, Mode = conf.Mode == NetworkMode.Routed ? "routed" : "bridge",
                Addresses = result.Ips.Select(i => i.AddressText).ToList(), Created = DateTime.UtcNow.ToString("O"),
            };
            await store.PutAsync(Keys.Endpoint(Node, HandleId), Codec.Encode(endpoint), -1, ct).ConfigureAwait(false);
            success = true;
            return result;
        }
        finally
        {
            if (!success)
            {
                // Roll back whatever was built: nothing of a failed ADD may outlive it.
                TryQuietly(() => interfaces.Teardown());
                if (delegated is not null) TryQuietly(delegated.Del);
                else await TryQuietlyAsync(() => ipam.ReleaseAsync(HandleId, CancellationToken.None)).ConfigureAwait(false);
            }
        }
    }

    private async Task<IReadOnlyList<PodAddress>> AssignAsync(IpamService ipam, IDatastore store, CniArgs args, CancellationToken ct)
    {
        // A loop, not Concat/Select: a LINQ chain on an iterator is a generic virtual call, resolved at run time under
        // NativeAOT (~0.3 ms the first time, in a process that lives for one ADD).
        var requested = new List<IPAddress>();
        foreach (var list in new[] { args.Ips, conf.RuntimeIps })
            foreach (var r in list)
                if (!requested.Contains(r.Address)) requested.Add(r.Address);
        // The Pod's own requests, as Calico reads them: kubelet passes only the pod's name, the annotations are on the Pod.
        var pod = args.PodNamespace is { Length: > 0 } ns && args.PodName is { Length: > 0 } name
            ? PodAnnotations.Read(await store.GetAsync(Keys.K8sPod(ns, name), ct).ConfigureAwait(false))
            : PodAnnotations.None;
        if (pod.IpAddrs.Count > 0)
        {
            if (requested.Count > 0)
                throw new CniException(CniCodes.InvalidNetworkConfig, $"pod {args.PodNamespace}/{args.PodName}: {PodAnnotations.IpAddrsKey} and addresses from the runtime (IP=, the ips capability) cannot be used together");
            requested.AddRange(pod.IpAddrs);
        }
        var assigned = await ipam.AssignAsync(new AssignRequest(HandleId, Node)
        {
            Network = conf.Name, ContainerId = env.ContainerId, IfName = env.IfName, Requested = requested, Pools = pod.Pools,
            ReserveBlockGateway = conf.Mode == NetworkMode.Bridge,
            Attributes = new Dictionary<string, string>
            {
                ["namespace"] = args.PodNamespace ?? "", ["pod"] = args.PodName ?? "", ["containerID"] = env.ContainerId, ["ifname"] = env.IfName,
            },
        }, ct).ConfigureAwait(false);
        var result = new List<PodAddress>();
        foreach (var a in assigned)
        {
            IPAddress? gateway = null;
            if (conf.Mode == NetworkMode.Bridge)
                gateway = await ipam.EnsureBlockGatewayAsync(a.Block, Node, ct).ConfigureAwait(false);
            result.Add(new PodAddress(a.Address, a.Block.PrefixLength, gateway));
        }
        return result;
    }

    public async Task DelAsync(CancellationToken ct)
    {
        // Interfaces first, then addresses. Removing a veth waits ~25 ms in the kernel for an RCU grace period; the
        // datastore opens on this thread meanwhile (synchronous work only on the other one: see NetNs).
        var interfaces = new PodInterfaces(conf, env);
        ExceptionDispatchInfo? teardownError = null;
        var teardown = new Thread(() =>
        {
            try { interfaces.Teardown(); }
            catch (Exception e) { teardownError = ExceptionDispatchInfo.Capture(e); }
        }, maxStackSize: 1 << 20) { IsBackground = true, Name = "teardown" };
        teardown.Start();
        IDatastore store;
        try { store = OpenStore(); }
        finally { teardown.Join(); }
        using var owned = store;
        teardownError?.Throw();
        if (conf.DelegatesIpam) new DelegatedIpam(conf, env).Del();
        else await new IpamService(store).ReleaseAsync(HandleId, ct).ConfigureAwait(false);
        await store.DeleteAsync(Keys.Endpoint(Node, HandleId), -1, ct).ConfigureAwait(false);
    }

    public async Task CheckAsync(CancellationToken ct)
    {
        var prev = conf.PrevResult ?? throw new CniException(CniCodes.InvalidNetworkConfig, "CHECK needs prevResult in the network configuration");
        using var store = OpenStore();
        if (conf.DelegatesIpam)
        {
            new DelegatedIpam(conf, env).Check();
        }
        else
        {
            var held = await new IpamService(store).GetByHandleAsync(HandleId, ct).ConfigureAwait(false);
            foreach (var ip in prev.Ips)
                if (!held.Any(h => h.Address.Equals(ip.Address)))
                    throw new CniException(CniCodes.CheckFailed, $"IPAM does not hold {ip.Address} for {HandleId}");
        }
        new PodInterfaces(conf, env).Verify(prev);
    }

    public async Task StatusAsync(CancellationToken ct)
    {
        IDatastore store;
        try { store = DatastoreFactory.Open(conf.Datastore); }
        catch (Exception e) when (e is DatastoreUnavailableException or ArgumentException)
        {
            throw new CniException(CniCodes.PluginNotAvailable, $"datastore {conf.Datastore} is unusable: {e.Message}");
        }
        using (store)
        {
            try { await store.RevisionAsync(ct).ConfigureAwait(false); }
            catch (Exception e) when (e is DatastoreUnavailableException or InvalidOperationException)
            {
                throw new CniException(CniCodes.PluginNotAvailable, $"datastore {conf.Datastore} is unusable: {e.Message}");
            }
            if (!conf.DelegatesIpam && !await new IpamService(store).HasCapacityAsync(Node, ct).ConfigureAwait(false))
                throw new CniException(CniCodes.PluginNotAvailable,
                    $"no IP pool has room for node '{Node}': apply a pool with `weftctl apply -f`, or free addresses (`weftctl ipam check`)");
        }
    }

    public async Task GcAsync(CancellationToken ct)
    {
        var valid = (conf.ValidAttachments ?? [])
            .Select(a => Keys.HandleId(conf.Name, a.ContainerId, a.IfName)).ToHashSet(StringComparer.Ordinal);
        using var store = OpenStore();
        var ipam = new IpamService(store);
        // Interfaces first, then addresses: an address is never free while an interface still carries it. Stale
        // handles without an endpoint are ADDs that died half way; their veth may still exist.
        var endpoints = await store.ListAsync(Keys.NodeEndpoints(Node), ct).ConfigureAwait(false);
        var staleHandles = conf.DelegatesIpam ? [] : await ipam.StaleHandlesAsync(Node, conf.Name, valid, ct).ConfigureAwait(false);
        using (var host = RtNetlink.Open())
        {
            foreach (var h in staleHandles)
                host.DeleteLink(PodInterfaces.HostVethNameFor(h.ContainerId, h.IfName));
            foreach (var kv in endpoints.Items)
            {
                var ep = Codec.Decode<WorkloadEndpoint>(kv.Value, kv.Key);
                if (ep.Network != conf.Name || valid.Contains(Keys.HandleId(ep.Network, ep.ContainerId, ep.IfName))) continue;
                host.DeleteLink(ep.HostInterface);
                await store.DeleteAsync(kv.Key, kv.ModRevision, ct).ConfigureAwait(false);
            }
        }
        foreach (var h in staleHandles)
            await ipam.ReleaseAsync(h.Id, ct).ConfigureAwait(false);
    }

    private IDatastore OpenStore()
    {
        try { return DatastoreFactory.Open(conf.Datastore); }
        catch (ArgumentException e) { throw new CniException(CniCodes.InvalidNetworkConfig, $"\"datastore\": {e.Message}"); }
    }

    private static void TryQuietly(Action action)
    {
        try { action(); } catch (Exception) { /* rollback is best effort; the original error is what the runtime sees */ }
    }

    private static async Task TryQuietlyAsync(Func<Task> action)
    {
        try { await action().ConfigureAwait(false); } catch (Exception) { }
    }
}
