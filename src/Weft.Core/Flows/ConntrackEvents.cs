using System.Buffers.Binary;
using System.Net;
using Weft.Native;
using Weft.Netlink;

namespace Weft.Flows;

/// <summary>A connection conntrack has forgotten (closed or timed out): its original tuple and, with accounting on, its counters.</summary>
public readonly record struct ConntrackEnd(int IpVersion, IPAddress Source, IPAddress Destination, int Protocol,
    ushort SourcePort, ushort DestinationPort, byte IcmpType, byte IcmpCode, ulong Packets, ulong Bytes);

/// <summary>
/// A subscriber to conntrack's DESTROY events (ctnetlink, NFNLGRP_CONNTRACK_DESTROY): the end of every connection
/// in this network namespace, with packet and byte counts when nf_conntrack_acct is on.
/// <code>
/// nlmsghdr, type = NFNL_SUBSYS_CTNETLINK(1) &lt;&lt; 8 | IPCTNL_MSG_CT_DELETE(2); nfgenmsg; then
/// CTA_TUPLE_ORIG { CTA_TUPLE_IP { V4_SRC, V4_DST | V6_SRC, V6_DST }, CTA_TUPLE_PROTO { NUM, SRC_PORT, DST_PORT, ICMP_TYPE, ICMP_CODE } },
/// CTA_COUNTERS_ORIG / CTA_COUNTERS_REPLY { PACKETS be64, BYTES be64 }
/// </code>
/// </summary>
public sealed class ConntrackEventSocket : IDisposable
{
    private const ushort MsgDelete = 1 << 8 | 2;
    private const uint GroupDestroy = 1 << 2; // NFNLGRP_CONNTRACK_DESTROY = 3

    private readonly NetlinkSocket _socket;
    private long _lost;

    /// <summary>Times the kernel reported dropping events (ENOBUFS; each may stand for many) since the last call.</summary>
    public long TakeLost()
    {
        var n = _lost;
        _lost = 0;
        return n;
    }

    private ConntrackEventSocket(NetlinkSocket socket) => _socket = socket;

    public static ConntrackEventSocket Open(int receiveBufferBytes = 4 << 20)
    {
        var socket = NetlinkSocket.Open(Libc.NETLINK_NETFILTER, GroupDestroy);
        socket.ConfigureForEvents(receiveBufferBytes, TimeSpan.FromMilliseconds(250));
        return new ConntrackEventSocket(socket);
    }

    /// <summary>Turns on per-connection counters in the caller's network namespace (best effort).</summary>
    public static void EnableAccounting()
    {
        try { File.WriteAllText("/proc/sys/net/netfilter/nf_conntrack_acct", "1"); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
    }

    public int Receive(List<ConntrackEnd> into)
    {
        var n = _socket.ReceiveEvents(out var data);
        if (n < 0)
        {
            _lost++;
            return 0;
        }
        return Decode(data, into);
    }

    public static int Decode(ReadOnlySpan<byte> data, List<ConntrackEnd> into)
    {
        var added = 0;
        var messages = new MessageReader(data);
        while (messages.Next())
        {
            var msg = messages.Payload;
            if (messages.Type != MsgDelete || msg.Length < 4) continue;
            IPAddress? src = null, dst = null;
            int proto = 0;
            ushort sport = 0, dport = 0;
            byte icmpType = 0, icmpCode = 0;
            ulong packets = 0, bytes = 0;
            var attrs = new AttributeReader(msg[4..]);
            while (attrs.Next())
            {
                switch (attrs.Type)
                {
                    case 1: // CTA_TUPLE_ORIG
                        var tuple = new AttributeReader(attrs.Value);
                        while (tuple.Next())
                        {
                            var inner = new AttributeReader(tuple.Value);
                            if (tuple.Type == 1) // CTA_TUPLE_IP
                                while (inner.Next())
                                    switch (inner.Type)
                                    {
                                        case 1 when inner.Value.Length == 4: src = new IPAddress(inner.Value); break;
                                        case 2 when inner.Value.Length == 4: dst = new IPAddress(inner.Value); break;
                                        case 3 when inner.Value.Length == 16: src = new IPAddress(inner.Value); break;
                                        case 4 when inner.Value.Length == 16: dst = new IPAddress(inner.Value); break;
                                    }
                            else if (tuple.Type == 2) // CTA_TUPLE_PROTO
                                while (inner.Next())
                                    switch (inner.Type)
                                    {
                                        case 1 when inner.Value.Length >= 1: proto = inner.Value[0]; break;
                                        case 2 when inner.Value.Length >= 2: sport = BinaryPrimitives.ReadUInt16BigEndian(inner.Value); break;
                                        case 3 when inner.Value.Length >= 2: dport = BinaryPrimitives.ReadUInt16BigEndian(inner.Value); break;
                                        case 5 or 8 when inner.Value.Length >= 1: icmpType = inner.Value[0]; break; // CTA_PROTO_ICMP_TYPE, CTA_PROTO_ICMPV6_TYPE
                                        case 6 or 9 when inner.Value.Length >= 1: icmpCode = inner.Value[0]; break; // CTA_PROTO_ICMP_CODE, CTA_PROTO_ICMPV6_CODE
                                    }
                        }
                        break;
                    case 9 or 10: // CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY
                        var counters = new AttributeReader(attrs.Value);
                        while (counters.Next())
                            if (counters.Value.Length >= 8)
                            {
                                var v = BinaryPrimitives.ReadUInt64BigEndian(counters.Value);
                                if (counters.Type == 1) packets += v;
                                else if (counters.Type == 2) bytes += v;
                            }
                        break;
                }
            }
            if (src is null || dst is null || src.AddressFamily != dst.AddressFamily) continue;
            into.Add(new ConntrackEnd(src.AddressFamily == System.Net.Sockets.AddressFamily.InterNetwork ? 4 : 6, src, dst, proto, sport, dport, icmpType, icmpCode, packets, bytes));
            added++;
        }
        return added;
    }

    public void Dispose() => _socket.Dispose();
}
