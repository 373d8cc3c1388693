using Weft.Agent.Calculators;
using Weft.Agent.Drivers;
using Weft.Datastore;
using Weft.Model;

namespace Weft.Agent.Reconcile;

/// <summary>
/// natOutgoing as its own concern: the pools → which sources masquerade and what counts as inside the cluster
/// (<see cref="NatPools"/>) → each NAT driver in turn. BPF comes first: when it takes over from nftables masquerade,
/// packets nftables already translated pass it as the node's own, so no packet leaves untranslated in between.
/// </summary>
/// <param name="policyOn">Policy enforcement runs; with <paramref name="forcedDataplane"/> (--dataplane) or the Installation
/// it decides, as for the policy reconciler, whether policy needs the kernel's conntrack, and so what is untracked.</param>
public sealed class NatReconciler(IDatastore store, DatastoreTrigger trigger, IReadOnlyList<INatDriver> drivers, AgentState state, TimeSpan resync, ILogger<NatReconciler> log,
    bool policyOn = true, string? forcedDataplane = "nftables")
    : Reconciler(trigger, resync, log)
{
    protected override string Concern => "natOutgoing";

    protected override bool IsInput(string key) =>
        key.StartsWith(Keys.Pools, StringComparison.Ordinal) || (policyOn && forcedDataplane is null && key.StartsWith(Keys.Installations, StringComparison.Ordinal));

    protected override void OnFailed(Exception e, TimeSpan retryIn) =>
        state.Update(s => s with { ReconcileErrors = s.ReconcileErrors + 1, LastError = e.Message });

    protected override async Task ReconcileAsync(bool drift, CancellationToken ct)
    {
        var revision = await store.RevisionAsync(ct).ConfigureAwait(false);
        var policyConntrack = policyOn && await PolicyReconciler.WantedDataplaneAsync(store, forcedDataplane, ct).ConfigureAwait(false) == "nftables";
        var pools = NatPools.From(await store.ListRecordsAsync(Keys.Pools, ModelJson.Default.IPPool, ct).ConfigureAwait(false), policyConntrack);
        foreach (var d in drivers)
            if (d.Apply(pools)) log.LogInformation("natOutgoing ({Mode}) programmed for {Count} pool(s)", d.Mode, pools.Masquerading.Count);
        state.Update(s => s with { NatRevision = revision });
    }
}
