using System.Net;
using Weft.Dataplane.Bpf;
using Weft.Dataplane.Nftables;
using Weft.Datastore;
using Weft.Flows;
using Weft.Flows.Api;
using Weft.Policy;
using Weft.Policy.Ir;

namespace Weft.Agent.Flows;

/// <summary>
/// Turns what the kernel reports into flows in the node's ring: each <see cref="IFlowSource"/> (policy verdicts
/// through NFLOG or the BPF ring buffer, connection ends through conntrack events) is read on a thread of its own and
/// named with the endpoints at both ends and, for verdicts, the deciding policy. Nothing here blocks the sources.
/// </summary>
public sealed class FlowCollector(FlowRing ring, FlowIdentities ids, FlowCounters counters, IReadOnlyList<IFlowSource> sources,
    IDatastore store, Reconcile.DatastoreTrigger trigger, bool refreshIdentities, ILogger<FlowCollector> log) : BackgroundService
{
    private sealed class Sink(FlowRing ring, FlowCounters counters) : IFlowSink
    {
        public void Add(Flow flow)
        {
            counters.Count(flow);
            ring.Add(flow);
        }

        public void Ignored() => counters.AddIgnored();
        public void Lost(long count) => counters.AddLost(count);
        public void Publish() => ring.Publish();
    }

    protected override Task ExecuteAsync(CancellationToken ct)
    {
        log.LogInformation("flow capture: {Sources}; ring of {Capacity} flows", string.Join(", ", sources.Select(s => s.Name)), ring.Capacity);
        var sink = new Sink(ring, counters);
        var readers = sources.Select(s => Task.Factory.StartNew(() => Guard(s.Name, c => s.Run(sink, c), ct), ct, TaskCreationOptions.LongRunning, TaskScheduler.Default));
        return Task.WhenAll([.. readers, SampleAsync(ct), refreshIdentities ? RefreshIdentitiesAsync(ct) : Task.CompletedTask]);
    }

    /// <summary>
    /// Flows are for observing: whatever goes wrong here is logged and retried with backoff (a group still held by an
    /// agent that is shutting down, say), and never takes routing or policy down with it.
    /// </summary>
    private void Guard(string what, Action<CancellationToken> loop, CancellationToken ct)
    {
        var delay = TimeSpan.FromSeconds(1);
        while (!ct.IsCancellationRequested)
        {
            try
            {
                loop(ct);
                return;
            }
            catch (OperationCanceledException) { return; }
            catch (Exception e)
            {
                log.LogError("flow capture of {What} failed, retrying in {Delay} s: {Error}", what, delay.TotalSeconds, e.Message);
                if (ct.WaitHandle.WaitOne(delay)) return;
                delay = TimeSpan.FromSeconds(Math.Min(30, delay.TotalSeconds * 2));
            }
        }
    }

    private async Task SampleAsync(CancellationToken ct)
    {
        using var timer = new PeriodicTimer(TimeSpan.FromSeconds(1));
        try { while (await timer.WaitForNextTickAsync(ct).ConfigureAwait(false)) counters.Sample(); }
        catch (OperationCanceledException) { }
    }

    /// <summary>With policy enforcement off nobody else loads the cluster's endpoints: do it here, on every change.</summary>
    private async Task RefreshIdentitiesAsync(CancellationToken ct)
    {
        var kick = System.Threading.Channels.Channel.CreateBounded<bool>(new System.Threading.Channels.BoundedChannelOptions(1) { FullMode = System.Threading.Channels.BoundedChannelFullMode.DropWrite });
        trigger.Subscribe(PolicyStore.IsPolicyInput, kick.Writer);
        try
        {
            while (await kick.Reader.WaitToReadAsync(ct).ConfigureAwait(false))
            {
                kick.Reader.TryRead(out _);
                try { ids.Update((await PolicyStore.LoadAsync(store, ct).ConfigureAwait(false)).World, null); }
                catch (Exception e) when (e is not OperationCanceledException) { log.LogWarning("flow identities not refreshed: {Error}", e.Message); }
            }
        }
        catch (OperationCanceledException) { }
    }

    /// <summary>A flow for one logged verdict, or null when the packet was logged by something else (a Log rule).</summary>
    public static Flow? FromVerdict(in LoggedPacket p, FlowIdentities ids, string nodeName)
    {
        if (!FlowLog.TryParse(p.Prefix, out var verdict, out var direction, out var token)) return null;
        var f = NewFlow(p.Headers.IpVersion, p.Headers.Source, p.Headers.Destination, p.Headers.Protocol, p.Headers.SourcePort, p.Headers.DestinationPort, p.Headers.IcmpType, p.Headers.IcmpCode, ids, nodeName);
        f.TimeUnixNano = p.TimeUnixNano;
        f.TcpFlags = p.Headers.TcpFlags;
        f.Event = "policy-verdict";
        f.TrafficDirection = direction == Direction.Ingress ? "INGRESS" : "EGRESS";
        f.Verdict = verdict == 'A' ? "FORWARDED" : "DROPPED";
        if (verdict != 'A') f.DropReasonDesc = verdict == 'X' ? "POLICY_DENY" : token == FlowLog.NoRoute ? "NO_ROUTE" : "POLICY_DENIED";
        f.Policy = token switch
        {
            FlowLog.Unprogrammed => "(endpoint not programmed yet)",
            FlowLog.NoRoute => "",
            _ => ids.Meaning(token) ?? "",
        };
        return f;
    }

    /// <summary>A flow for one verdict of the BPF programs: the same fields the nftables path gives.</summary>
    internal static Flow FromBpfEvent(in Bpf.FlowEvent e, FlowIdentities ids, string nodeName)
    {
        var f = NewFlow(e.Family, e.Source, e.Destination, e.Protocol, e.Sport, e.Dport, e.IcmpType, e.IcmpCode, ids, nodeName);
        f.TimeUnixNano = MonotonicToUnixNano(e.Time);
        f.TcpFlags = e.TcpFlags;
        f.Event = "policy-verdict";
        f.TrafficDirection = e.Direction == 1 ? "INGRESS" : "EGRESS";
        var allowed = e.Action is BpfAction.Allow or BpfAction.Profile;
        f.Verdict = allowed ? "FORWARDED" : "DROPPED";
        if (!allowed) f.DropReasonDesc = e.Action switch { BpfAction.Deny => "POLICY_DENY", BpfAction.NoRoute => "NO_ROUTE", _ => "POLICY_DENIED" };
        f.Policy = e.Action switch
        {
            BpfAction.Unprogrammed => "(endpoint not programmed yet)",
            BpfAction.Profile or BpfAction.NoRoute => "",
            _ => ids.Meaning(Bpf.BpfPolicyDataplane.TokenKey(e.Token)) ?? "",
        };
        return f;
    }

    // bpf_ktime_get_ns is CLOCK_MONOTONIC, as Stopwatch's timestamps on Linux.
    private static readonly long MonotonicToUnix = FlowText.UnixNano(DateTime.UtcNow) - (long)(System.Diagnostics.Stopwatch.GetTimestamp() * (1e9 / System.Diagnostics.Stopwatch.Frequency));

    private static long MonotonicToUnixNano(ulong monotonic) => MonotonicToUnix + (long)monotonic;

    public static Flow FromConnectionEnd(in ConntrackEnd end, FlowIdentities ids, string nodeName, bool egress)
    {
        var f = NewFlow(end.IpVersion, end.Source, end.Destination, end.Protocol, end.SourcePort, end.DestinationPort, end.IcmpType, end.IcmpCode, ids, nodeName);
        f.TimeUnixNano = FlowText.UnixNano(DateTime.UtcNow);
        f.Event = "conntrack-destroy";
        f.Verdict = "FORWARDED";
        f.TrafficDirection = egress ? "EGRESS" : "INGRESS";
        f.Packets = end.Packets;
        f.Bytes = end.Bytes;
        return f;
    }

    private static Flow NewFlow(int version, IPAddress src, IPAddress dst, int protocol, ushort sport, ushort dport, byte icmpType, byte icmpCode, FlowIdentities ids, string nodeName)
    {
        var f = new Flow
        {
            IpVersion = version, IpSource = src.ToString(), IpDestination = dst.ToString(), Protocol = protocol,
            SourcePort = sport, DestinationPort = dport, IcmpType = icmpType, IcmpCode = icmpCode, NodeName = nodeName,
        };
        if (ids.At(src) is { } s) f.Source = s;
        if (ids.At(dst) is { } d) f.Destination = d;
        return f;
    }
}
