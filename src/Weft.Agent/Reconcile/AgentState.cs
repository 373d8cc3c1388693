using System.Text;

namespace Weft.Agent.Reconcile;

public sealed record PeerStatus(string Name, string? Underlay, int Blocks, string State, string? Error);

/// <summary>An immutable snapshot of what the agent last did; swapped in one assignment, read by the API.</summary>
public sealed record AgentSnapshot(
    string Node, string Backend, string Underlay, string? Vtep, int Mtu, bool Synced, DateTime? LastReconcile,
    double LastReconcileMs, long Reconciles, long ReconcileErrors, int Routes, IReadOnlyList<PeerStatus> Peers, string? LastError)
{
    public PolicyStatus Policy { get; init; } = new();
    /// <summary>How natOutgoing masquerades on this node: bpf or nftables.</summary>
    public string Masquerade { get; init; } = "nftables";
    /// <summary>Every node, block, pool and endpoint change up to this datastore revision is in the routes, overlay and NAT.</summary>
    public long RoutesRevision { get; init; }
    /// <summary>Every pool change up to this datastore revision is in the natOutgoing dataplane.</summary>
    public long NatRevision { get; init; }
    /// <summary>What the pools ask for that this node cannot do as asked (e.g. IPIP, which Weft carries over VXLAN).</summary>
    public IReadOnlyList<string> Warnings { get; init; } = [];
}

/// <summary>The policy dataplane: which datastore revision is enforced, and what that took.</summary>
public sealed record PolicyStatus
{
    /// <summary>The agent runs with policy on (Enforcing turns true after its first successful programming).</summary>
    public bool Enabled { get; init; }
    public bool Enforcing { get; init; }
    /// <summary>"nftables" or "bpf": the dataplane enforcing now.</summary>
    public string? Dataplane { get; init; }
    /// <summary>Every policy, pod, namespace and endpoint change up to this datastore revision is in the kernel.</summary>
    public long Revision { get; init; }
    public int Endpoints { get; init; }
    public int Policies { get; init; }
    public int Chains { get; init; }
    public int Rules { get; init; }
    public int Sets { get; init; }
    public double LastApplyMs { get; init; }
    public bool LastApplyFull { get; init; }
    public long Applies { get; init; }
    public long Errors { get; init; }
    public string? LastError { get; init; }
    public IReadOnlyList<string> DocumentErrors { get; init; } = [];
}

/// <summary>A Prometheus histogram of durations (seconds); few writers, lock-free.</summary>
public sealed class DurationHistogram(string name, string help, params double[] bounds)
{
    private readonly long[] _counts = new long[bounds.Length + 1];
    private long _sumMicros;

    public void Observe(TimeSpan d)
    {
        var s = d.TotalSeconds;
        var i = 0;
        while (i < bounds.Length && s > bounds[i]) i++;
        Interlocked.Increment(ref _counts[i]);
        Interlocked.Add(ref _sumMicros, (long)d.TotalMicroseconds);
    }

    public void Append(StringBuilder sb)
    {
        var inv = System.Globalization.CultureInfo.InvariantCulture;
        sb.Append(inv, $"# HELP {name} {help}\n# TYPE {name} histogram\n");
        long cumulative = 0;
        for (var i = 0; i < bounds.Length; i++)
        {
            cumulative += Interlocked.Read(ref _counts[i]);
            sb.Append(inv, $"{name}_bucket{{le=\"{bounds[i].ToString("0.####", inv)}\"}} {cumulative}\n");
        }
        cumulative += Interlocked.Read(ref _counts[^1]);
        sb.Append(inv, $"{name}_bucket{{le=\"+Inf\"}} {cumulative}\n{name}_sum {(Interlocked.Read(ref _sumMicros) / 1e6).ToString("0.######", inv)}\n{name}_count {cumulative}\n");
    }
}

public sealed class AgentState
{
    /// <summary>Datastore change → kernel programmed, per policy programming run (compile + one transaction).</summary>
    public DurationHistogram PolicyApply { get; } = new("weft_policy_apply_duration_seconds", "policy programming time (compile + one nftables transaction)",
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5);

    private AgentSnapshot _snapshot;
    public AgentState(string node, string backend) => _snapshot = new(node, backend, "", null, 0, false, null, 0, 0, 0, 0, [], null);
    public AgentSnapshot Snapshot => Volatile.Read(ref _snapshot);
    public void Update(Func<AgentSnapshot, AgentSnapshot> change)
    {
        AgentSnapshot old, next;
        do { old = Snapshot; next = change(old); }
        while (!ReferenceEquals(Interlocked.CompareExchange(ref _snapshot, next, old), old));
        Interlocked.Exchange(ref _changed, new(TaskCreationOptions.RunContinuationsAsynchronously)).TrySetResult();
    }

    private TaskCompletionSource _changed = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>
    /// Waits until <paramref name="done"/> holds for the snapshot (what `weftctl apply --wait` asks each agent over
    /// /status/wait): one long-poll request instead of a client polling /status.
    /// </summary>
    public async Task<(bool Done, AgentSnapshot Snapshot)> WaitAsync(Func<AgentSnapshot, bool> done, TimeSpan timeout, CancellationToken ct)
    {
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        cts.CancelAfter(timeout);
        while (true)
        {
            var changed = Volatile.Read(ref _changed).Task; // before the check: an update right after it still wakes us
            var s = Snapshot;
            if (done(s)) return (true, s);
            try { await changed.WaitAsync(cts.Token).ConfigureAwait(false); }
            catch (OperationCanceledException) when (!ct.IsCancellationRequested) { return (false, Snapshot); }
        }
    }

    /// <summary>Prometheus text exposition; metric names are documented in the README.</summary>
    public string Metrics()
    {
        var s = Snapshot;
        var sb = new StringBuilder();
        void M(string name, string type, string help, string value, string labels = "")
        {
            sb.Append("# HELP ").Append(name).Append(' ').Append(help).Append('\n');
            sb.Append("# TYPE ").Append(name).Append(' ').Append(type).Append('\n');
            sb.Append(name).Append(labels).Append(' ').Append(value).Append('\n');
        }
        var inv = System.Globalization.CultureInfo.InvariantCulture;
        M("weft_agent_up", "gauge", "1 while the agent runs", "1", $"{{node=\"{s.Node}\",backend=\"{s.Backend}\"}}");
        M("weft_agent_synced", "gauge", "1 once the kernel matches the datastore", s.Synced ? "1" : "0");
        M("weft_reconciles_total", "counter", "route reconciliations run", s.Reconciles.ToString(inv));
        M("weft_reconcile_errors_total", "counter", "route reconciliations that failed", s.ReconcileErrors.ToString(inv));
        M("weft_reconcile_duration_seconds", "gauge", "duration of the last reconciliation", (s.LastReconcileMs / 1000).ToString("0.######", inv));
        M("weft_routes", "gauge", "routes to peer blocks programmed", s.Routes.ToString(inv));
        M("weft_peers", "gauge", "peer nodes known", s.Peers.Count.ToString(inv));
        M("weft_peers_unreachable", "gauge", "peer nodes the backend cannot program", s.Peers.Count(p => p.State != "programmed").ToString(inv));
        var p = s.Policy;
        M("weft_policy_enforcing", "gauge", "1 while the nftables policy dataplane enforces", p.Enforcing ? "1" : "0");
        M("weft_policy_revision", "gauge", "datastore revision the policy dataplane enforces", p.Revision.ToString(inv));
        M("weft_policy_endpoints", "gauge", "local endpoints programmed", p.Endpoints.ToString(inv));
        M("weft_policy_policies", "gauge", "policies known", p.Policies.ToString(inv));
        M("weft_policy_rules", "gauge", "nftables rules in the policy table", p.Rules.ToString(inv));
        M("weft_policy_apply_seconds", "gauge", "duration of the last policy programming (compile + one nftables transaction)", (p.LastApplyMs / 1000).ToString("0.######", inv));
        M("weft_policy_applies_total", "counter", "policy programming transactions", p.Applies.ToString(inv));
        M("weft_policy_apply_errors_total", "counter", "policy programming attempts that failed", p.Errors.ToString(inv));
        PolicyApply.Append(sb);
        return sb.ToString();
    }
}
