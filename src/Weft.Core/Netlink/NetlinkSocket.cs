using System.Buffers.Binary;
using System.Runtime.InteropServices;
using Weft.Native;

namespace Weft.Netlink;

/// <summary>A kernel refusal: the operation, the object, and errno as a name and text.</summary>
public sealed class NetlinkException(string operation, int errno)
    : Exception($"{operation}: {Marshal.GetPInvokeErrorMessage(errno)} ({ErrnoName(errno)})")
{
    public int Errno { get; } = errno;
    public string Operation { get; } = operation;

    public static string ErrnoName(int errno) => errno switch
    {
        1 => "EPERM", 2 => "ENOENT", 3 => "ESRCH", 4 => "EINTR", 12 => "ENOMEM", 13 => "EACCES", 16 => "EBUSY", 17 => "EEXIST",
        19 => "ENODEV", 22 => "EINVAL", 34 => "ERANGE", 61 => "ENODATA", 95 => "EOPNOTSUPP", 97 => "EAFNOSUPPORT", 99 => "EADDRNOTAVAIL",
        101 => "ENETUNREACH", 105 => "ENOBUFS", _ => "errno " + errno,
    };
}

/// <summary>
/// One NETLINK_ROUTE socket: sends a request and collects the replies that carry its sequence number, up to the
/// ack (NLMSG_ERROR) or, for dumps, NLMSG_DONE.
/// <code>
/// struct nlmsghdr { u32 len; u16 type; u16 flags; u32 seq; u32 pid; }   // 16 bytes, then the payload, 4-aligned
/// </code>
/// </summary>
internal sealed class NetlinkSocket : IDisposable
{
    public const ushort NLMSG_ERROR = 2, NLMSG_DONE = 3;
    public const ushort NLM_F_REQUEST = 0x1, NLM_F_MULTI = 0x2, NLM_F_ACK = 0x4, NLM_F_DUMP = 0x300;
    public const ushort NLM_F_REPLACE = 0x100, NLM_F_EXCL = 0x200, NLM_F_CREATE = 0x400, NLM_F_APPEND = 0x800;
    private const int SOL_NETLINK = 270, NETLINK_EXT_ACK = 11, SOL_SOCKET = 1, SO_RCVBUF = 8;

    private readonly NetlinkSocketHandle _fd;
    // Uninitialised: a zeroed 256 KiB buffer cost a large-object memset per socket, several per pod ADD.
    private readonly byte[] _rx = GC.AllocateUninitializedArray<byte>(1 << 18);
    private uint _seq = (uint)Environment.TickCount;
    private readonly Lock _lock = new();

    private NetlinkSocket(NetlinkSocketHandle fd) => _fd = fd;

    public static unsafe NetlinkSocket Open(int protocol = Libc.NETLINK_ROUTE, uint groups = 0)
    {
        NetNs.ThrowIfStranded();
        var fd = Libc.socket(Libc.AF_NETLINK, Libc.SOCK_RAW | Libc.SOCK_CLOEXEC, protocol);
        if (fd < 0) throw new NetlinkException("open netlink socket", Marshal.GetLastPInvokeError());
        var handle = new NetlinkSocketHandle(fd);
        // struct sockaddr_nl { u16 family; u16 pad; u32 pid; u32 groups; }
        var addr = stackalloc byte[12];
        new Span<byte>(addr, 12).Clear();
        BinaryPrimitives.WriteUInt16LittleEndian(new Span<byte>(addr, 2), Libc.AF_NETLINK);
        BinaryPrimitives.WriteUInt32LittleEndian(new Span<byte>(addr + 8, 4), groups);
        if (Libc.bind(handle, addr, 12) != 0)
        {
            var errno = Marshal.GetLastPInvokeError();
            handle.Dispose();
            throw new NetlinkException("bind netlink socket", errno);
        }
        var one = 1;
        _ = Libc.setsockopt(handle, SOL_NETLINK, NETLINK_EXT_ACK, &one, 4);
        var rcv = 1 << 20;
        _ = Libc.setsockopt(handle, SOL_SOCKET, SO_RCVBUF, &rcv, 4);
        return new NetlinkSocket(handle);
    }

    public uint NextSequence() => unchecked(++_seq);

    /// <summary>Sends one built request and returns the reply messages (headers included), throwing on a kernel error.</summary>
    public List<byte[]> Transact(NetlinkWriter request, string operation, bool dump = false)
    {
        lock (_lock)
        {
            var seq = request.Sequence;
            SendAll(request.Written, operation);
            var replies = new List<byte[]>();
            while (true)
            {
                ReadOnlySpan<byte> buf = _rx.AsSpan(0, Receive(operation));
                var off = 0;
                while (NextMessage(buf, ref off, operation, out var type, out var msgSeq, out var msg))
                {
                    if (msgSeq != seq) continue; // a late reply to an earlier, abandoned request
                    if (type == NLMSG_ERROR)
                    {
                        if (msg.Length < 20) throw new InvalidDataException($"{operation}: truncated netlink error");
                        var error = BinaryPrimitives.ReadInt32LittleEndian(msg[16..]);
                        if (error != 0) throw new NetlinkException(operation, -error);
                        return replies;
                    }
                    if (type == NLMSG_DONE) return replies;
                    replies.Add(msg.ToArray());
                }
            }
        }
    }

    /// <summary>
    /// Several requests (each with NLM_F_ACK) in one datagram; waits for every acknowledgement, then throws the first
    /// refusal in request order unless its errno is that request's tolerated one.
    /// </summary>
    public void TransactBatch(IReadOnlyList<(NetlinkWriter Request, string Operation, int Tolerated)> batch)
    {
        if (batch.Count == 0) return;
        lock (_lock)
        {
            var total = 0;
            foreach (var b in batch) total += b.Request.Written.Length;
            var datagram = new byte[total];
            var at = 0;
            foreach (var b in batch)
            {
                b.Request.Written.CopyTo(datagram.AsSpan(at));
                at += b.Request.Written.Length;
            }
            SendAll(datagram, batch[0].Operation);
            var acked = new bool[batch.Count];
            var pending = batch.Count;
            NetlinkException? first = null;
            var firstIndex = int.MaxValue;
            while (pending > 0)
            {
                ReadOnlySpan<byte> buf = _rx.AsSpan(0, Receive(batch[0].Operation));
                var off = 0;
                while (NextMessage(buf, ref off, batch[0].Operation, out var type, out var msgSeq, out var msg))
                {
                    if (type != NLMSG_ERROR) continue;
                    var i = 0;
                    while (i < batch.Count && batch[i].Request.Sequence != msgSeq) i++;
                    if (i == batch.Count || acked[i]) continue; // a late reply to an earlier, abandoned request
                    if (msg.Length < 20) throw new InvalidDataException($"{batch[i].Operation}: truncated netlink error");
                    acked[i] = true;
                    pending--;
                    var error = -BinaryPrimitives.ReadInt32LittleEndian(msg[16..]);
                    if (error != 0 && error != batch[i].Tolerated && i < firstIndex)
                    {
                        first = new NetlinkException(batch[i].Operation, error);
                        firstIndex = i;
                    }
                }
            }
            if (first is not null) throw first;
        }
    }

    /// <summary>The next message of a received datagram (header checked), advancing <paramref name="off"/>; false at its end.</summary>
    private static bool NextMessage(ReadOnlySpan<byte> buf, ref int off, string operation, out ushort type, out uint seq, out ReadOnlySpan<byte> msg)
    {
        type = 0;
        seq = 0;
        msg = default;
        if (off + 16 > buf.Length) return false;
        var len = (int)BinaryPrimitives.ReadUInt32LittleEndian(buf[off..]);
        if (len < 16 || off + len > buf.Length) throw new InvalidDataException($"{operation}: malformed netlink reply (length {len})");
        type = BinaryPrimitives.ReadUInt16LittleEndian(buf[(off + 4)..]);
        seq = BinaryPrimitives.ReadUInt32LittleEndian(buf[(off + 8)..]);
        msg = buf.Slice(off, len);
        off += Align(len);
        return true;
    }

    private unsafe void SendAll(ReadOnlySpan<byte> data, string operation)
    {
        fixed (byte* p = data)
        {
            while (true)
            {
                var sent = Libc.send(_fd, p, data.Length, 0);
                if (sent >= 0) return;
                var errno = Marshal.GetLastPInvokeError();
                if (errno != Libc.EINTR) throw new NetlinkException(operation + " (send)", errno);
            }
        }
    }

    private unsafe int Receive(string operation)
    {
        fixed (byte* p = _rx)
        {
            while (true)
            {
                var n = Libc.recv(_fd, p, _rx.Length, 0);
                if (n >= 0) return (int)n;
                var errno = Marshal.GetLastPInvokeError();
                if (errno != Libc.EINTR) throw new NetlinkException(operation + " (receive)", errno);
            }
        }
    }

    public static int Align(int len) => (len + 3) & ~3;

    /// <summary>
    /// For event sockets (NFLOG, conntrack): a receive buffer beyond rmem_max (SO_RCVBUFFORCE, root) so bursts are
    /// absorbed, and a receive timeout so the reading thread notices shutdown.
    /// </summary>
    public unsafe void ConfigureForEvents(int receiveBufferBytes, TimeSpan receiveTimeout)
    {
        const int SO_RCVBUFFORCE = 33, SO_RCVTIMEO = 20;
        var size = receiveBufferBytes;
        if (Libc.setsockopt(_fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, 4) != 0) _ = Libc.setsockopt(_fd, SOL_SOCKET, SO_RCVBUF, &size, 4);
        var tv = stackalloc long[2]; // struct timeval { long tv_sec; long tv_usec; }
        tv[0] = (long)receiveTimeout.TotalSeconds;
        tv[1] = (long)(receiveTimeout.TotalMicroseconds % 1_000_000);
        _ = Libc.setsockopt(_fd, SOL_SOCKET, SO_RCVTIMEO, (int*)tv, 16);
    }

    /// <summary>
    /// One datagram of events into the socket's buffer: its length, 0 when the receive timed out, or -ENOBUFS when
    /// the kernel had to drop events because the buffer was full (the caller counts them as lost and reads on).
    /// </summary>
    public unsafe int ReceiveEvents(out ReadOnlySpan<byte> data)
    {
        const int EAGAIN = 11, ENOBUFS = 105;
        fixed (byte* p = _rx)
        {
            while (true)
            {
                var n = Libc.recv(_fd, p, _rx.Length, 0);
                if (n >= 0)
                {
                    data = _rx.AsSpan(0, (int)n);
                    return (int)n;
                }
                var errno = Marshal.GetLastPInvokeError();
                data = default;
                if (errno == EAGAIN) return 0;
                if (errno == ENOBUFS) return -ENOBUFS;
                if (errno != Libc.EINTR) throw new NetlinkException("receive netlink events", errno);
            }
        }
    }

    public void Dispose() => _fd.Dispose();
}

/// <summary>
/// Builds one netlink request: header, a fixed family struct, then attributes (nested ones patched on close).
/// <code>
/// struct rtattr { u16 len; u16 type; }  // then the value, padded to 4 bytes; nested attributes set NLA_F_NESTED
/// </code>
/// </summary>
internal sealed class NetlinkWriter
{
    private const ushort NLA_F_NESTED = 0x8000;
    private byte[] _buf = new byte[1024];
    private int _len;
    public uint Sequence { get; }

    public NetlinkWriter(ushort type, ushort flags, uint sequence)
    {
        Sequence = sequence;
        _len = 16;
        BinaryPrimitives.WriteUInt16LittleEndian(_buf.AsSpan(4), type);
        BinaryPrimitives.WriteUInt16LittleEndian(_buf.AsSpan(6), (ushort)(flags | NetlinkSocket.NLM_F_REQUEST));
        BinaryPrimitives.WriteUInt32LittleEndian(_buf.AsSpan(8), sequence);
    }

    public ReadOnlySpan<byte> Written
    {
        get
        {
            BinaryPrimitives.WriteUInt32LittleEndian(_buf, (uint)_len);
            return _buf.AsSpan(0, _len);
        }
    }

    /// <summary>Reserves the family header (ifinfomsg, rtmsg...) and returns it to fill in.</summary>
    public Span<byte> Struct(int size)
    {
        var span = Reserve(NetlinkSocket.Align(size))[..size];
        span.Clear();
        return span;
    }

    public void Attr(ushort type, ReadOnlySpan<byte> value)
    {
        var total = 4 + value.Length;
        var span = Reserve(NetlinkSocket.Align(total));
        span.Clear();
        BinaryPrimitives.WriteUInt16LittleEndian(span, (ushort)total);
        BinaryPrimitives.WriteUInt16LittleEndian(span[2..], type);
        value.CopyTo(span[4..]);
    }

    public void AttrU32(ushort type, uint value)
    {
        Span<byte> b = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(b, value);
        Attr(type, b);
    }

    public void AttrU16BigEndian(ushort type, ushort value)
    {
        Span<byte> b = stackalloc byte[2];
        BinaryPrimitives.WriteUInt16BigEndian(b, value);
        Attr(type, b);
    }

    public void AttrU8(ushort type, byte value) => Attr(type, [value]);

    public void AttrString(ushort type, string value)
    {
        Span<byte> b = stackalloc byte[value.Length * 3 + 1];
        var n = System.Text.Encoding.UTF8.GetBytes(value, b);
        b[n] = 0;
        Attr(type, b[..(n + 1)]);
    }

    public int BeginNested(ushort type)
    {
        var start = _len;
        var span = Reserve(4);
        BinaryPrimitives.WriteUInt16LittleEndian(span[2..], (ushort)(type | NLA_F_NESTED));
        return start;
    }

    public void EndNested(int start) =>
        BinaryPrimitives.WriteUInt16LittleEndian(_buf.AsSpan(start), (ushort)(_len - start));

    private Span<byte> Reserve(int n)
    {
        if (_len + n > _buf.Length) Array.Resize(ref _buf, Math.Max(_buf.Length * 2, _len + n));
        var span = _buf.AsSpan(_len, n);
        _len += n;
        return span;
    }
}

/// <summary>
/// Walks the messages of one received datagram (events: NFLOG, conntrack), bounds-checked: a malformed length ends
/// the walk, never reads past the end. Payload is what follows the 16-byte header.
/// </summary>
internal ref struct MessageReader(ReadOnlySpan<byte> data)
{
    private readonly ReadOnlySpan<byte> _data = data;
    private int _offset;
    public ushort Type { get; private set; }
    public ReadOnlySpan<byte> Payload { get; private set; }

    public bool Next()
    {
        if (_offset + 16 > _data.Length) return false;
        var len = (int)BinaryPrimitives.ReadUInt32LittleEndian(_data[_offset..]);
        if (len < 16 || _offset + len > _data.Length) return false;
        Type = BinaryPrimitives.ReadUInt16LittleEndian(_data[(_offset + 4)..]);
        Payload = _data.Slice(_offset + 16, len - 16);
        _offset += NetlinkSocket.Align(len);
        return true;
    }
}

/// <summary>Walks the attributes of a reply, bounds-checked: malformed input ends the walk, never reads past the end.</summary>
internal ref struct AttributeReader(ReadOnlySpan<byte> data)
{
    private ReadOnlySpan<byte> _rest = data;
    public ushort Type { get; private set; }
    public ReadOnlySpan<byte> Value { get; private set; }

    public bool Next()
    {
        if (_rest.Length < 4) return false;
        var len = BinaryPrimitives.ReadUInt16LittleEndian(_rest);
        if (len < 4 || len > _rest.Length) return false;
        Type = (ushort)(BinaryPrimitives.ReadUInt16LittleEndian(_rest[2..]) & 0x3fff);
        Value = _rest[4..len];
        var advance = Math.Min(NetlinkSocket.Align(len), _rest.Length);
        _rest = _rest[advance..];
        return true;
    }

    public readonly uint U32 => Value.Length >= 4 ? BinaryPrimitives.ReadUInt32LittleEndian(Value) : 0;
    public readonly string String => System.Text.Encoding.UTF8.GetString(Value.IndexOf((byte)0) is var z and >= 0 ? Value[..z] : Value);
}
