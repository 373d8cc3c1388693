using System.Buffers.Binary;
using System.Net;
using System.Text.Json;
using CsCheck;
using Weft.Agent.Flows;
using Weft.Ctl.Commands;
using Weft.Dataplane.Nftables;
using Weft.Flows;
using Weft.Flows.Api;
using Weft.Policy;
using Weft.Policy.Ir;

namespace Weft.Tests.Flows;

/// <summary>Flow parsing, filtering, buffering and printing without a kernel; hostile bytes never crash a decoder.</summary>
public sealed class FlowUnitTests
{
    private static byte[] Ipv4Tcp(string src, string dst, ushort sport, ushort dport, byte flags)
    {
        var p = new byte[40];
        p[0] = 0x45;
        BinaryPrimitives.WriteUInt16BigEndian(p.AsSpan(2), 40);
        p[8] = 64;
        p[9] = 6;
        IPAddress.Parse(src).GetAddressBytes().CopyTo(p, 12);
        IPAddress.Parse(dst).GetAddressBytes().CopyTo(p, 16);
        BinaryPrimitives.WriteUInt16BigEndian(p.AsSpan(20), sport);
        BinaryPrimitives.WriteUInt16BigEndian(p.AsSpan(22), dport);
        p[20 + 12] = 0x50;
        p[20 + 13] = flags;
        return p;
    }

    [Fact]
    public void Ipv4_tcp_headers_are_read()
    {
        Assert.True(PacketHeaders.TryParse(Ipv4Tcp("10.0.0.1", "10.0.0.2", 40000, 80, 0x02), out var h));
        Assert.Equal((4, "10.0.0.1", "10.0.0.2", 6, (ushort)40000, (ushort)80, (byte)2), (h.IpVersion, h.Source.ToString(), h.Destination.ToString(), h.Protocol, h.SourcePort, h.DestinationPort, h.TcpFlags));
    }

    [Fact]
    public void Ipv6_udp_after_an_extension_header_and_icmpv6_are_read()
    {
        var p = new byte[40 + 8 + 8];
        p[0] = 0x60;
        p[6] = 0; // hop-by-hop first
        IPAddress.Parse("fd00::1").GetAddressBytes().CopyTo(p, 8);
        IPAddress.Parse("fd00::2").GetAddressBytes().CopyTo(p, 24);
        p[40] = 17; // next: UDP
        p[41] = 0;  // 8 bytes
        BinaryPrimitives.WriteUInt16BigEndian(p.AsSpan(48), 5353);
        BinaryPrimitives.WriteUInt16BigEndian(p.AsSpan(50), 53);
        Assert.True(PacketHeaders.TryParse(p, out var h));
        Assert.Equal((6, 17, (ushort)5353, (ushort)53), (h.IpVersion, h.Protocol, h.SourcePort, h.DestinationPort));

        var icmp = new byte[48];
        icmp[0] = 0x60;
        icmp[6] = 58;
        icmp[40] = 128;
        Assert.True(PacketHeaders.TryParse(icmp, out var e));
        Assert.Equal((58, (byte)128), (e.Protocol, e.IcmpType));
    }

    [Fact]
    public void Truncated_or_foreign_packets_are_refused_without_reading_past_the_end()
    {
        Assert.False(PacketHeaders.TryParse([], out _));
        Assert.False(PacketHeaders.TryParse([0x45, 0, 0], out _));
        Assert.False(PacketHeaders.TryParse(new byte[30].Select((_, i) => i == 0 ? (byte)0x60 : (byte)0).ToArray(), out _));
        Assert.False(PacketHeaders.TryParse([0x20, 1, 2, 3], out _));
        // A header that claims 60 bytes of options in a 24-byte packet.
        var p = Ipv4Tcp("1.1.1.1", "2.2.2.2", 1, 2, 0)[..24];
        p[0] = 0x4f;
        Assert.False(PacketHeaders.TryParse(p, out _));
        // Transport header cut short: addresses still known, ports zero.
        Assert.True(PacketHeaders.TryParse(Ipv4Tcp("1.1.1.1", "2.2.2.2", 1, 2, 0).AsSpan(0, 22), out var cut));
        Assert.Equal(0, cut.SourcePort);
    }

    [Fact]
    public void Random_bytes_never_crash_the_packet_nflog_or_conntrack_decoders()
    {
        Gen.Byte.Array[0, 300].Sample(bytes =>
        {
            _ = PacketHeaders.TryParse(bytes, out _);
            NflogSocket.Decode(bytes, []);
            ConntrackEventSocket.Decode(bytes, []);
        }, iter: 20_000);
    }

    private static byte[] NlMsg(ushort type, byte[] payload)
    {
        var len = 16 + payload.Length;
        var m = new byte[(len + 3) & ~3];
        BinaryPrimitives.WriteUInt32LittleEndian(m, (uint)len);
        BinaryPrimitives.WriteUInt16LittleEndian(m.AsSpan(4), type);
        payload.CopyTo(m, 16);
        return m;
    }

    private static byte[] Attr(ushort type, byte[] value)
    {
        var a = new byte[(4 + value.Length + 3) & ~3];
        BinaryPrimitives.WriteUInt16LittleEndian(a, (ushort)(4 + value.Length));
        BinaryPrimitives.WriteUInt16LittleEndian(a.AsSpan(2), type);
        value.CopyTo(a, 4);
        return a;
    }

    [Fact]
    public void An_nflog_packet_message_decodes_to_prefix_interfaces_and_headers()
    {
        var prefix = System.Text.Encoding.ASCII.GetBytes("weft:XE:abc\0");
        var indev = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(indev, 7);
        var ts = new byte[16];
        BinaryPrimitives.WriteUInt64BigEndian(ts, 1_700_000_000);
        BinaryPrimitives.WriteUInt64BigEndian(ts.AsSpan(8), 250_000);
        byte[] payload = [2, 0, 0, 2, .. Attr(10, prefix), .. Attr(4, indev), .. Attr(3, ts), .. Attr(9, Ipv4Tcp("10.1.0.5", "10.2.0.6", 1234, 443, 0x02))];
        var buffer = NlMsg(4 << 8, payload).Concat(NlMsg(4 << 8, payload)).ToArray();
        var list = new List<LoggedPacket>();
        Assert.Equal(2, NflogSocket.Decode(buffer, list, []));
        var p = list[0];
        Assert.Equal("weft:XE:abc", p.Prefix);
        Assert.Equal(7u, p.InInterface);
        Assert.Equal(1_700_000_000_250_000_000L, p.TimeUnixNano);
        Assert.Equal((443, "10.2.0.6"), (p.Headers.DestinationPort, p.Headers.Destination.ToString()));
    }

    [Fact]
    public void A_conntrack_destroy_message_decodes_to_its_tuple_and_counters()
    {
        static byte[] Be16(ushort v) { var b = new byte[2]; BinaryPrimitives.WriteUInt16BigEndian(b, v); return b; }
        static byte[] Be64(ulong v) { var b = new byte[8]; BinaryPrimitives.WriteUInt64BigEndian(b, v); return b; }
        var ip = Attr(1 | 0x8000, [.. Attr(1, IPAddress.Parse("10.1.0.5").GetAddressBytes()), .. Attr(2, IPAddress.Parse("10.2.0.6").GetAddressBytes())]);
        var proto = Attr(2 | 0x8000, [.. Attr(1, [6]), .. Attr(2, Be16(40000)), .. Attr(3, Be16(80))]);
        var orig = Attr(1 | 0x8000, [.. ip, .. proto]);
        var counters = Attr(9 | 0x8000, [.. Attr(1, Be64(10)), .. Attr(2, Be64(1500))]);
        var reply = Attr(10 | 0x8000, [.. Attr(1, Be64(8)), .. Attr(2, Be64(9000))]);
        var list = new List<ConntrackEnd>();
        Assert.Equal(1, ConntrackEventSocket.Decode(NlMsg(1 << 8 | 2, [2, 0, 0, 0, .. orig, .. counters, .. reply]), list));
        Assert.Equal(("10.1.0.5", "10.2.0.6", 6, (ushort)40000, (ushort)80, 18UL, 10500UL),
            (list[0].Source.ToString(), list[0].Destination.ToString(), list[0].Protocol, list[0].SourcePort, list[0].DestinationPort, list[0].Packets, list[0].Bytes));
    }

    [Fact]
    public void The_ring_stays_bounded_and_a_reader_learns_what_it_missed()
    {
        var ring = new FlowRing(100);
        for (var i = 0; i < 1000; i++) ring.Add(new Flow { TimeUnixNano = i });
        Assert.Equal(100, ring.Count);
        var got = new List<Flow>();
        var (next, missed) = ring.ReadFrom(0, got);
        Assert.Equal((1000L, 900L, 100), (next, missed, got.Count));
        Assert.Equal(900, got[0].TimeUnixNano);
        Assert.Equal(999, got[^1].TimeUnixNano);
        got.Clear();
        ring.Add(new Flow { TimeUnixNano = 1000 });
        Assert.Equal((1001L, 0L), ring.ReadFrom(next, got));
        Assert.Single(got);
    }

    [Fact]
    public async Task A_follower_wakes_on_publish()
    {
        var ring = new FlowRing(10);
        var wait = ring.NextPublish();
        Assert.False(wait.IsCompleted);
        ring.Add(new Flow());
        ring.Publish();
        await wait.WaitAsync(TimeSpan.FromSeconds(5));
    }

    private static Flow Sample(string srcPod = "web-1", string dstPod = "db-1", string verdict = "DROPPED", int proto = 6, uint dport = 5432, string direction = "INGRESS", string node = "node-1")
    {
        var f = new Flow
        {
            TimeUnixNano = 1_764_000_000_123_456_789, Verdict = verdict, DropReasonDesc = verdict == "DROPPED" ? "POLICY_DENIED" : "",
            IpSource = "10.244.1.5", IpDestination = "10.244.2.7", IpVersion = 4, Protocol = proto, SourcePort = 40000, DestinationPort = dport,
            TcpFlags = 0x02, NodeName = node, TrafficDirection = direction, Policy = "knp/shop/db-ingress", Event = "policy-verdict",
            Source = new Endpoint { Namespace = "shop", PodName = srcPod, NodeName = "node-1" },
            Destination = new Endpoint { Namespace = "shop", PodName = dstPod, NodeName = "node-2" },
        };
        f.Source.Labels.Add("k8s:app=web");
        f.Destination.Labels.Add("k8s:app=db");
        return f;
    }

    private static bool Passes(ObserveOptions o, Flow f) => new FlowMatcher(FlowCommands.BuildFilters(o), []).Matches(f);

    [Fact]
    public void Observe_flags_mean_what_hubbles_mean()
    {
        var f = Sample();
        Assert.True(Passes(new ObserveOptions(), f));
        Assert.True(Passes(new ObserveOptions { Pods = ["shop/web"] }, f));          // prefix, either side
        Assert.True(Passes(new ObserveOptions { Pods = ["shop/db-1"] }, f));
        Assert.False(Passes(new ObserveOptions { Pods = ["web-1"] }, f));            // no namespace: "default"
        Assert.True(Passes(new ObserveOptions { Pods = ["web-1"], Namespaces = ["shop"] }, f));
        Assert.True(Passes(new ObserveOptions { Namespaces = ["shop"] }, f));
        Assert.False(Passes(new ObserveOptions { Namespaces = ["other"] }, f));
        Assert.True(Passes(new ObserveOptions { FromPods = ["shop/web-1"], ToPods = ["shop/db-1"] }, f));
        Assert.False(Passes(new ObserveOptions { FromPods = ["shop/db-1"] }, f));
        Assert.True(Passes(new ObserveOptions { Ips = ["10.244.2.0/24"] }, f));
        Assert.True(Passes(new ObserveOptions { FromIps = ["10.244.1.5"] }, f));
        Assert.False(Passes(new ObserveOptions { ToIps = ["10.244.1.5"] }, f));
        Assert.True(Passes(new ObserveOptions { Labels = ["app=db"] }, f));
        Assert.True(Passes(new ObserveOptions { FromLabels = ["k8s:app=web"] }, f));
        Assert.False(Passes(new ObserveOptions { FromLabels = ["app=db"] }, f));
        Assert.True(Passes(new ObserveOptions { ToLabels = ["app!=web,app"] }, f));
        Assert.True(Passes(new ObserveOptions { Verdicts = ["dropped"] }, f));
        Assert.False(Passes(new ObserveOptions { Verdicts = ["FORWARDED"] }, f));
        Assert.True(Passes(new ObserveOptions { Protocols = ["tcp"] }, f));
        Assert.False(Passes(new ObserveOptions { Protocols = ["udp"] }, f));
        Assert.True(Passes(new ObserveOptions { Protocols = ["icmp"] }, Sample(proto: 58)));   // as hubble: both families
        Assert.True(Passes(new ObserveOptions { Protocols = ["icmpv4"] }, Sample(proto: 1)));
        Assert.False(Passes(new ObserveOptions { Protocols = ["icmpv4"] }, Sample(proto: 58)));
        Assert.True(Passes(new ObserveOptions { Ports = [5432] }, f));
        Assert.True(Passes(new ObserveOptions { Ports = [40000] }, f));
        Assert.False(Passes(new ObserveOptions { ToPorts = [40000] }, f));
        Assert.True(Passes(new ObserveOptions { Directions = ["ingress"] }, f));
        Assert.False(Passes(new ObserveOptions { Directions = ["egress"] }, f));
        Assert.True(Passes(new ObserveOptions { Nodes = ["node-*"] }, f));
        Assert.False(Passes(new ObserveOptions { Nodes = ["node-2"] }, f));
        // Either-side flags pick their side independently: web-1 as source with 5432 as destination port.
        Assert.True(Passes(new ObserveOptions { Pods = ["shop/web-1"], Ports = [5432] }, f));
        Assert.False(Passes(new ObserveOptions { Pods = ["shop/web-1"], Ports = [5433] }, f));
    }

    [Fact]
    public void Bad_observe_flags_are_refused_with_the_flag_named()
    {
        Assert.Contains("--verdict", Assert.Throws<ArgumentException>(() => FlowCommands.BuildFilters(new ObserveOptions { Verdicts = ["ALLOWED"] })).Message);
        Assert.Contains("--protocol", Assert.Throws<ArgumentException>(() => FlowCommands.BuildFilters(new ObserveOptions { Protocols = ["gre"] })).Message);
        Assert.Contains("--traffic-direction", Assert.Throws<ArgumentException>(() => FlowCommands.BuildFilters(new ObserveOptions { Directions = ["up"] })).Message);
        Assert.Contains("source_ip", Assert.Throws<ArgumentException>(() => FlowCommands.BuildFilters(new ObserveOptions { FromIps = ["10.0.0.300"] })).Message);
        Assert.Contains("label", Assert.Throws<ArgumentException>(() => FlowCommands.BuildFilters(new ObserveOptions { Labels = ["app (x)"] })).Message);
        Assert.Contains("--since", Assert.Throws<ArgumentException>(() => FlowCommands.ParseSince("yesterday", DateTime.UtcNow)).Message);
        Assert.Throws<ArgumentException>(() => FlowCommands.BuildFilters(new ObserveOptions { Ports = [70000] }));
    }

    [Fact]
    public void Observe_defaults_to_the_last_20_and_follow_to_new_flows_only()
    {
        var now = new DateTime(2026, 11, 25, 6, 0, 0, DateTimeKind.Utc);
        Assert.Equal(20UL, FlowCommands.BuildRequest(new ObserveOptions(), now).Number);
        Assert.Equal(5UL, FlowCommands.BuildRequest(new ObserveOptions { Last = 5 }, now).Number);
        var follow = FlowCommands.BuildRequest(new ObserveOptions { Follow = true }, now);
        Assert.Equal((0UL, true, (now - DateTime.UnixEpoch).Ticks * 100), (follow.Number, follow.Follow, follow.SinceUnixNano));
        var since = FlowCommands.BuildRequest(new ObserveOptions { Since = "5m" }, now);
        Assert.Equal((0UL, (now.AddMinutes(-5) - DateTime.UnixEpoch).Ticks * 100), (since.Number, since.SinceUnixNano));
        Assert.Equal(new DateTime(2026, 11, 25, 5, 0, 0, DateTimeKind.Utc), FlowCommands.ParseSince("2026-11-25T05:00:00Z", now));
    }

    [Fact]
    public void Json_has_hubbles_shape()
    {
        using var doc = JsonDocument.Parse(FlowText.Json(Sample()));
        var root = doc.RootElement;
        Assert.Equal("node-1", root.GetProperty("node_name").GetString());
        var f = root.GetProperty("flow");
        Assert.Equal("2025-11-24T16:00:00.123456789Z", f.GetProperty("time").GetString());
        Assert.Equal("DROPPED", f.GetProperty("verdict").GetString());
        Assert.Equal("POLICY_DENIED", f.GetProperty("drop_reason_desc").GetString());
        Assert.Equal(133, f.GetProperty("drop_reason").GetInt32());
        Assert.Equal("10.244.1.5", f.GetProperty("IP").GetProperty("source").GetString());
        Assert.Equal("IPv4", f.GetProperty("IP").GetProperty("ipVersion").GetString());
        Assert.Equal(5432, f.GetProperty("l4").GetProperty("TCP").GetProperty("destination_port").GetInt32());
        Assert.True(f.GetProperty("l4").GetProperty("TCP").GetProperty("flags").GetProperty("SYN").GetBoolean());
        Assert.Equal("web-1", f.GetProperty("source").GetProperty("pod_name").GetString());
        Assert.Equal("shop", f.GetProperty("destination").GetProperty("namespace").GetString());
        Assert.Equal("k8s:app=db", f.GetProperty("destination").GetProperty("labels")[0].GetString());
        Assert.Equal("L3_L4", f.GetProperty("Type").GetString());
        Assert.Equal("INGRESS", f.GetProperty("traffic_direction").GetString());
        Assert.False(f.GetProperty("is_reply").GetBoolean());
        Assert.Equal("TCP Flags: SYN", f.GetProperty("Summary").GetString());
        var deniedBy = f.GetProperty("ingress_denied_by")[0];
        Assert.Equal(("db-ingress", "shop", "NetworkPolicy"), (deniedBy.GetProperty("name").GetString(), deniedBy.GetProperty("namespace").GetString(), deniedBy.GetProperty("kind").GetString()));
        Assert.Equal("Nov 24 16:00:00.123 [node-1]: shop/web-1:40000 -> shop/db-1:5432 policy-verdict:knp/shop/db-ingress INGRESS DROPPED (Policy denied) (TCP Flags: SYN)", FlowText.Compact(Sample()));
        using var udp = JsonDocument.Parse(FlowText.Json(Sample(verdict: "FORWARDED", proto: 17)));
        Assert.False(udp.RootElement.GetProperty("flow").TryGetProperty("drop_reason_desc", out _));
        Assert.Equal(5432, udp.RootElement.GetProperty("flow").GetProperty("l4").GetProperty("UDP").GetProperty("destination_port").GetInt32());
    }

    [Fact]
    public void Lost_flows_print_as_hubbles_lost_events()
    {
        var lost = new Flow { Event = FlowText.LostEvents, Packets = 1234, NodeName = "node-2", TimeUnixNano = 1_764_000_000_000_000_000 };
        using var doc = JsonDocument.Parse(FlowText.Json(lost));
        Assert.Equal(1234, doc.RootElement.GetProperty("lost_events").GetProperty("num_events_lost").GetInt64());
        Assert.Equal("node-2", doc.RootElement.GetProperty("node_name").GetString());
        Assert.False(doc.RootElement.TryGetProperty("flow", out _));
        Assert.Equal("EVENTS LOST: HUBBLE_RING_BUFFER [node-2] 1234 flows", FlowText.Compact(lost));
    }

    [Fact]
    public void The_compiler_logs_every_verdict_with_a_token_that_names_the_policy()
    {
        var ep = new EndpointInfo("shop", "db-1", new Dictionary<string, string> { ["app"] = "db" }, [IPAddress.Parse("10.244.2.7")], [], "node-2", "weft1234");
        var world = new PolicyWorld([new NamespaceInfo("shop", new Dictionary<string, string>())], [ep]);
        var doc = (System.Text.Json.Nodes.JsonObject)System.Text.Json.Nodes.JsonNode.Parse("""
            {"apiVersion": "projectcalico.org/v3", "kind": "NetworkPolicy", "metadata": {"name": "db", "namespace": "shop"},
             "spec": {"selector": "app == 'db'", "ingress": [
               {"action": "Deny", "protocol": "TCP", "destination": {"ports": [22]}},
               {"action": "Allow", "source": {"selector": "app == 'web'"}}]}}
            """)!;
        PolicyIr[] policies = [Weft.Policy.Dialects.PolicyDocuments.ReadPolicy(doc, "t.json")];
        var ruleset = new NftPolicyCompiler(new NftPolicyCompiler.Options()).Compile(new PolicySet(policies), world, [ep]);
        var text = string.Join("\n", ruleset.Chains.Values.SelectMany(c => c.Rules));
        var token = ruleset.LogMeanings.Single(kv => kv.Value == "np/shop/db" && !kv.Key.StartsWith("ep-", StringComparison.Ordinal)).Key;
        Assert.Contains(FlowLog.Prefix('X', Direction.Ingress, token), text);
        Assert.Contains(FlowLog.Prefix('A', Direction.Ingress, token), text);
        var tierChain = ruleset.Chains.Keys.Single(k => k.StartsWith("ep-in-", StringComparison.Ordinal) && k.EndsWith("-t0", StringComparison.Ordinal));
        Assert.Contains(FlowLog.Prefix('D', Direction.Ingress, tierChain), text);
        Assert.Equal("np/shop/db", ruleset.LogMeanings[tierChain]);
        Assert.Contains(FlowLog.Prefix('A', Direction.Egress, FlowLog.Profile), text);
        Assert.Contains(FlowLog.Prefix('D', Direction.Ingress, FlowLog.Unprogrammed), text);
        Assert.True(FlowLog.TryParse(FlowLog.Prefix('X', Direction.Ingress, token), out var v, out var d, out var t));
        Assert.Equal(('X', Direction.Ingress, token), (v, d, t));
        Assert.False(FlowLog.TryParse("weft np/shop/db ingress[0]", out _, out _, out _));

        // The collector turns a logged packet into a named flow.
        var ids = new FlowIdentities("node-2");
        ids.Update(world, ruleset.LogMeanings);
        Assert.True(PacketHeaders.TryParse(Ipv4Tcp("10.244.1.5", "10.244.2.7", 40000, 22, 2), out var h));
        var flow = FlowCollector.FromVerdict(new LoggedPacket(FlowLog.Prefix('X', Direction.Ingress, token), 1, 0, 0, h), ids, "node-2")!;
        Assert.Equal(("DROPPED", "POLICY_DENY", "np/shop/db", "INGRESS", "db-1", ""), (flow.Verdict, flow.DropReasonDesc, flow.Policy, flow.TrafficDirection, flow.Destination.PodName, flow.Source?.PodName ?? ""));
        Assert.Null(FlowCollector.FromVerdict(new LoggedPacket("weft np/shop/db 0", 1, 0, 0, h), ids, "node-2"));

        // Off means no log statements at all.
        var off = new NftPolicyCompiler(new NftPolicyCompiler.Options(FlowLogGroup: 0)).Compile(new PolicySet(policies), world, [ep]);
        Assert.DoesNotContain(FlowLog.Start, string.Join("\n", off.Chains.Values.SelectMany(c => c.Rules)));
    }
}
