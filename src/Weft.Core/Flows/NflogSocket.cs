using System.Buffers.Binary;
using System.Net;
using Weft.Native;
using Weft.Netlink;

namespace Weft.Flows;

/// <summary>What the IP and transport headers of one packet say (the part of a packet a flow needs).</summary>
public readonly record struct PacketHeaders(int IpVersion, IPAddress Source, IPAddress Destination, int Protocol,
    ushort SourcePort, ushort DestinationPort, byte TcpFlags, byte IcmpType, byte IcmpCode)
{
    /// <summary>Reads an IPv4 or IPv6 packet's headers; false for anything truncated or not IP. Never reads past the span.</summary>
    public static bool TryParse(ReadOnlySpan<byte> packet, out PacketHeaders headers)
    {
        headers = default;
        if (packet.Length < 1) return false;
        int version = packet[0] >> 4, protocol, l4;
        IPAddress src, dst;
        if (version == 4)
        {
            var ihl = (packet[0] & 0x0f) * 4;
            if (ihl < 20 || packet.Length < ihl) return false;
            protocol = packet[9];
            src = new IPAddress(packet.Slice(12, 4));
            dst = new IPAddress(packet.Slice(16, 4));
            // Only the first fragment carries the transport header.
            var fragmentOffset = BinaryPrimitives.ReadUInt16BigEndian(packet[6..]) & 0x1fff;
            l4 = fragmentOffset == 0 ? ihl : -1;
        }
        else if (version == 6)
        {
            if (packet.Length < 40) return false;
            protocol = packet[6];
            src = new IPAddress(packet.Slice(8, 16));
            dst = new IPAddress(packet.Slice(24, 16));
            l4 = 40;
            // Skip the common extension headers (hop-by-hop, routing, destination options; a fragment header ends the walk).
            for (var hops = 0; hops < 8 && protocol is 0 or 43 or 60 && l4 + 8 <= packet.Length; hops++)
            {
                protocol = packet[l4];
                l4 += (packet[l4 + 1] + 1) * 8;
            }
            if (protocol == 44) l4 = -1;
        }
        else return false;
        ushort sport = 0, dport = 0;
        byte flags = 0, icmpType = 0, icmpCode = 0;
        if (l4 >= 0 && l4 <= packet.Length)
        {
            var t = packet[l4..];
            if (protocol is 6 or 17 or 132 or 136 && t.Length >= 4)
            {
                sport = BinaryPrimitives.ReadUInt16BigEndian(t);
                dport = BinaryPrimitives.ReadUInt16BigEndian(t[2..]);
                if (protocol == 6 && t.Length >= 14) flags = t[13];
            }
            else if (protocol is 1 or 58 && t.Length >= 2)
            {
                icmpType = t[0];
                icmpCode = t[1];
            }
        }
        headers = new PacketHeaders(version, src, dst, protocol, sport, dport, flags, icmpType, icmpCode);
        return true;
    }
}

/// <summary>One packet the nftables dataplane logged: the rule's prefix, when, on which interfaces, and its headers.</summary>
public readonly record struct LoggedPacket(string Prefix, long TimeUnixNano, uint InInterface, uint OutInterface, PacketHeaders Headers);

/// <summary>
/// A subscriber to one NFLOG group (nfnetlink_log): the packets `log group N` rules send, with their prefix. The
/// kernel batches up to <c>queueThreshold</c> packets per message or flushes after <c>flushTimeout</c>, which is what
/// lets one reader keep up with a flood; what does not fit the socket buffer is dropped by the kernel and counted
/// in <see cref="TakeLost"/>.
/// <code>
/// nlmsghdr, type = NFNL_SUBSYS_ULOG(4) &lt;&lt; 8 | NFULNL_MSG_PACKET(0) or MSG_CONFIG(1)
/// struct nfgenmsg { u8 family; u8 version; __be16 res_id /* the group */ }, then attributes
/// </code>
/// </summary>
public sealed class NflogSocket : IDisposable
{
    private const ushort MsgPacket = 4 << 8 | 0, MsgConfig = 4 << 8 | 1;
    private const ushort CfgCmd = 1, CfgMode = 2, CfgNlBufSize = 3, CfgTimeout = 4, CfgQThreshold = 5;
    private const byte CmdBind = 1, CopyPacket = 2;
    private const ushort AttrPacketHdr = 1, AttrTimestamp = 3, AttrInDev = 4, AttrOutDev = 5, AttrPayload = 9, AttrPrefix = 10;

    private readonly NetlinkSocket _socket;
    private readonly Dictionary<int, string> _prefixes = []; // prefixes repeat: keep one string per distinct text

    public ushort Group { get; }
    private long _lost;

    /// <summary>Times the kernel reported dropping events (ENOBUFS; each may stand for many) since the last call.</summary>
    public long TakeLost()
    {
        var n = _lost;
        _lost = 0;
        return n;
    }

    private NflogSocket(NetlinkSocket socket, ushort group)
    {
        _socket = socket;
        Group = group;
    }

    /// <param name="copyRange">bytes of each packet copied (enough for IPv6 + extension headers + TCP)</param>
    public static NflogSocket Open(ushort group, int copyRange = 128, int queueThreshold = 64, TimeSpan? flushTimeout = null, int receiveBufferBytes = 8 << 20)
    {
        var socket = NetlinkSocket.Open(Libc.NETLINK_NETFILTER);
        try
        {
            socket.ConfigureForEvents(receiveBufferBytes, TimeSpan.FromMilliseconds(250));
            Config(socket, group, w => w.Attr(CfgCmd, [CmdBind]), "bind NFLOG group " + group);
            Config(socket, group, w =>
            {
                Span<byte> mode = stackalloc byte[6]; // struct nfulnl_msg_config_mode { __be32 copy_range; u8 copy_mode; u8 pad; }
                mode.Clear();
                BinaryPrimitives.WriteUInt32BigEndian(mode, (uint)copyRange);
                mode[4] = CopyPacket;
                w.Attr(CfgMode, mode);
                w.Attr(CfgQThreshold, BigEndian((uint)queueThreshold));
                w.Attr(CfgTimeout, BigEndian((uint)Math.Max(1, (flushTimeout ?? TimeSpan.FromMilliseconds(50)).TotalMilliseconds / 10))); // hundredths of a second
                w.Attr(CfgNlBufSize, BigEndian(128 * 1024));
            }, "configure NFLOG group " + group);
            return new NflogSocket(socket, group);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    private static byte[] BigEndian(uint v)
    {
        var b = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(b, v);
        return b;
    }

    private static void Config(NetlinkSocket socket, ushort group, Action<NetlinkWriter> attrs, string operation)
    {
        var w = new NetlinkWriter(MsgConfig, NetlinkSocket.NLM_F_ACK, socket.NextSequence());
        var hdr = w.Struct(4);
        hdr[0] = 0; // AF_UNSPEC
        hdr[1] = 0; // NFNETLINK_V0
        BinaryPrimitives.WriteUInt16BigEndian(hdr[2..], group);
        attrs(w);
        socket.Transact(w, operation);
    }

    /// <summary>
    /// Waits up to the socket's timeout for the next batch and appends its packets to <paramref name="into"/>;
    /// returns how many were added (0 on timeout).
    /// </summary>
    public int Receive(List<LoggedPacket> into)
    {
        var n = _socket.ReceiveEvents(out var data);
        if (n < 0)
        {
            _lost++;
            return 0;
        }
        return Decode(data, into, _prefixes);
    }

    /// <summary>Decodes a buffer of NFLOG packet messages; malformed messages are skipped, never read past.</summary>
    public static int Decode(ReadOnlySpan<byte> data, List<LoggedPacket> into, Dictionary<int, string>? prefixCache = null)
    {
        var added = 0;
        var messages = new MessageReader(data);
        while (messages.Next())
        {
            var msg = messages.Payload;
            if (messages.Type != MsgPacket || msg.Length < 4) continue;
            var attrs = new AttributeReader(msg[4..]);
            string? prefix = null;
            long time = 0;
            uint inDev = 0, outDev = 0;
            ReadOnlySpan<byte> payload = default;
            while (attrs.Next())
            {
                switch (attrs.Type)
                {
                    case AttrPrefix: prefix = PrefixText(attrs.Value, prefixCache); break;
                    case AttrTimestamp when attrs.Value.Length >= 16:
                        time = (long)BinaryPrimitives.ReadUInt64BigEndian(attrs.Value) * 1_000_000_000 + (long)BinaryPrimitives.ReadUInt64BigEndian(attrs.Value[8..]) * 1000;
                        break;
                    case AttrInDev when attrs.Value.Length >= 4: inDev = BinaryPrimitives.ReadUInt32BigEndian(attrs.Value); break;
                    case AttrOutDev when attrs.Value.Length >= 4: outDev = BinaryPrimitives.ReadUInt32BigEndian(attrs.Value); break;
                    case AttrPayload: payload = attrs.Value; break;
                }
            }
            if (prefix is null || !PacketHeaders.TryParse(payload, out var headers)) continue;
            if (time == 0) time = FlowText.UnixNano(DateTime.UtcNow);
            into.Add(new LoggedPacket(prefix, time, inDev, outDev, headers));
            added++;
        }
        return added;
    }

    private static string PrefixText(ReadOnlySpan<byte> value, Dictionary<int, string>? cache)
    {
        var z = value.IndexOf((byte)0);
        if (z >= 0) value = value[..z];
        if (cache is null) return System.Text.Encoding.ASCII.GetString(value);
        var hash = 2166136261u;
        foreach (var b in value) hash = (hash ^ b) * 16777619u;
        if (cache.TryGetValue((int)hash, out var s) && s.Length == value.Length && Same(s, value)) return s;
        s = System.Text.Encoding.ASCII.GetString(value);
        if (cache.Count > 4096) cache.Clear();
        cache[(int)hash] = s;
        return s;
    }

    private static bool Same(string s, ReadOnlySpan<byte> bytes)
    {
        for (var i = 0; i < s.Length; i++) if (s[i] != bytes[i]) return false;
        return true;
    }

    public void Dispose() => _socket.Dispose();
}
