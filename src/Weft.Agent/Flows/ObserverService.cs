using Grpc.Core;
using Weft.Flows;
using Weft.Flows.Api;

namespace Weft.Agent.Flows;

/// <summary>The node's flow API: the ring's matching flows, oldest first, then (follow) new ones as they come.</summary>
public sealed class ObserverService(FlowRing ring, FlowCounters counters, string nodeName) : Observer.ObserverBase
{
    private static readonly DateTime Started = DateTime.UtcNow;

    /// <summary>The host's stopping token: open follow streams end with the agent instead of holding its shutdown.</summary>
    public CancellationToken Stopping { get; set; }

    public override async Task GetFlows(GetFlowsRequest request, IServerStreamWriter<Flow> responseStream, ServerCallContext context)
    {
        FlowMatcher matcher;
        try { matcher = new FlowMatcher(request.Whitelist, request.Blacklist); }
        catch (ArgumentException e) { throw new RpcException(new Status(StatusCode.InvalidArgument, e.Message)); }
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(context.CancellationToken, Stopping);
        var ct = linked.Token;
        var pulse = ring.NextPublish(); // taken before reading, so a flow added meanwhile still wakes us
        var buffered = new List<Flow>();
        var (next, _) = ring.ReadFrom(0, buffered);
        var matching = buffered.Where(f => f.TimeUnixNano >= request.SinceUnixNano && matcher.Matches(f)).ToList();
        var skip = request.Number > 0 && (ulong)matching.Count > request.Number ? matching.Count - (int)request.Number : 0;
        foreach (var f in matching.Skip(skip)) await responseStream.WriteAsync(f, ct).ConfigureAwait(false);
        if (!request.Follow) return;
        var batch = new List<Flow>();
        try
        {
            while (!ct.IsCancellationRequested)
            {
                await pulse.WaitAsync(ct).ConfigureAwait(false);
                pulse = ring.NextPublish();
                batch.Clear();
                (next, var missed) = ring.ReadFrom(next, batch);
                // This reader fell more than a ring behind: say how much it missed, as Hubble's lost events do.
                if (missed > 0)
                    await responseStream.WriteAsync(new Flow { Event = FlowText.LostEvents, Packets = (ulong)missed, NodeName = nodeName, TimeUnixNano = FlowText.UnixNano(DateTime.UtcNow) }, ct).ConfigureAwait(false);
                foreach (var f in batch)
                    if (matcher.Matches(f)) await responseStream.WriteAsync(f, ct).ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested) { }
    }

    public override Task<ServerStatusResponse> ServerStatus(ServerStatusRequest request, ServerCallContext context) =>
        Task.FromResult(new ServerStatusResponse
        {
            NodeName = nodeName, NumFlows = (ulong)ring.Count, MaxFlows = (ulong)ring.Capacity, SeenFlows = (ulong)counters.Seen,
            LostFlows = (ulong)counters.Lost, FlowsPerSecond = counters.FlowsPerSecond, UptimeSeconds = (long)(DateTime.UtcNow - Started).TotalSeconds,
        });
}
