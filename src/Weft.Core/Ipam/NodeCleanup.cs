using Weft.Datastore;
using Weft.Model;

namespace Weft.Ipam;

/// <summary>
/// What a departed node leaves behind: its IPAM (see <see cref="IpamService.ReleaseNodeAsync"/>), the endpoint records
/// of its pods, and its node record. `weftctl delete node` runs it (as `calicoctl delete node` does), and in Kubernetes
/// mode the agents run it once a Node object has been gone for the grace period.
/// </summary>
public static class NodeCleanup
{
    public static readonly Func<IpamHandle, CancellationToken, ValueTask<bool>> NothingInUse = (_, _) => ValueTask.FromResult(false);

    /// <summary>In use while the node's endpoint record for the handle exists (CNI DEL removes it): a pod Weft still runs.</summary>
    public static Func<IpamHandle, CancellationToken, ValueTask<bool>> EndpointExists(IDatastore store, string node) =>
        async (handle, ct) => await store.GetAsync(Keys.Endpoint(node, handle.Id), ct).ConfigureAwait(false) is not null;

    public static async Task<NodeRelease> RemoveAsync(IDatastore store, string node, Func<IpamHandle, CancellationToken, ValueTask<bool>> inUse, CancellationToken ct = default)
    {
        var release = await new IpamService(store).ReleaseNodeAsync(node, inUse, ct).ConfigureAwait(false);
        var prefix = Keys.NodeEndpoints(node);
        foreach (var kv in (await store.ListAsync(prefix, ct).ConfigureAwait(false)).Items)
            if (!release.Kept.Contains(kv.Key[prefix.Length..]))
                await store.DeleteAsync(kv.Key, kv.ModRevision, ct).ConfigureAwait(false);
        if (release.Kept.Count == 0 && await store.GetAsync(Keys.Node(node), ct).ConfigureAwait(false) is { } record)
            await store.DeleteAsync(record.Key, record.ModRevision, ct).ConfigureAwait(false);
        return release;
    }
}
