using System.Collections.Concurrent;
using Weft.Agent.Bpf;
using Weft.Flows;
using Weft.Flows.Api;

namespace Weft.Agent.Flows;

/// <summary>Where a flow source puts what it read: the node's ring and counters (a fake in tests).</summary>
public interface IFlowSink
{
    void Add(Flow flow);
    /// <summary>A record that was not a flow (a packet some other rule logged).</summary>
    void Ignored();
    /// <summary>Records the kernel dropped before they could be read.</summary>
    void Lost(long count);
    /// <summary>A batch is complete: wake the readers.</summary>
    void Publish();
}

/// <summary>
/// One kernel source of flows (NFLOG verdicts, conntrack ends, the BPF programs' ring buffer), read on a thread of
/// its own. <see cref="Run"/> blocks until cancelled and throws on a failure; the collector retries with backoff.
/// </summary>
public interface IFlowSource
{
    string Name { get; }
    void Run(IFlowSink sink, CancellationToken ct);
}

/// <summary>Verdicts on new connections logged by the nftables policy table (and the BPF guard) to an NFLOG group.</summary>
public sealed class NflogVerdictSource(int group, FlowIdentities ids, string nodeName) : IFlowSource
{
    public string Name => $"policy verdicts (NFLOG group {group})";

    public void Run(IFlowSink sink, CancellationToken ct)
    {
        using var socket = NflogSocket.Open((ushort)group);
        var batch = new List<LoggedPacket>(256);
        while (!ct.IsCancellationRequested)
        {
            batch.Clear();
            socket.Receive(batch);
            sink.Lost(socket.TakeLost());
            if (batch.Count == 0) continue;
            foreach (var p in batch)
            {
                if (FlowCollector.FromVerdict(p, ids, nodeName) is { } flow) sink.Add(flow);
                else sink.Ignored();
            }
            sink.Publish();
        }
    }
}

/// <summary>Connection ends of this node's pods (conntrack DESTROY events, with counters).</summary>
public sealed class ConntrackEndSource(FlowIdentities ids, string nodeName) : IFlowSource
{
    public string Name => "connection ends (conntrack)";

    public void Run(IFlowSink sink, CancellationToken ct)
    {
        ConntrackEventSocket.EnableAccounting();
        using var socket = ConntrackEventSocket.Open();
        var batch = new List<ConntrackEnd>(64);
        while (!ct.IsCancellationRequested)
        {
            batch.Clear();
            socket.Receive(batch);
            sink.Lost(socket.TakeLost());
            var added = false;
            foreach (var end in batch)
            {
                // Only connections of this node's pods: the node's own traffic (datastore, BGP) is not pod traffic.
                var egress = ids.IsLocal(end.Source);
                if (!egress && !ids.IsLocal(end.Destination)) continue;
                sink.Add(FlowCollector.FromConnectionEnd(end, ids, nodeName, egress));
                added = true;
            }
            if (added) sink.Publish();
        }
    }
}

/// <summary>
/// Verdicts the BPF policy programs put in their ring buffer. The dataplane's reader posts them here (it owns the
/// buffer, which goes when the dataplane is switched away); a bounded queue keeps a slow observer from growing memory.
/// Log-rule hits are written to the agent's log, as the nftables dataplane's log statements are.
/// </summary>
public sealed class BpfVerdictSource(FlowIdentities ids, string nodeName, ILogger log) : IFlowSource, IDisposable
{
    private readonly BlockingCollection<FlowEvent> _queue = new(boundedCapacity: 1 << 16);
    private long _dropped;

    public string Name => "policy verdicts (BPF ring buffer)";

    public void Dispose() => _queue.Dispose();

    public void Post(FlowEvent e)
    {
        if (!_queue.TryAdd(e)) Interlocked.Increment(ref _dropped);
    }

    public void Run(IFlowSink sink, CancellationToken ct)
    {
        while (!ct.IsCancellationRequested)
        {
            var e = _queue.Take(ct);
            do
            {
                if (e.Kind == FlowEvent.KindLog)
                    log.LogInformation("policy log: {Rule}: {Source} -> {Destination} protocol {Protocol}", ids.Meaning(BpfPolicyDataplane.TokenKey(e.Token)) ?? "?", e.Source, e.Destination, e.Protocol);
                else sink.Add(FlowCollector.FromBpfEvent(e, ids, nodeName));
            }
            while (_queue.TryTake(out e));
            sink.Lost(Interlocked.Exchange(ref _dropped, 0));
            sink.Publish();
        }
    }
}
