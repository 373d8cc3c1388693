using System.Globalization;
using System.Text;
using Weft.Flows;
using Weft.Flows.Api;

namespace Weft.Agent.Flows;

/// <summary>Flow counters for Prometheus and `weftctl status`; one writer (the collector), lock-free reads.</summary>
public sealed class FlowCounters
{
    private static readonly string[] Verdicts = ["FORWARDED", "DROPPED"], Directions = ["INGRESS", "EGRESS"], ProtocolNames = ["TCP", "UDP", "SCTP", "ICMPv4", "ICMPv6", "other"];
    private readonly long[] _flows = new long[Verdicts.Length * Directions.Length * ProtocolNames.Length];
    private readonly Dictionary<string, long> _drops = new(StringComparer.Ordinal);
    private readonly Lock _dropsLock = new();
    private long _seen, _lost, _ignored;
    private readonly long[] _perSecond = new long[11]; // written count sampled once a second: the last 10 s
    private int _sampleIndex, _samples;

    public long Seen => Interlocked.Read(ref _seen);
    public long Lost => Interlocked.Read(ref _lost);

    public void Count(Flow f)
    {
        var v = f.Verdict == "DROPPED" ? 1 : 0;
        var d = f.TrafficDirection == "EGRESS" ? 1 : 0;
        var p = f.Protocol switch { 6 => 0, 17 => 1, 132 => 2, 1 => 3, 58 => 4, _ => 5 };
        Interlocked.Increment(ref _flows[(v * Directions.Length + d) * ProtocolNames.Length + p]);
        Interlocked.Increment(ref _seen);
        if (v == 1)
            lock (_dropsLock) _drops[f.DropReasonDesc] = _drops.GetValueOrDefault(f.DropReasonDesc) + 1;
    }

    public void AddLost(long n) => Interlocked.Add(ref _lost, n);
    public void AddIgnored() => Interlocked.Increment(ref _ignored);

    /// <summary>Called once a second by the collector.</summary>
    public void Sample()
    {
        _perSecond[_sampleIndex] = Seen;
        _sampleIndex = (_sampleIndex + 1) % _perSecond.Length;
        _samples = Math.Min(_samples + 1, _perSecond.Length);
    }

    public double FlowsPerSecond
    {
        get
        {
            if (_samples < 2) return 0;
            var newest = _perSecond[(_sampleIndex - 1 + _perSecond.Length) % _perSecond.Length];
            var oldest = _perSecond[(_sampleIndex - _samples + _perSecond.Length) % _perSecond.Length];
            return (newest - oldest) / (double)(_samples - 1);
        }
    }

    public void AppendMetrics(StringBuilder sb, FlowRing ring, int localEndpoints)
    {
        var inv = CultureInfo.InvariantCulture;
        sb.Append("# HELP weft_flows_processed_total flows observed, by verdict, traffic direction and protocol\n# TYPE weft_flows_processed_total counter\n");
        for (var v = 0; v < Verdicts.Length; v++)
            for (var d = 0; d < Directions.Length; d++)
                for (var p = 0; p < ProtocolNames.Length; p++)
                    sb.Append(inv, $"weft_flows_processed_total{{verdict=\"{Verdicts[v]}\",traffic_direction=\"{Directions[d]}\",protocol=\"{ProtocolNames[p]}\"}} {Interlocked.Read(ref _flows[(v * Directions.Length + d) * ProtocolNames.Length + p])}\n");
        sb.Append("# HELP weft_drops_total dropped flows by reason\n# TYPE weft_drops_total counter\n");
        lock (_dropsLock)
        {
            foreach (var reason in new[] { "POLICY_DENIED", "POLICY_DENY" }.Concat(_drops.Keys).Distinct())
                sb.Append(inv, $"weft_drops_total{{reason=\"{reason}\"}} {_drops.GetValueOrDefault(reason)}\n");
        }
        sb.Append(inv, $"# HELP weft_flows_lost_total kernel log batches lost before the agent read them (socket buffer full)\n# TYPE weft_flows_lost_total counter\nweft_flows_lost_total {Lost}\n");
        sb.Append(inv, $"# HELP weft_flows_ignored_total logged packets that were not flow verdicts\n# TYPE weft_flows_ignored_total counter\nweft_flows_ignored_total {Interlocked.Read(ref _ignored)}\n");
        sb.Append(inv, $"# HELP weft_flow_buffer_flows flows in the node's ring buffer\n# TYPE weft_flow_buffer_flows gauge\nweft_flow_buffer_flows {ring.Count}\n");
        sb.Append(inv, $"# HELP weft_flow_buffer_capacity size of the node's ring buffer\n# TYPE weft_flow_buffer_capacity gauge\nweft_flow_buffer_capacity {ring.Capacity}\n");
        sb.Append(inv, $"# HELP weft_flows_per_second flows observed per second over the last 10 s\n# TYPE weft_flows_per_second gauge\nweft_flows_per_second {FlowsPerSecond.ToString("0.##", inv)}\n");
        sb.Append(inv, $"# HELP weft_endpoints pods on this node\n# TYPE weft_endpoints gauge\nweft_endpoints {localEndpoints}\n");
    }
}
