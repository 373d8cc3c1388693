using System.Buffers.Binary;
using System.Net;
using System.Net.NetworkInformation;
using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace Weft.Netlink;

/// <summary>
/// Weft's rtnetlink client: links (veth, bridge, vxlan), addresses, routes, neighbours and FDB entries, for the
/// namespace the socket was opened in. Every call is one request and its acknowledgement; "already gone" is a
/// return value, not an exception, wherever callers need idempotence.
/// </summary>
public sealed class RtNetlink : IDisposable
{
    private const ushort RTM_NEWLINK = 16, RTM_DELLINK = 17, RTM_GETLINK = 18, RTM_SETLINK = 19;
    private const ushort RTM_NEWADDR = 20, RTM_DELADDR = 21, RTM_GETADDR = 22;
    private const ushort RTM_NEWROUTE = 24, RTM_DELROUTE = 25, RTM_GETROUTE = 26;
    private const ushort RTM_NEWNEIGH = 28, RTM_DELNEIGH = 29, RTM_GETNEIGH = 30;
    private const ushort IFLA_ADDRESS = 1, IFLA_IFNAME = 3, IFLA_MTU = 4, IFLA_LINK = 5, IFLA_MASTER = 10, IFLA_LINKINFO = 18, IFLA_NET_NS_FD = 28, IFLA_LINK_NETNSID = 37;
    private const ushort IFLA_INFO_KIND = 1, IFLA_INFO_DATA = 2, VETH_INFO_PEER = 1;
    private const ushort IFLA_VXLAN_ID = 1, IFLA_VXLAN_LINK = 3, IFLA_VXLAN_LOCAL = 4, IFLA_VXLAN_LEARNING = 7, IFLA_VXLAN_PORT = 15, IFLA_VXLAN_LOCAL6 = 17;
    private const ushort IFA_ADDRESS = 1, IFA_LOCAL = 2, IFA_FLAGS = 8;
    private const uint IFA_F_NODAD = 0x02;
    private const ushort RTA_DST = 1, RTA_OIF = 4, RTA_GATEWAY = 5, RTA_PRIORITY = 6, RTA_PREFSRC = 7, RTA_TABLE = 15;
    private const uint RTNH_F_ONLINK = 4;
    private const ushort NDA_DST = 1, NDA_LLADDR = 2;
    private const byte NTF_SELF = 0x02, AF_BRIDGE = 7, RTN_UNICAST = 1;
    private const uint IFF_UP = 1;
    private const int ENODEV = 19, ENOENT = 2, ESRCH = 3, EEXIST = 17, EADDRNOTAVAIL = 99;

    private readonly NetlinkSocket _socket;

    private RtNetlink(NetlinkSocket socket) => _socket = socket;

    /// <summary>A client for the calling thread's network namespace.</summary>
    public static RtNetlink Open() => new(NetlinkSocket.Open());

    /// <summary>A client for another namespace: the socket is opened there, then usable from any thread.</summary>
    public static RtNetlink OpenIn(string netnsPath) => NetNs.Run(netnsPath, Open);

    /// <summary>As <see cref="OpenIn"/>, switching the calling thread instead of starting one (see <see cref="NetNs.RunOnCallingThread"/>).</summary>
    public static RtNetlink OpenInOnCallingThread(string netnsPath) => NetNs.RunOnCallingThread(netnsPath, Open);

    public void Dispose() => _socket.Dispose();

    private List<(NetlinkWriter Request, string Operation, int Tolerated)>? _batch;

    /// <summary>
    /// The changes <paramref name="changes"/> makes (addresses, link flags, routes, neighbours, FDB entries) go to the
    /// kernel together: one datagram, then every acknowledgement. The kernel applies them in order and goes on after
    /// a refusal; the first refusal is thrown once all are read. Lookups and deletes inside a batch are refused.
    /// </summary>
    public void Batch(Action<RtNetlink> changes)
    {
        if (_batch is not null) throw new InvalidOperationException("netlink batches do not nest");
        _batch = [];
        List<(NetlinkWriter, string, int)> batch;
        try { changes(this); }
        finally { batch = _batch; _batch = null; }
        _socket.TransactBatch(batch);
    }

    /// <summary>A change needing no answer: sent now, or queued in the open batch. <paramref name="tolerated"/>: an errno that means "already so".</summary>
    private void Change(NetlinkWriter w, string op, int tolerated = 0)
    {
        if (_batch is not null) { _batch.Add((w, op, tolerated)); return; }
        try { _socket.Transact(w, op); }
        catch (NetlinkException e) when (tolerated != 0 && e.Errno == tolerated) { }
    }

    /// <summary>A request whose answer (or refusal) the caller needs: never inside a batch.</summary>
    private List<byte[]> Exchange(NetlinkWriter w, string op, bool dump = false)
    {
        if (_batch is not null) throw new InvalidOperationException($"{op}: lookups and deletes cannot be batched");
        return _socket.Transact(w, op, dump);
    }

    private NetlinkWriter Request(ushort type, ushort flags) => new(type, (ushort)(flags | NetlinkSocket.NLM_F_ACK), _socket.NextSequence());

    // ---------------------------------------------------------------- links

    /// <summary>
    /// <code>struct ifinfomsg { u8 family; u8 pad; u16 type; s32 index; u32 flags; u32 change; }  // 16 bytes</code>
    /// </summary>
    private static void IfInfo(NetlinkWriter w, int index, uint flags = 0, uint change = 0)
    {
        var s = w.Struct(16);
        BinaryPrimitives.WriteInt32LittleEndian(s[4..], index);
        BinaryPrimitives.WriteUInt32LittleEndian(s[8..], flags);
        BinaryPrimitives.WriteUInt32LittleEndian(s[12..], change);
    }

    public LinkInfo? GetLink(string name)
    {
        var w = Request(RTM_GETLINK, 0);
        IfInfo(w, 0);
        w.AttrString(IFLA_IFNAME, name);
        return TryGetOne(w, $"get link {name}");
    }

    public LinkInfo? GetLink(int index)
    {
        var w = Request(RTM_GETLINK, 0);
        IfInfo(w, index);
        return TryGetOne(w, $"get link #{index}");
    }

    private LinkInfo? TryGetOne(NetlinkWriter w, string op)
    {
        try
        {
            var replies = Exchange(w, op);
            return replies.Count == 0 ? null : ParseLink(replies[0]);
        }
        catch (NetlinkException e) when (e.Errno is ENODEV or ENOENT) { return null; }
    }

    public IReadOnlyList<LinkInfo> ListLinks()
    {
        var w = new NetlinkWriter(RTM_GETLINK, NetlinkSocket.NLM_F_DUMP, _socket.NextSequence());
        IfInfo(w, 0);
        return Exchange(w, "list links", dump: true).Select(ParseLink).OfType<LinkInfo>().ToList();
    }

    internal static LinkInfo? ParseLink(byte[] msg)
    {
        if (msg.Length < 32) return null;
        var body = msg.AsSpan(16);
        var index = BinaryPrimitives.ReadInt32LittleEndian(body[4..]);
        var flags = BinaryPrimitives.ReadUInt32LittleEndian(body[8..]);
        string name = "";
        string? kind = null;
        int mtu = 0, master = 0, peer = 0;
        int? netnsId = null;
        PhysicalAddress? mac = null;
        var attrs = new AttributeReader(body[16..]);
        while (attrs.Next())
        {
            switch (attrs.Type)
            {
                case IFLA_IFNAME: name = attrs.String; break;
                case IFLA_MTU: mtu = (int)attrs.U32; break;
                case IFLA_MASTER: master = (int)attrs.U32; break;
                case IFLA_LINK: peer = (int)attrs.U32; break;
                case IFLA_LINK_NETNSID: netnsId = (int)attrs.U32; break;
                case IFLA_ADDRESS when attrs.Value.Length == 6: mac = new PhysicalAddress(attrs.Value.ToArray()); break;
                case IFLA_LINKINFO:
                    var info = new AttributeReader(attrs.Value);
                    while (info.Next()) if (info.Type == IFLA_INFO_KIND) kind = info.String;
                    break;
            }
        }
        return new LinkInfo(index, name, kind, mtu, mac, (flags & IFF_UP) != 0, master, peer, netnsId);
    }

    /// <summary>
    /// A veth pair, the peer moved to <paramref name="peerNetns"/>; <paramref name="up"/> brings this end up in the same
    /// request (not the peer: the kernel opens the peer before the pair is linked, and refuses with ENOTCONN).
    /// </summary>
    public LinkInfo CreateVeth(string name, string peerName, SafeHandle? peerNetns, int mtu, PhysicalAddress? mac, PhysicalAddress? peerMac, bool up = false)
    {
        var op = $"create veth {name} (peer {peerName})";
        var w = Request(RTM_NEWLINK, NetlinkSocket.NLM_F_CREATE | NetlinkSocket.NLM_F_EXCL);
        var upFlags = up ? IFF_UP : 0;
        IfInfo(w, 0, upFlags, upFlags);
        w.AttrString(IFLA_IFNAME, name);
        if (mtu > 0) w.AttrU32(IFLA_MTU, (uint)mtu);
        if (mac is not null) w.Attr(IFLA_ADDRESS, mac.GetAddressBytes());
        var linkInfo = w.BeginNested(IFLA_LINKINFO);
        w.AttrString(IFLA_INFO_KIND, "veth");
        var data = w.BeginNested(IFLA_INFO_DATA);
        var peer = w.BeginNested(VETH_INFO_PEER);
        IfInfo(w, 0);
        w.AttrString(IFLA_IFNAME, peerName);
        if (mtu > 0) w.AttrU32(IFLA_MTU, (uint)mtu);
        if (peerMac is not null) w.Attr(IFLA_ADDRESS, peerMac.GetAddressBytes());
        var added = false;
        try
        {
            if (peerNetns is not null)
            {
                peerNetns.DangerousAddRef(ref added);
                w.AttrU32(IFLA_NET_NS_FD, (uint)peerNetns.DangerousGetHandle());
            }
            w.EndNested(peer);
            w.EndNested(data);
            w.EndNested(linkInfo);
            Exchange(w, op);
        }
        finally
        {
            if (added) peerNetns!.DangerousRelease();
        }
        return GetLink(name) ?? throw new NetlinkException(op + ": created but not found", ENODEV);
    }

    public LinkInfo CreateBridge(string name, int mtu, PhysicalAddress? mac) => CreateSimple(name, "bridge", mtu, mac);

    private LinkInfo CreateSimple(string name, string kind, int mtu, PhysicalAddress? mac)
    {
        var op = $"create {kind} {name}";
        var w = Request(RTM_NEWLINK, NetlinkSocket.NLM_F_CREATE | NetlinkSocket.NLM_F_EXCL);
        IfInfo(w, 0);
        w.AttrString(IFLA_IFNAME, name);
        if (mtu > 0) w.AttrU32(IFLA_MTU, (uint)mtu);
        if (mac is not null) w.Attr(IFLA_ADDRESS, mac.GetAddressBytes());
        var li = w.BeginNested(IFLA_LINKINFO);
        w.AttrString(IFLA_INFO_KIND, kind);
        w.EndNested(li);
        Exchange(w, op);
        return GetLink(name) ?? throw new NetlinkException(op + ": created but not found", ENODEV);
    }

    public LinkInfo CreateVxlan(VxlanSpec spec)
    {
        var op = $"create vxlan {spec.Name} (vni {spec.Vni})";
        var w = Request(RTM_NEWLINK, NetlinkSocket.NLM_F_CREATE | NetlinkSocket.NLM_F_EXCL);
        IfInfo(w, 0);
        w.AttrString(IFLA_IFNAME, spec.Name);
        if (spec.Mtu > 0) w.AttrU32(IFLA_MTU, (uint)spec.Mtu);
        if (spec.Mac is not null) w.Attr(IFLA_ADDRESS, spec.Mac.GetAddressBytes());
        var li = w.BeginNested(IFLA_LINKINFO);
        w.AttrString(IFLA_INFO_KIND, "vxlan");
        var data = w.BeginNested(IFLA_INFO_DATA);
        w.AttrU32(IFLA_VXLAN_ID, (uint)spec.Vni);
        if (spec.UnderlayIndex > 0) w.AttrU32(IFLA_VXLAN_LINK, (uint)spec.UnderlayIndex);
        if (spec.Local is { } local)
            w.Attr(local.AddressFamily == AddressFamily.InterNetwork ? IFLA_VXLAN_LOCAL : IFLA_VXLAN_LOCAL6, local.GetAddressBytes());
        w.AttrU8(IFLA_VXLAN_LEARNING, spec.Learning ? (byte)1 : (byte)0);
        if (spec.Port > 0) w.AttrU16BigEndian(IFLA_VXLAN_PORT, (ushort)spec.Port);
        w.EndNested(data);
        w.EndNested(li);
        Exchange(w, op);
        return GetLink(spec.Name) ?? throw new NetlinkException(op + ": created but not found", ENODEV);
    }

    public void SetUp(int index) => SetLink(index, w => { }, IFF_UP, IFF_UP, $"set link #{index} up");

    public void SetDown(int index) => SetLink(index, w => { }, 0, IFF_UP, $"set link #{index} down");

    public void SetMtu(int index, int mtu) => SetLink(index, w => w.AttrU32(IFLA_MTU, (uint)mtu), 0, 0, $"set link #{index} mtu {mtu}");

    public void SetMaster(int index, int masterIndex) => SetLink(index, w => w.AttrU32(IFLA_MASTER, (uint)masterIndex), 0, 0, $"set link #{index} master #{masterIndex}");

    private void SetLink(int index, Action<NetlinkWriter> attrs, uint flags, uint change, string op)
    {
        var w = Request(RTM_NEWLINK, 0);
        IfInfo(w, index, flags, change);
        attrs(w);
        Change(w, op);
    }

    public bool DeleteLink(int index)
    {
        var w = Request(RTM_DELLINK, 0);
        IfInfo(w, index);
        try { Exchange(w, $"delete link #{index}"); return true; }
        catch (NetlinkException e) when (e.Errno is ENODEV or ENOENT) { return false; }
    }

    public bool DeleteLink(string name)
    {
        var w = Request(RTM_DELLINK, 0);
        IfInfo(w, 0);
        w.AttrString(IFLA_IFNAME, name);
        try { Exchange(w, $"delete link {name}"); return true; }
        catch (NetlinkException e) when (e.Errno is ENODEV or ENOENT) { return false; }
    }

    // ---------------------------------------------------------------- addresses

    /// <summary><code>struct ifaddrmsg { u8 family; u8 prefixlen; u8 flags; u8 scope; u32 index; }  // 8 bytes</code></summary>
    private static void IfAddr(NetlinkWriter w, AddressFamily family, int prefix, int index)
    {
        var s = w.Struct(8);
        s[0] = Family(family);
        s[1] = (byte)prefix;
        BinaryPrimitives.WriteInt32LittleEndian(s[4..], index);
    }

    public void AddAddress(int index, IPAddress address, int prefixLength, bool noDad = false)
    {
        var op = $"add address {address}/{prefixLength} to link #{index}";
        var w = Request(RTM_NEWADDR, NetlinkSocket.NLM_F_CREATE | NetlinkSocket.NLM_F_EXCL);
        IfAddr(w, address.AddressFamily, prefixLength, index);
        var bytes = address.GetAddressBytes();
        w.Attr(IFA_LOCAL, bytes);
        w.Attr(IFA_ADDRESS, bytes);
        if (noDad) w.AttrU32(IFA_FLAGS, IFA_F_NODAD);
        Change(w, op, tolerated: EEXIST);
    }

    public bool DeleteAddress(int index, IPAddress address, int prefixLength)
    {
        var w = Request(RTM_DELADDR, 0);
        IfAddr(w, address.AddressFamily, prefixLength, index);
        w.Attr(IFA_LOCAL, address.GetAddressBytes());
        try { Exchange(w, $"delete address {address}/{prefixLength} from link #{index}"); return true; }
        catch (NetlinkException e) when (e.Errno is EADDRNOTAVAIL or ENODEV or ENOENT) { return false; }
    }

    public IReadOnlyList<AddressInfo> ListAddresses(int index = 0)
    {
        var w = new NetlinkWriter(RTM_GETADDR, NetlinkSocket.NLM_F_DUMP, _socket.NextSequence());
        w.Struct(8);
        var result = new List<AddressInfo>();
        foreach (var msg in Exchange(w, "list addresses", dump: true))
        {
            if (msg.Length < 24) continue;
            var body = msg.AsSpan(16);
            var family = body[0];
            var prefix = body[1];
            uint flags = body[2];
            var scope = body[3];
            var idx = BinaryPrimitives.ReadInt32LittleEndian(body[4..]);
            if (index != 0 && idx != index) continue;
            IPAddress? local = null, addr = null;
            var attrs = new AttributeReader(body[8..]);
            while (attrs.Next())
            {
                if (attrs.Type == IFA_LOCAL) local = ToAddress(family, attrs.Value);
                else if (attrs.Type == IFA_ADDRESS) addr = ToAddress(family, attrs.Value);
                else if (attrs.Type == IFA_FLAGS) flags = attrs.U32;
            }
            if ((local ?? addr) is { } a) result.Add(new AddressInfo(idx, a, prefix, scope, flags));
        }
        return result;
    }

    // ---------------------------------------------------------------- routes

    /// <summary>
    /// <code>struct rtmsg { u8 family, dst_len, src_len, tos, table, protocol, scope, type; u32 flags; }  // 12 bytes</code>
    /// </summary>
    private static void RtMsg(NetlinkWriter w, RouteSpec r, bool forDelete)
    {
        var s = w.Struct(12);
        s[0] = Family(r.Family);
        s[1] = (byte)r.PrefixLength;
        s[4] = r.Table < 256 ? (byte)r.Table : (byte)252;
        s[5] = forDelete ? (byte)0 : r.Protocol;
        s[6] = forDelete ? (byte)255 /* RT_SCOPE_NOWHERE: any */ : (byte)r.Scope;
        s[7] = r.Type;
        if (r.OnLink) BinaryPrimitives.WriteUInt32LittleEndian(s[8..], RTNH_F_ONLINK);
        if (r.PrefixLength > 0) w.Attr(RTA_DST, r.Destination.GetAddressBytes());
        if (r.Table >= 256) w.AttrU32(RTA_TABLE, (uint)r.Table);
        if (r.OutputIndex > 0) w.AttrU32(RTA_OIF, (uint)r.OutputIndex);
        if (r.Gateway is not null) w.Attr(RTA_GATEWAY, r.Gateway.GetAddressBytes());
        if (r.Priority > 0) w.AttrU32(RTA_PRIORITY, (uint)r.Priority);
        if (r.PreferredSource is not null) w.Attr(RTA_PREFSRC, r.PreferredSource.GetAddressBytes());
    }

    public void ReplaceRoute(RouteSpec route)
    {
        var w = Request(RTM_NEWROUTE, NetlinkSocket.NLM_F_CREATE | NetlinkSocket.NLM_F_REPLACE);
        RtMsg(w, route, forDelete: false);
        Change(w, $"replace route {route.Destination}/{route.PrefixLength} via {route.Gateway?.ToString() ?? "-"} dev #{route.OutputIndex}");
    }

    public bool DeleteRoute(RouteSpec route)
    {
        var w = Request(RTM_DELROUTE, 0);
        RtMsg(w, route, forDelete: true);
        try { Exchange(w, $"delete route {route.Destination}/{route.PrefixLength}"); return true; }
        catch (NetlinkException e) when (e.Errno is ESRCH or ENOENT or ENODEV) { return false; }
    }

    public IReadOnlyList<RouteInfo> ListRoutes(AddressFamily family, int table = 254)
    {
        var w = new NetlinkWriter(RTM_GETROUTE, NetlinkSocket.NLM_F_DUMP, _socket.NextSequence());
        var s = w.Struct(12);
        s[0] = Family(family);
        var result = new List<RouteInfo>();
        foreach (var msg in Exchange(w, "list routes", dump: true))
        {
            if (msg.Length < 28) continue;
            var body = msg.AsSpan(16);
            var fam = body[0];
            int tbl = body[4];
            var flags = BinaryPrimitives.ReadUInt32LittleEndian(body[8..]);
            IPAddress? dst = null, gw = null;
            var oif = 0;
            var attrs = new AttributeReader(body[12..]);
            while (attrs.Next())
            {
                switch (attrs.Type)
                {
                    case RTA_DST: dst = ToAddress(fam, attrs.Value); break;
                    case RTA_GATEWAY: gw = ToAddress(fam, attrs.Value); break;
                    case RTA_OIF: oif = (int)attrs.U32; break;
                    case RTA_TABLE: tbl = (int)attrs.U32; break;
                }
            }
            if (tbl != table) continue;
            dst ??= fam == 2 ? IPAddress.Any : IPAddress.IPv6Any;
            result.Add(new RouteInfo(dst, body[1], gw, oif, (RouteScope)body[6], tbl, body[5], body[7], (flags & RTNH_F_ONLINK) != 0));
        }
        return result;
    }

    // ---------------------------------------------------------------- neighbours and FDB

    /// <summary><code>struct ndmsg { u8 family; u8 pad1; u16 pad2; s32 ifindex; u16 state; u8 flags; u8 type; }  // 12 bytes</code></summary>
    private static void NdMsg(NetlinkWriter w, byte family, int index, ushort state, byte flags)
    {
        var s = w.Struct(12);
        s[0] = family;
        BinaryPrimitives.WriteInt32LittleEndian(s[4..], index);
        BinaryPrimitives.WriteUInt16LittleEndian(s[8..], state);
        s[10] = flags;
    }

    public void ReplaceNeighbour(int index, IPAddress ip, PhysicalAddress mac, NeighbourState state = NeighbourState.Permanent)
    {
        var w = Request(RTM_NEWNEIGH, NetlinkSocket.NLM_F_CREATE | NetlinkSocket.NLM_F_REPLACE);
        NdMsg(w, Family(ip.AddressFamily), index, (ushort)state, 0);
        w.Attr(NDA_DST, ip.GetAddressBytes());
        w.Attr(NDA_LLADDR, mac.GetAddressBytes());
        Change(w, $"replace neighbour {ip} lladdr {mac} dev #{index}");
    }

    public bool DeleteNeighbour(int index, IPAddress ip)
    {
        var w = Request(RTM_DELNEIGH, 0);
        NdMsg(w, Family(ip.AddressFamily), index, 0, 0);
        w.Attr(NDA_DST, ip.GetAddressBytes());
        try { Exchange(w, $"delete neighbour {ip} dev #{index}"); return true; }
        catch (NetlinkException e) when (e.Errno is ENOENT or ENODEV or ESRCH) { return false; }
    }

    public IReadOnlyList<NeighbourInfo> ListNeighbours(int index, AddressFamily family)
    {
        var w = new NetlinkWriter(RTM_GETNEIGH, NetlinkSocket.NLM_F_DUMP, _socket.NextSequence());
        NdMsg(w, Family(family), 0, 0, 0);
        var result = new List<NeighbourInfo>();
        foreach (var msg in Exchange(w, "list neighbours", dump: true))
        {
            if (msg.Length < 28) continue;
            var body = msg.AsSpan(16);
            var idx = BinaryPrimitives.ReadInt32LittleEndian(body[4..]);
            if (index != 0 && idx != index) continue;
            var state = (NeighbourState)BinaryPrimitives.ReadUInt16LittleEndian(body[8..]);
            IPAddress? dst = null;
            PhysicalAddress? mac = null;
            var attrs = new AttributeReader(body[12..]);
            while (attrs.Next())
            {
                if (attrs.Type == NDA_DST) dst = ToAddress(body[0], attrs.Value);
                else if (attrs.Type == NDA_LLADDR && attrs.Value.Length == 6) mac = new PhysicalAddress(attrs.Value.ToArray());
            }
            if (dst is not null) result.Add(new NeighbourInfo(idx, dst, mac, state));
        }
        return result;
    }

    public void AppendFdb(int vxlanIndex, PhysicalAddress mac, IPAddress destination)
    {
        var w = Request(RTM_NEWNEIGH, NetlinkSocket.NLM_F_CREATE | NetlinkSocket.NLM_F_APPEND);
        NdMsg(w, AF_BRIDGE, vxlanIndex, (ushort)NeighbourState.Permanent, NTF_SELF);
        w.Attr(NDA_LLADDR, mac.GetAddressBytes());
        w.Attr(NDA_DST, destination.GetAddressBytes());
        Change(w, $"append fdb {mac} dst {destination} dev #{vxlanIndex}", tolerated: EEXIST);
    }

    public bool DeleteFdb(int vxlanIndex, PhysicalAddress mac, IPAddress destination)
    {
        var w = Request(RTM_DELNEIGH, 0);
        NdMsg(w, AF_BRIDGE, vxlanIndex, 0, NTF_SELF);
        w.Attr(NDA_LLADDR, mac.GetAddressBytes());
        w.Attr(NDA_DST, destination.GetAddressBytes());
        try { Exchange(w, $"delete fdb {mac} dst {destination} dev #{vxlanIndex}"); return true; }
        catch (NetlinkException e) when (e.Errno is ENOENT or ENODEV) { return false; }
    }

    public IReadOnlyList<FdbEntry> ListFdb(int vxlanIndex)
    {
        var w = new NetlinkWriter(RTM_GETNEIGH, NetlinkSocket.NLM_F_DUMP, _socket.NextSequence());
        NdMsg(w, AF_BRIDGE, 0, 0, 0);
        var result = new List<FdbEntry>();
        foreach (var msg in Exchange(w, "list fdb", dump: true))
        {
            if (msg.Length < 28) continue;
            var body = msg.AsSpan(16);
            if (BinaryPrimitives.ReadInt32LittleEndian(body[4..]) != vxlanIndex) continue;
            PhysicalAddress? mac = null;
            IPAddress? dst = null;
            var attrs = new AttributeReader(body[12..]);
            while (attrs.Next())
            {
                if (attrs.Type == NDA_LLADDR && attrs.Value.Length == 6) mac = new PhysicalAddress(attrs.Value.ToArray());
                else if (attrs.Type == NDA_DST) dst = attrs.Value.Length == 4 ? new IPAddress(attrs.Value) : attrs.Value.Length == 16 ? new IPAddress(attrs.Value) : null;
            }
            if (mac is not null) result.Add(new FdbEntry(mac, dst));
        }
        return result;
    }

    // ---------------------------------------------------------------- helpers

    private static byte Family(AddressFamily f) => f == AddressFamily.InterNetwork ? (byte)2 : (byte)10;

    private static IPAddress? ToAddress(byte family, ReadOnlySpan<byte> v) =>
        family == 2 && v.Length == 4 ? new IPAddress(v) : family == 10 && v.Length == 16 ? new IPAddress(v) : null;
}
