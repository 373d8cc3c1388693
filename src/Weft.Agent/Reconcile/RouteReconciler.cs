using System.Diagnostics;
using Weft.Agent.Backends;
using Weft.Agent.Calculators;
using Weft.Agent.Drivers;
using Weft.Datastore;
using Weft.Model;

namespace Weft.Agent.Reconcile;

/// <summary>
/// Keeps this node's routes, neighbours and FDB entries to every peer in step with the datastore: watch nodes and
/// blocks, coalesce changes, compute the whole desired state through the backend, diff it against what the kernel
/// holds (entries marked with the agent's route protocol or on the backend's own device) and apply only the
/// difference. A restart reads the kernel back and adopts it, so traffic keeps flowing; a periodic resync repairs
/// drift (someone deleting a route by hand).
/// </summary>
/// <param name="driver">Where routes go: the kernel over rtnetlink unless given (tests give a fake).</param>
public sealed class RouteReconciler(IDatastore store, DatastoreTrigger trigger, IBackend backend, LocalNode me, AgentState state, TimeSpan resync, ILogger<RouteReconciler> log, IRouteDriver? driver = null)
    : Reconciler(trigger, resync, log)
{
    private HashSet<string> _warned = new(StringComparer.Ordinal);
    private readonly IRouteDriver _driver = driver ?? new NetlinkRouteDriver(() => backend.OwnedDeviceIndex);

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
        var nodes = await store.ListRecordsAsync(Keys.Nodes, ModelJson.Default.NodeRecord, ct).ConfigureAwait(false);
        var blocks = await store.ListRecordsAsync(Keys.Blocks, ModelJson.Default.AllocationBlock, ct).ConfigureAwait(false);
        var endpoints = await store.ListRecordsAsync(Keys.Endpoints, ModelJson.Default.WorkloadEndpoint, ct).ConfigureAwait(false);
        var pools = await store.ListRecordsAsync(Keys.Pools, ModelJson.Default.IPPool, ct).ConfigureAwait(false);
        var desired = RouteCalculator.Compute(backend, me, nodes, blocks, endpoints, pools);
        foreach (var p in desired.Peers.Where(p => p.Error is not null)) log.LogWarning("{Error}", p.Error);
        foreach (var w in desired.Warnings.Except(_warned, StringComparer.Ordinal)) log.LogWarning("{Warning}", w);
        _warned = new(desired.Warnings, StringComparer.Ordinal);
        var changed = _driver.Apply(desired);
        if (!changed.IsEmpty)
            log.LogInformation("routes: {Added} added or replaced, {Removed} removed", changed.Upserts.Count, changed.Removals.Count);
        state.Update(s => s with
        {
            Synced = true, LastReconcile = DateTime.UtcNow, LastReconcileMs = sw.Elapsed.TotalMilliseconds,
            Reconciles = s.Reconciles + 1, Routes = desired.AllRoutes.Count(), Peers = desired.Peers, LastError = null, Warnings = desired.Warnings, RoutesRevision = revision,
        });
    }
}
