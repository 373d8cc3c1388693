using System.Diagnostics;
using Weft.Datastore;
using Weft.Dataplane.Nftables;
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
public sealed class PolicyReconciler(IDatastore store, DatastoreTrigger trigger, string nodeName, NftPolicyCompiler.Options compilerOptions, AgentState state, ILogger<PolicyReconciler> log, Flows.FlowIdentities? flowIdentities = null)
    : Reconciler(trigger, TimeSpan.FromSeconds(30), log)
{
    private readonly LibNftTransport _transport = new();
    private NftPolicyDriver? _driver;
    private readonly NftPolicyCompiler _compiler = new(compilerOptions); // keeps unchanged policies' chains between runs

    protected override string Concern => "policy";

    protected override bool IsInput(string key) => PolicyStore.IsPolicyInput(key);

    protected override void OnFailed(Exception e, TimeSpan retryIn)
    {
        _driver = null; // the next attempt replaces the table whole
        state.Update(s => s with { Policy = s.Policy with { Errors = s.Policy.Errors + 1, LastError = e.Message } });
    }

    public override void Dispose()
    {
        base.Dispose();
        _transport.Dispose();
    }

    protected override async Task ReconcileAsync(bool drift, CancellationToken ct)
    {
        var sw = Stopwatch.StartNew();
        // A periodic run rebuilds the table whole: it repairs drift (someone flushing the table by hand).
        if (drift || _driver is null) _driver = new NftPolicyDriver(_transport);
        // Read the revision first: everything up to it is in what we load next.
        var revision = await store.RevisionAsync(ct).ConfigureAwait(false);
        var snapshot = await PolicyStore.LoadAsync(store, ct).ConfigureAwait(false);
        var local = snapshot.World.Endpoints.Where(e => e.Node == nodeName && e.HostInterface is not null).ToList();
        var ruleset = _compiler.Compile(snapshot.Policies, snapshot.World, local);
        var result = _driver!.Apply(ruleset);
        flowIdentities?.Update(snapshot.World, ruleset.LogMeanings);
        state.PolicyApply.Observe(sw.Elapsed);
        foreach (var err in snapshot.Errors) log.LogWarning("policy input skipped: {Error}", err);
        state.Update(s => s with
        {
            Policy = s.Policy with
            {
                Enforcing = true, Revision = revision, Endpoints = local.Count, Policies = snapshot.Policies.Policies.Count,
                Chains = ruleset.Chains.Count, Rules = ruleset.RuleCount, Sets = ruleset.Sets.Count,
                LastApplyMs = sw.Elapsed.TotalMilliseconds, LastApplyFull = result.Full, Applies = s.Policy.Applies + 1,
                LastError = null, DocumentErrors = snapshot.Errors,
            },
        });
        if (result.Full || result.Commands > 0)
            log.LogInformation("policy programmed: revision {Revision}, {Endpoints} local endpoint(s), {Policies} policies, {Rules} rules, {Commands} commands{Full} in {Ms:0.0} ms",
                revision, local.Count, snapshot.Policies.Policies.Count, ruleset.RuleCount, result.Commands, result.Full ? " (full)" : "", sw.Elapsed.TotalMilliseconds);
    }
}
