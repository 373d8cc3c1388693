using System.Diagnostics;
using Weft.Agent.Drivers;
using Weft.Datastore;
using Weft.Model;
using Weft.Policy;

namespace Weft.Agent.Reconcile;

/// <summary>
/// Keeps this node's nftables policy table in step with the datastore: any change to policies, tiers, namespaces,
/// pods or endpoints (anywhere: peers' addresses feed the selector sets) coalesces into one recompute; the
/// compiler builds the whole desired table for the local endpoints and the driver applies the difference in one
/// transaction. Nothing is delayed on purpose: a new pod is dropped (fail closed) until this has run, so latency
/// here is pod start-up latency. A failed apply is retried; the next attempt replaces the table whole.
/// </summary>
public sealed class PolicyReconciler(IDatastore store, DatastoreTrigger trigger, string nodeName, IPolicyDataplane dataplane, AgentState state, ILogger<PolicyReconciler> log, Flows.FlowIdentities? flowIdentities = null)
    : Reconciler(trigger, TimeSpan.FromSeconds(30), log)
{
    protected override string Concern => "policy";

    protected override bool IsInput(string key) => PolicyStore.IsPolicyInput(key);

    protected override void OnFailed(Exception e, TimeSpan retryIn)
    {
        dataplane.Reset(); // the next attempt replaces everything
        state.Update(s => s with { Policy = s.Policy with { Errors = s.Policy.Errors + 1, LastError = e.Message } });
    }

    public override void Dispose()
    {
        base.Dispose();
        dataplane.Dispose();
    }

    protected override async Task ReconcileAsync(bool drift, CancellationToken ct)
    {
        var sw = Stopwatch.StartNew();
        // A periodic run rebuilds everything: it repairs drift (someone flushing the table by hand).
        if (drift) dataplane.Reset();
        // Read the revision first: everything up to it is in what we load next.
        var revision = await store.RevisionAsync(ct).ConfigureAwait(false);
        var snapshot = await PolicyStore.LoadAsync(store, ct).ConfigureAwait(false);
        var local = snapshot.World.Endpoints.Where(e => e.Node == nodeName && e.HostInterface is not null).ToList();
        var result = dataplane.Apply(snapshot.Policies, snapshot.World, local);
        flowIdentities?.Update(snapshot.World, result.LogMeanings);
        state.PolicyApply.Observe(sw.Elapsed);
        foreach (var err in snapshot.Errors) log.LogWarning("policy input skipped: {Error}", err);
        state.Update(s => s with
        {
            Policy = s.Policy with
            {
                Enforcing = true, Revision = revision, Endpoints = local.Count, Policies = snapshot.Policies.Policies.Count,
                Chains = result.Chains, Rules = result.Rules, Sets = result.Sets,
                LastApplyMs = sw.Elapsed.TotalMilliseconds, LastApplyFull = result.Full, Applies = s.Policy.Applies + 1,
                LastError = null, DocumentErrors = snapshot.Errors,
            },
        });
        if (result.Full || result.Changes > 0)
            log.LogInformation("policy programmed ({Dataplane}): revision {Revision}, {Endpoints} local endpoint(s), {Policies} policies, {Rules} rules, {Changes} changes{Full} in {Ms:0.0} ms",
                dataplane.Name, revision, local.Count, snapshot.Policies.Policies.Count, result.Rules, result.Changes, result.Full ? " (full)" : "", sw.Elapsed.TotalMilliseconds);
    }
}
