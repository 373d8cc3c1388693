using System.Diagnostics;
using System.Text.Json.Nodes;
using Weft.Agent.Drivers;
using Weft.Datastore;
using Weft.Model;
using Weft.Policy;

namespace Weft.Agent.Reconcile;

/// <summary>
/// Keeps this node's policy dataplane in step with the datastore: any change to policies, tiers, namespaces, pods or
/// endpoints (anywhere: peers' addresses feed the selector sets and identities) coalesces into one recompute; the
/// dataplane compiles the whole desired state for the local endpoints and applies the difference atomically.
/// Nothing is delayed on purpose: a new pod is dropped (fail closed) until this has run, so latency here is pod
/// start-up latency. A failed apply is retried; the next attempt replaces everything.
/// The dataplane (nftables or bpf) is <c>--dataplane</c> when given, else the Installation's linuxDataplane, else
/// nftables; a change switches at runtime: the new one takes over completely before the old one lets go.
/// </summary>
public sealed class PolicyReconciler(IDatastore store, DatastoreTrigger trigger, string nodeName, string? forcedDataplane,
    Func<string, IPolicyDataplane> open, AgentState state, ILogger<PolicyReconciler> log, Flows.FlowIdentities? flowIdentities = null)
    : Reconciler(trigger, TimeSpan.FromSeconds(30), log)
{
    private IPolicyDataplane? _dataplane;
    private string? _refused; // the dataplane that failed to load, so a refusal is logged once per cause

    protected override string Concern => "policy";

    protected override bool IsInput(string key) => PolicyStore.IsPolicyInput(key) || key.StartsWith(Keys.Installations, StringComparison.Ordinal);

    protected override void OnFailed(Exception e, TimeSpan retryIn)
    {
        _dataplane?.Reset(); // the next attempt replaces everything
        state.Update(s => s with { Policy = s.Policy with { Errors = s.Policy.Errors + 1, LastError = e.Message } });
    }

    public override void Dispose()
    {
        base.Dispose();
        _dataplane?.Dispose();
    }

    /// <summary>The dataplane an agent runs: the one --dataplane forces, else the Installation's, else nftables.</summary>
    public static async Task<string> WantedDataplaneAsync(IDatastore store, string? forced, CancellationToken ct) =>
        forced ?? await InstallationDataplaneAsync(store, ct).ConfigureAwait(false) ?? "nftables";

    /// <summary>The dataplane the Installation asks for ("nftables" or "bpf"), or null without one.</summary>
    public static async Task<string?> InstallationDataplaneAsync(IDatastore store, CancellationToken ct)
    {
        var items = (await store.ListAsync(Keys.Installations, ct).ConfigureAwait(false)).Items;
        var doc = items.FirstOrDefault(kv => kv.Key.EndsWith("/default", StringComparison.Ordinal)) ?? (items.Count > 0 ? items[0] : null);
        if (doc is null) return null;
        try
        {
            var value = JsonNode.Parse(doc.Value)?["spec"]?["calicoNetwork"]?["linuxDataplane"]?.ToString() ?? "Iptables";
            return value == "BPF" ? "bpf" : "nftables";
        }
        catch (System.Text.Json.JsonException) { return null; }
    }

    protected override async Task ReconcileAsync(bool drift, CancellationToken ct)
    {
        var sw = Stopwatch.StartNew();
        // A periodic run rebuilds everything: it repairs drift (someone flushing the table by hand).
        if (drift) _dataplane?.Reset();
        // Read the revision first: everything up to it is in what we load next.
        var revision = await store.RevisionAsync(ct).ConfigureAwait(false);
        var wanted = await WantedDataplaneAsync(store, forcedDataplane, ct).ConfigureAwait(false);
        var snapshot = await PolicyStore.LoadAsync(store, ct).ConfigureAwait(false);
        var local = snapshot.World.Endpoints.Where(e => e.Node == nodeName && e.HostInterface is not null).ToList();

        var dataplane = _dataplane;
        IPolicyDataplane? previous = null;
        if (dataplane is null || dataplane.Name != wanted)
        {
            try
            {
                var next = open(wanted);
                (previous, dataplane) = (dataplane, next);
                _refused = null;
            }
            catch (Exception e) when (dataplane is not null || wanted != "nftables")
            {
                // A dataplane the kernel refuses (the verifier, a missing feature) leaves the running one in place.
                if (_refused != wanted + e.Message) log.LogError("the {Wanted} policy dataplane could not be loaded; keeping {Current}: {Error}", wanted, dataplane?.Name ?? "nftables", e.Message);
                _refused = wanted + e.Message;
                state.Update(s => s with { Policy = s.Policy with { LastError = $"{wanted} dataplane refused: {e.Message}" } });
                dataplane ??= _dataplane = open("nftables");
            }
        }
        // Connections the old dataplane allowed go to the new one's state first (and again for those begun while it
        // applied), so no established connection is judged as new by the other dataplane.
        previous?.ExportConnections();
        PolicyApplyResult result;
        try { result = dataplane.Apply(snapshot.Policies, snapshot.World, local); }
        catch when (previous is not null)
        {
            // The switch failed half way: the old dataplane is put back whole (the new one may have replaced part of
            // its state), and only then is the new one taken away, so no packet meets neither.
            try
            {
                previous.Reset();
                previous.Apply(snapshot.Policies, snapshot.World, local);
                dataplane.Handover();
            }
            catch (Exception e) { log.LogWarning("restoring the {Old} dataplane after the {New} one failed: {Error}", previous.Name, dataplane.Name, e.Message); }
            dataplane.Dispose();
            throw;
        }
        if (previous is not null)
        {
            previous.ExportConnections();
            // The new dataplane enforces everything now; only then does the old one take its programs away.
            previous.Handover();
            previous.Dispose();
            log.LogInformation("policy dataplane switched from {Old} to {New}", previous.Name, dataplane.Name);
        }
        _dataplane = dataplane;
        flowIdentities?.Update(snapshot.World, result.LogMeanings);
        state.PolicyApply.Observe(sw.Elapsed);
        foreach (var err in snapshot.Errors) log.LogWarning("policy input skipped: {Error}", err);
        var refused = _refused is not null;
        state.Update(s => s with
        {
            Policy = s.Policy with
            {
                Enforcing = true, Dataplane = dataplane.Name, Revision = revision, Endpoints = local.Count, Policies = snapshot.Policies.Policies.Count,
                Chains = result.Chains, Rules = result.Rules, Sets = result.Sets,
                LastApplyMs = sw.Elapsed.TotalMilliseconds, LastApplyFull = result.Full, Applies = s.Policy.Applies + 1,
                LastError = refused ? s.Policy.LastError : null, DocumentErrors = snapshot.Errors,
            },
        });
        dataplane.CollectGarbage(); // after the revision is reported: clean-up is not on the path of a change
        if (result.Full || result.Changes > 0)
            log.LogInformation("policy programmed ({Dataplane}): revision {Revision}, {Endpoints} local endpoint(s), {Policies} policies, {Rules} rules, {Changes} changes{Full} in {Ms:0.0} ms",
                dataplane.Name, revision, local.Count, snapshot.Policies.Policies.Count, result.Rules, result.Changes, result.Full ? " (full)" : "", sw.Elapsed.TotalMilliseconds);
    }
}
