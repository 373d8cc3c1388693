using System.Globalization;
using System.Text;
using System.Text.Json;
using Weft.Flows.Api;

namespace Weft.Flows;

/// <summary>
/// Flows as `hubble observe` prints them: one JSON object per line in Hubble's GetFlowsResponse shape
/// ({"flow":{...},"node_name":...,"time":...}), the compact one-liner and the table row.
/// </summary>
public static class FlowText
{
    private const byte TcpFin = 0x01, TcpSyn = 0x02, TcpRst = 0x04, TcpPsh = 0x08, TcpAck = 0x10, TcpUrg = 0x20, TcpEce = 0x40, TcpCwr = 0x80;

    public static DateTime Time(Flow f) => DateTime.UnixEpoch.AddTicks(f.TimeUnixNano / 100);

    /// <summary>The flow API's time unit (Unix nanoseconds) for a UTC time.</summary>
    public static long UnixNano(DateTime utc) => (utc - DateTime.UnixEpoch).Ticks * 100;

    /// <summary>RFC 3339 with nanoseconds, UTC, as Go's time.RFC3339Nano prints (trailing zeros dropped).</summary>
    public static string Rfc3339(long unixNano)
    {
        var t = DateTime.UnixEpoch.AddTicks(unixNano / 100);
        var frac = (unixNano % 1_000_000_000).ToString("D9", CultureInfo.InvariantCulture).TrimEnd('0');
        return t.ToString("yyyy-MM-ddTHH:mm:ss", CultureInfo.InvariantCulture) + (frac.Length > 0 ? "." + frac : "") + "Z";
    }

    public const string LostEvents = "lost-events";

    public static void WriteJson(Utf8JsonWriter w, Flow f)
    {
        var time = Rfc3339(f.TimeUnixNano);
        if (f.Event == LostEvents)
        {
            // Hubble's GetFlowsResponse with lost_events instead of flow.
            w.WriteStartObject();
            w.WritePropertyName("lost_events");
            w.WriteStartObject();
            w.WriteString("source", "HUBBLE_RING_BUFFER");
            w.WriteNumber("num_events_lost", f.Packets);
            w.WriteEndObject();
            w.WriteString("node_name", f.NodeName);
            w.WriteString("time", time);
            w.WriteEndObject();
            return;
        }
        w.WriteStartObject();
        w.WritePropertyName("flow");
        w.WriteStartObject();
        w.WriteString("time", time);
        w.WriteString("verdict", f.Verdict);
        if (f.Verdict == "DROPPED")
        {
            w.WriteNumber("drop_reason", DropReasonCode(f.DropReasonDesc));
            w.WriteString("drop_reason_desc", f.DropReasonDesc);
        }
        w.WritePropertyName("IP");
        w.WriteStartObject();
        w.WriteString("source", f.IpSource);
        w.WriteString("destination", f.IpDestination);
        w.WriteString("ipVersion", f.IpVersion == 6 ? "IPv6" : "IPv4");
        w.WriteEndObject();
        if (L4Name(f) is { } l4)
        {
            w.WritePropertyName("l4");
            w.WriteStartObject();
            w.WritePropertyName(l4);
            w.WriteStartObject();
            if (f.Protocol is 1 or 58)
            {
                w.WriteNumber("type", f.IcmpType);
                w.WriteNumber("code", f.IcmpCode);
            }
            else
            {
                w.WriteNumber("source_port", f.SourcePort);
                w.WriteNumber("destination_port", f.DestinationPort);
                if (f.Protocol == 6 && f.TcpFlags != 0)
                {
                    w.WritePropertyName("flags");
                    w.WriteStartObject();
                    foreach (var (bit, name) in FlagNames) if ((f.TcpFlags & bit) != 0) w.WriteBoolean(name, true);
                    w.WriteEndObject();
                }
            }
            w.WriteEndObject();
            w.WriteEndObject();
        }
        WriteEndpoint(w, "source", f.Source);
        WriteEndpoint(w, "destination", f.Destination);
        w.WriteString("Type", "L3_L4");
        w.WriteString("node_name", f.NodeName);
        w.WritePropertyName("event_type");
        w.WriteStartObject();
        w.WriteNumber("type", f.Event == "policy-verdict" ? (f.Verdict == "DROPPED" ? 1 : 5) : 4);
        w.WriteEndObject();
        if (f.TrafficDirection.Length > 0) w.WriteString("traffic_direction", f.TrafficDirection);
        if (f.Policy.Length > 0 && f.Event == "policy-verdict")
        {
            var egress = f.TrafficDirection == "EGRESS";
            w.WritePropertyName((egress ? "egress_" : "ingress_") + (f.Verdict == "DROPPED" ? "denied_by" : "allowed_by"));
            w.WriteStartArray();
            foreach (var id in f.Policy.Split(',', StringSplitOptions.RemoveEmptyEntries))
            {
                var (kind, ns, name) = PolicyParts(id);
                w.WriteStartObject();
                w.WriteString("name", name);
                if (ns is not null) w.WriteString("namespace", ns);
                if (kind is not null) w.WriteString("kind", kind);
                w.WriteEndObject();
            }
            w.WriteEndArray();
        }
        w.WriteBoolean("is_reply", f.IsReply);
        if (f.Event.Length > 0) w.WriteString("event", f.Event);
        if (f.Event == "conntrack-destroy")
        {
            w.WriteNumber("packets", f.Packets);
            w.WriteNumber("bytes", f.Bytes);
        }
        w.WriteString("Summary", Summary(f));
        w.WriteEndObject();
        w.WriteString("node_name", f.NodeName);
        w.WriteString("time", time);
        w.WriteEndObject();
    }

    public static string Json(Flow f)
    {
        var buffer = new System.Buffers.ArrayBufferWriter<byte>(1024);
        using (var w = new Utf8JsonWriter(buffer)) WriteJson(w, f);
        return Encoding.UTF8.GetString(buffer.WrittenSpan);
    }

    private static void WriteEndpoint(Utf8JsonWriter w, string name, Endpoint? ep)
    {
        w.WritePropertyName(name);
        w.WriteStartObject();
        if (ep is { Namespace.Length: > 0 })
        {
            w.WriteString("namespace", ep.Namespace);
            w.WriteStartArray("labels");
            foreach (var l in ep.Labels) w.WriteStringValue(l);
            w.WriteEndArray();
            w.WriteString("pod_name", ep.PodName);
            if (ep.NodeName.Length > 0) w.WriteString("node_name", ep.NodeName);
        }
        else
        {
            w.WriteStartArray("labels");
            foreach (var l in ep?.Labels ?? (IEnumerable<string>)["reserved:world"]) w.WriteStringValue(l);
            w.WriteEndArray();
        }
        w.WriteEndObject();
    }

    /// <summary>A policy id ("knp/ns/name", "np/ns/name", "gnp/name") as Hubble's policy fields: kind, namespace, name.</summary>
    public static (string? Kind, string? Namespace, string Name) PolicyParts(string id)
    {
        var parts = id.Split('/');
        var kind = parts[0] switch
        {
            "knp" => "NetworkPolicy", "np" => "CalicoNetworkPolicy", "gnp" => "GlobalNetworkPolicy", _ => null,
        };
        return parts.Length switch
        {
            3 => (kind, parts[1], parts[2]),
            2 => (kind, null, parts[1]),
            _ => (null, null, id),
        };
    }

    /// <summary>Cilium's numeric drop reasons for the descriptions Weft emits.</summary>
    public static int DropReasonCode(string desc) => desc switch
    {
        "POLICY_DENIED" => 133,
        "POLICY_DENY" => 181,
        "CT_INVALID" => 140, // Cilium's closest: "invalid packet"
        _ => 0,
    };

    public static string? L4Name(Flow f) => f.Protocol switch
    {
        6 => "TCP", 17 => "UDP", 132 => "SCTP", 1 => "ICMPv4", 58 => "ICMPv6", _ => null,
    };

    private static readonly (uint Bit, string Name)[] FlagNames =
        [(TcpSyn, "SYN"), (TcpAck, "ACK"), (TcpFin, "FIN"), (TcpRst, "RST"), (TcpPsh, "PSH"), (TcpUrg, "URG"), (TcpEce, "ECE"), (TcpCwr, "CWR")];

    public static string Summary(Flow f)
    {
        if (f.Event == "conntrack-destroy")
            return $"{L4Name(f) ?? "IP"} connection closed ({f.Packets} packets, {f.Bytes} bytes)";
        return f.Protocol switch
        {
            6 => "TCP Flags: " + string.Join(", ", FlagNames.Where(x => (f.TcpFlags & x.Bit) != 0).Select(x => x.Name)),
            1 => "ICMPv4 " + IcmpName(f.IcmpType, v6: false),
            58 => "ICMPv6 " + IcmpName(f.IcmpType, v6: true),
            _ => L4Name(f) ?? $"IP protocol {f.Protocol}",
        };
    }

    private static string IcmpName(int type, bool v6) => (type, v6) switch
    {
        (8, false) or (128, true) => "EchoRequest",
        (0, false) or (129, true) => "EchoReply",
        (3, false) or (1, true) => "DestinationUnreachable",
        (11, false) or (3, true) => "TimeExceeded",
        _ => "type " + type.ToString(CultureInfo.InvariantCulture),
    };

    /// <summary>One endpoint as the compact and table outputs name it: ns/pod:port, or the address for non-pods.</summary>
    public static string Peer(Flow f, bool source)
    {
        var ep = source ? f.Source : f.Destination;
        var ip = source ? f.IpSource : f.IpDestination;
        var name = ep is { Namespace.Length: > 0 } ? $"{ep.Namespace}/{ep.PodName}" : ip;
        var port = source ? f.SourcePort : f.DestinationPort;
        return f.Protocol is 6 or 17 or 132 ? $"{name}:{port.ToString(CultureInfo.InvariantCulture)}" : name;
    }

    private static string Event(Flow f) => f.Event switch
    {
        "policy-verdict" => "policy-verdict:" + (f.Policy.Length > 0 ? f.Policy : "none"),
        "conntrack-destroy" => "conntrack-destroy",
        _ => f.Event,
    };

    /// <summary>`hubble observe`'s compact line.</summary>
    public static string Compact(Flow f)
    {
        if (f.Event == LostEvents) return $"EVENTS LOST: HUBBLE_RING_BUFFER [{f.NodeName}] {f.Packets} flows";
        var when = Time(f).ToString("MMM dd HH:mm:ss.fff", CultureInfo.InvariantCulture);
        var arrow = f.IsReply ? "<-" : "->";
        var (a, b) = f.IsReply ? (Peer(f, false), Peer(f, true)) : (Peer(f, true), Peer(f, false));
        var verdict = f.Verdict == "DROPPED" ? $"DROPPED ({DropText(f.DropReasonDesc)})" : f.Verdict;
        return $"{when} [{f.NodeName}]: {a} {arrow} {b} {Event(f)} {f.TrafficDirection} {verdict} ({Summary(f)})";
    }

    public static string DropText(string desc) => desc switch
    {
        "POLICY_DENIED" => "Policy denied",
        "POLICY_DENY" => "Policy denied by denylist",
        "CT_INVALID" => "Invalid packet",
        "NO_ROUTE" => "No route to destination",
        _ => desc,
    };

    public static IReadOnlyList<string> TableHeader { get; } = ["TIMESTAMP", "NODE", "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"];

    public static IReadOnlyList<string> TableRow(Flow f) => f.Event == LostEvents
        ? [Time(f).ToString("MMM dd HH:mm:ss.fff", CultureInfo.InvariantCulture), f.NodeName, "", "", "EVENTS LOST", "", $"{f.Packets} flows"]
        :
    [
        Time(f).ToString("MMM dd HH:mm:ss.fff", CultureInfo.InvariantCulture), f.NodeName, Peer(f, true), Peer(f, false),
        Event(f) + (f.TrafficDirection.Length > 0 ? " " + f.TrafficDirection : ""), f.Verdict, Summary(f),
    ];
}
