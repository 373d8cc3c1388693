using System.Diagnostics;
using Microsoft.Extensions.Logging.Abstractions;
using Weft.Agent.Bpf;
using Weft.Bpf;
using Weft.Dataplane.Nftables;
using Weft.Model;
using Weft.Netlink;
using Weft.Policy;
using Weft.Policy.Ir;

namespace Weft.PolicyBench;

/// <summary>
/// The eBPF policy dataplane driven as the agent drives it (the agent's own <see cref="BpfPolicyDataplane"/>), inside
/// one node namespace, with its maps pinned on a private bpffs mount that goes away with the run.
/// </summary>
internal sealed class BpfDataplaneBench : IDisposable
{
    private readonly string _netns;
    private readonly string _dir;
    private readonly string _bpffs;
    private BpfPolicyDataplane? _dataplane;
    private int _generation;

    public BpfDataplaneBench(string netns)
    {
        _netns = "/var/run/netns/" + netns;
        _dir = Path.Combine(Path.GetTempPath(), $"weft-pbench-{Environment.ProcessId}-{netns}");
        Directory.CreateDirectory(_dir);
        _bpffs = Path.Combine(_dir, "bpffs");
        BpfFs.Mount(_bpffs);
    }

    /// <summary>Milliseconds the kernel took to load and verify the programs (agent start, before any policy).</summary>
    public double LoadMs { get; private set; }

    /// <summary>A fresh dataplane (new pins, nothing attached yet): what an agent starting on a new node does.</summary>
    public void Start()
    {
        Stop();
        var pins = Path.Combine(_bpffs, $"g{++_generation}");
        var sw = Stopwatch.StartNew();
        _dataplane = NetNs.Run(_netns, () => BpfPolicyDataplane.Load(pins, Path.Combine(_dir, $"ids{_generation}.json"), new NftPolicyCompiler.Options(), NullLogger.Instance));
        LoadMs = sw.Elapsed.TotalMilliseconds;
    }

    /// <summary>
    /// Compile and apply (maps, tc attach, guard table) until enforced, as the reconciler does before it reports the
    /// revision; then, timed apart, the clean-up the reconciler runs after reporting.
    /// </summary>
    public (double Ms, double CleanupMs, Agent.Drivers.PolicyApplyResult Result) Apply(PolicySet policies, PolicyWorld world, IReadOnlyList<EndpointInfo> local)
    {
        var dp = _dataplane ?? throw new InvalidOperationException("Start first");
        return NetNs.Run(_netns, () =>
        {
            var sw = Stopwatch.StartNew();
            var r = dp.Apply(policies, world, local);
            var applied = sw.Elapsed.TotalMilliseconds;
            dp.CollectGarbage();
            return (applied, sw.Elapsed.TotalMilliseconds - applied, r);
        });
    }

    /// <summary>Programs off every interface, maps emptied, guard table gone.</summary>
    public void Stop()
    {
        if (_dataplane is not { } dp) return;
        NetNs.Run(_netns, () => { dp.Remove(); dp.Dispose(); });
        _dataplane = null;
    }

    public void Dispose()
    {
        try { Stop(); }
        finally
        {
            BpfFs.Unmount(_bpffs);
            Directory.Delete(_dir, recursive: true);
        }
    }
}
