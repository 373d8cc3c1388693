using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using Weft.Native;

namespace Weft.Netlink;

/// <summary>One connection by its original direction (TCP or UDP).</summary>
public readonly record struct ConnectionTuple(IPAddress Source, IPAddress Destination, byte Protocol, ushort SourcePort, ushort DestinationPort);

/// <summary>
/// Writes connections into the kernel's conntrack table of the caller's network namespace (ctnetlink,
/// IPCTNL_MSG_CT_NEW), as `conntrack -I` does: a dataplane handing over to nftables enforcement gives it the
/// connections it had allowed, so `ct state established` accepts their next packets whichever side sends first.
/// <code>
/// nlmsghdr, type = NFNL_SUBSYS_CTNETLINK(1) &lt;&lt; 8 | IPCTNL_MSG_CT_NEW(0); nfgenmsg { family, version 0, res_id 0 };
/// CTA_TUPLE_ORIG and CTA_TUPLE_REPLY { CTA_TUPLE_IP { V4_SRC, V4_DST | V6_SRC, V6_DST }, CTA_TUPLE_PROTO { NUM, SRC_PORT, DST_PORT } },
/// CTA_STATUS be32 (SEEN_REPLY | ASSURED | CONFIRMED; new entries only), CTA_TIMEOUT be32 seconds,
/// CTA_PROTOINFO { CTA_PROTOINFO_TCP { STATE = ESTABLISHED, FLAGS_ORIGINAL/REPLY = BE_LIBERAL } }   (TCP only)
/// </code>
/// Window tracking is liberal for these entries: the windows of a connection seen elsewhere are not known.
/// </summary>
public static class ConntrackTable
{
    private const ushort MsgNew = 1 << 8 | 0;
    private const ushort TupleOrig = 1, TupleReply = 2, Status = 3, ProtoInfo = 4, Timeout = 7;
    private const ushort TupleIp = 1, TupleProto = 2;
    private const ushort IpV4Src = 1, IpV4Dst = 2, IpV6Src = 3, IpV6Dst = 4;
    private const ushort ProtoNum = 1, ProtoSrcPort = 2, ProtoDstPort = 3;
    private const ushort ProtoInfoTcp = 1, TcpState = 1, TcpFlagsOriginal = 4, TcpFlagsReply = 5;
    private const uint SeenReply = 1 << 1, Assured = 1 << 2, Confirmed = 1 << 3;
    private const byte TcpEstablished = 3, BeLiberal = 0x08;
    private const int ENOENT = 2, EEXIST = 17;

    /// <summary>
    /// Makes each connection established in the table: one the table already holds (from before an earlier switch)
    /// is updated (timeout, liberal windows: its windows went stale while others tracked it; the kernel allows no
    /// status change on a confirmed entry), any other is created. Returns how many connections were handed over.
    /// </summary>
    public static int InsertEstablished(IEnumerable<ConnectionTuple> connections, TimeSpan tcpTimeout, TimeSpan udpTimeout)
    {
        // One entry per connection, whichever direction it was seen in first.
        var unique = new HashSet<ConnectionTuple>();
        foreach (var c in connections)
            if (c.Protocol is 6 or 17 && !unique.Contains(c with { Source = c.Destination, Destination = c.Source, SourcePort = c.DestinationPort, DestinationPort = c.SourcePort }))
                unique.Add(c);
        using var socket = NetlinkSocket.Open(Libc.NETLINK_NETFILTER);
        NetlinkException? first = null;
        foreach (var create in new[] { false, true })
            foreach (var chunk in unique.Chunk(64))
            {
                var batch = chunk.Select(c => (Request(socket.NextSequence(), c, c.Protocol == 6 ? tcpTimeout : udpTimeout, create),
                    $"conntrack {(create ? "create" : "update")} {c.Source}:{c.SourcePort} -> {c.Destination}:{c.DestinationPort}", create ? EEXIST : ENOENT)).ToList();
                // A refusal does not stop the rest: every connection that can be handed over is.
                try { socket.TransactBatch(batch); }
                catch (NetlinkException e) { first ??= e; }
            }
        return first is null ? unique.Count : throw first;
    }

    /// <summary>Without <paramref name="create"/>: an update of the entry if there is one (ENOENT otherwise); with it, a new entry (EEXIST if there is one).</summary>
    internal static NetlinkWriter Request(uint sequence, ConnectionTuple c, TimeSpan timeout, bool create)
    {
        var v4 = c.Source.AddressFamily == AddressFamily.InterNetwork;
        var w = new NetlinkWriter(MsgNew, (ushort)(NetlinkSocket.NLM_F_ACK | (create ? NetlinkSocket.NLM_F_CREATE | NetlinkSocket.NLM_F_EXCL : 0)), sequence);
        var nfgen = w.Struct(4);
        nfgen[0] = (byte)(v4 ? 2 : 10);
        Tuple(w, TupleOrig, c.Source, c.Destination, c.Protocol, c.SourcePort, c.DestinationPort, v4);
        Tuple(w, TupleReply, c.Destination, c.Source, c.Protocol, c.DestinationPort, c.SourcePort, v4);
        Span<byte> be = stackalloc byte[4];
        if (create)
        {
            // The kernel marks a new entry confirmed before it applies the status asked for, and refuses (EBUSY) a status
            // that would clear that bit, so it is asked for too (as libnetfilter_conntrack does).
            BinaryPrimitives.WriteUInt32BigEndian(be, SeenReply | Assured | Confirmed);
            w.Attr(Status, be);
        }
        BinaryPrimitives.WriteUInt32BigEndian(be, (uint)Math.Max(1, timeout.TotalSeconds));
        w.Attr(Timeout, be);
        if (c.Protocol == 6)
        {
            var info = w.BeginNested(ProtoInfo);
            var tcp = w.BeginNested(ProtoInfoTcp);
            w.AttrU8(TcpState, TcpEstablished);
            w.Attr(TcpFlagsOriginal, [BeLiberal, BeLiberal]);
            w.Attr(TcpFlagsReply, [BeLiberal, BeLiberal]);
            w.EndNested(tcp);
            w.EndNested(info);
        }
        return w;
    }

    private static void Tuple(NetlinkWriter w, ushort type, IPAddress src, IPAddress dst, byte protocol, ushort sport, ushort dport, bool v4)
    {
        var tuple = w.BeginNested(type);
        var ip = w.BeginNested(TupleIp);
        w.Attr(v4 ? IpV4Src : IpV6Src, src.GetAddressBytes());
        w.Attr(v4 ? IpV4Dst : IpV6Dst, dst.GetAddressBytes());
        w.EndNested(ip);
        var proto = w.BeginNested(TupleProto);
        w.AttrU8(ProtoNum, protocol);
        w.AttrU16BigEndian(ProtoSrcPort, sport);
        w.AttrU16BigEndian(ProtoDstPort, dport);
        w.EndNested(proto);
        w.EndNested(tuple);
    }
}
