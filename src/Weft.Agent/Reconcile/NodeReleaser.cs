using System.Text.Json.Nodes;
using System.Threading.Channels;
using Weft.Datastore;
using Weft.Ipam;
using Weft.Model;

namespace Weft.Agent.Reconcile;

/// <summary>
/// Kubernetes mode only, the job Calico's kube-controllers do so that IPs do not leak when nodes go (calico#8643): a
/// Weft node whose Kubernetes Node has been gone for the grace period is released (<see cref="NodeCleanup"/>), after a
/// second look at the API itself. An address whose pod the API still shows on that node is kept until the pod goes.
/// One agent does it, the first by name whose own Node exists, so a thousand agents do not race over one node.
/// </summary>
public sealed class NodeReleaser(IDatastore api, DatastoreTrigger trigger, string me, TimeSpan grace, ILogger<NodeReleaser> log) : BackgroundService
{
    private readonly Dictionary<string, DateTime> _missingSince = new(StringComparer.Ordinal);

    protected override async Task ExecuteAsync(CancellationToken ct)
    {
        var kick = Channel.CreateBounded<bool>(new BoundedChannelOptions(1) { FullMode = BoundedChannelFullMode.DropWrite });
        trigger.Subscribe(k => k.StartsWith(Keys.K8sNodes, StringComparison.Ordinal) || k.StartsWith(Keys.Nodes, StringComparison.Ordinal), kick.Writer);
        var period = TimeSpan.FromTicks(Math.Clamp(grace.Ticks / 4, TimeSpan.TicksPerSecond, TimeSpan.TicksPerMinute));
        while (!ct.IsCancellationRequested)
        {
            try { await PassAsync(DateTime.UtcNow, ct).ConfigureAwait(false); }
            catch (OperationCanceledException) when (ct.IsCancellationRequested) { return; }
            catch (Exception e) when (e is DatastoreUnavailableException or IpamException or HttpRequestException or InvalidOperationException or UnauthorizedAccessException)
            {
                log.LogWarning("releasing departed nodes: {Error}", e.Message);
            }
            using var wait = CancellationTokenSource.CreateLinkedTokenSource(ct);
            wait.CancelAfter(period);
            try { await kick.Reader.ReadAsync(wait.Token).ConfigureAwait(false); }
            catch (OperationCanceledException) when (!ct.IsCancellationRequested) { }
            catch (OperationCanceledException) { return; }
        }
    }

    /// <summary>One look at the cache; releases the nodes gone longer than the grace period when this agent is the releaser.</summary>
    internal async Task PassAsync(DateTime now, CancellationToken ct)
    {
        var cache = trigger.Cache;
        var kubeNodes = (await cache.ListAsync(Keys.K8sNodes, ct).ConfigureAwait(false)).Items.Select(kv => kv.Key[Keys.K8sNodes.Length..]).ToHashSet(StringComparer.Ordinal);
        var weftNodes = (await cache.ListAsync(Keys.Nodes, ct).ConfigureAwait(false)).Items.Select(kv => kv.Key[Keys.Nodes.Length..]).ToList();
        // An API that shows no Node at all is one this agent cannot read nodes from, not one every node has left.
        if (kubeNodes.Count == 0)
        {
            _missingSince.Clear();
            return;
        }
        var gone = weftNodes.Where(n => !kubeNodes.Contains(n)).ToHashSet(StringComparer.Ordinal);
        foreach (var n in _missingSince.Keys.Where(n => !gone.Contains(n)).ToList()) _missingSince.Remove(n);
        foreach (var n in gone) _missingSince.TryAdd(n, now);
        var releaser = weftNodes.Where(kubeNodes.Contains).Order(StringComparer.Ordinal).FirstOrDefault();
        if (releaser != me) return;
        foreach (var (node, since) in _missingSince.ToList())
        {
            if (now - since < grace) continue;
            if (await api.GetAsync(Keys.K8sNode(node), ct).ConfigureAwait(false) is not null)
            {
                _missingSince.Remove(node);
                continue;
            }
            var release = await NodeCleanup.RemoveAsync(api, node, (h, c) => PodStillOnNodeAsync(node, h, c), ct).ConfigureAwait(false);
            log.LogInformation("node {Node}: its Kubernetes Node is gone ({Grace:0} s or more); released {Addresses} address(es) and {Blocks} block(s){Kept}",
                node, grace.TotalSeconds, release.Addresses, release.Blocks, release.Kept.Count == 0 ? "" : $"; kept {string.Join(", ", release.Kept)} (pods still on the node)");
            if (release.Kept.Count == 0) _missingSince.Remove(node);
        }
    }

    /// <summary>The handle's pod (from its endpoint record) still exists in the API and is bound to that node.</summary>
    private async ValueTask<bool> PodStillOnNodeAsync(string node, IpamHandle handle, CancellationToken ct)
    {
        var endpoint = await api.GetAsync(Keys.Endpoint(node, handle.Id), ct).ConfigureAwait(false);
        if (endpoint is null) return false;
        var ep = Codec.Decode(endpoint.Value, ModelJson.Default.WorkloadEndpoint, endpoint.Key);
        if (ep.Namespace is not { Length: > 0 } ns || ep.Pod is not { Length: > 0 } name) return false;
        var pod = await api.GetAsync(Keys.K8sPod(ns, name), ct).ConfigureAwait(false);
        if (pod is null) return false;
        try { return JsonNode.Parse(pod.Value)?["spec"]?["nodeName"]?.GetValue<string>() == node; }
        catch (Exception e) when (e is System.Text.Json.JsonException or InvalidOperationException) { return false; }
    }
}
