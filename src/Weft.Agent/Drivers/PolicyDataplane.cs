using Weft.Dataplane.Nftables;
using Weft.Policy;
using Weft.Policy.Ir;

namespace Weft.Agent.Drivers;

/// <summary>What one policy programming run did, in any dataplane's terms.</summary>
public sealed record PolicyApplyResult(int Chains, int Rules, int Sets, bool Full, int Changes, IReadOnlyDictionary<string, string> LogMeanings);

/// <summary>
/// A policy dataplane: the IR for this node's endpoints in, enforcement out. Implementations compile and apply
/// atomically (never a moment with neither the old nor the new policy) and fail closed for endpoints they have not
/// programmed; the first apply after start (or after <see cref="Reset"/>) replaces whatever an earlier run left.
/// </summary>
public interface IPolicyDataplane : IDisposable
{
    /// <summary>"nftables" or "bpf".</summary>
    string Name { get; }

    PolicyApplyResult Apply(PolicySet policies, PolicyWorld world, IReadOnlyList<EndpointInfo> local);

    /// <summary>The next apply rewrites everything (drift repair, or after a failure).</summary>
    void Reset();

    /// <summary>Takes enforcement out entirely (policy switched off).</summary>
    void Remove();

    /// <summary>Another dataplane has taken over enforcement: remove what only this one uses, leaving the other's state alone.</summary>
    void Handover();

    /// <summary>
    /// Another dataplane is about to take over: hand it the connections this one allowed (where they live in a state
    /// of its own), so established connections keep working whichever side sends next. Called before the new
    /// dataplane's first apply and again after it, before <see cref="Handover"/>.
    /// </summary>
    void ExportConnections() { }

    /// <summary>
    /// Removes what the last apply left unreferenced (no packet can reach it any more). Called once the apply's
    /// revision is reported enforced, so clean-up is not on the path of a change; the next apply does it otherwise.
    /// </summary>
    void CollectGarbage() { }
}

/// <summary>The `inet weft-policy` table through libnftables: the compiler keeps unchanged policies' chains between runs, the driver diffs.</summary>
public sealed class NftPolicyDataplane(NftPolicyCompiler.Options options) : IPolicyDataplane
{
    private readonly LibNftTransport _transport = new();
    private readonly NftPolicyCompiler _compiler = new(options);
    private NftPolicyDriver? _driver;

    public string Name => "nftables";

    public PolicyApplyResult Apply(PolicySet policies, PolicyWorld world, IReadOnlyList<EndpointInfo> local)
    {
        _driver ??= new NftPolicyDriver(_transport);
        var ruleset = _compiler.Compile(policies, world, local);
        try
        {
            var result = _driver.Apply(ruleset);
            return new PolicyApplyResult(ruleset.Chains.Count, ruleset.RuleCount, ruleset.Sets.Count, result.Full, result.Commands, ruleset.LogMeanings);
        }
        catch
        {
            _driver = null; // the next attempt replaces the table whole
            throw;
        }
    }

    public void Reset() => _driver = null;

    public void Remove() => new NftPolicyDriver(_transport).Remove();

    /// <summary>The table is shared: the BPF dataplane's guard has replaced it already.</summary>
    public void Handover() { }

    public void Dispose() => _transport.Dispose();
}
