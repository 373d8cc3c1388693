using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using Weft.Dataplane.Bpf;
using Weft.Model;
using Weft.Netlink;

namespace Weft.Agent.Bpf;

// Layouts shared with policy.bpf.c (same names, snake_case there); BpfLayoutTests checks each against the object's BTF.
// Fields the LPM tries compare are in network byte order.

[StructLayout(LayoutKind.Sequential)]
internal unsafe struct IpcacheKey
{
    public uint Prefixlen;
    public uint Family;
    public fixed byte Addr[16];

    public static IpcacheKey Of(Cidr c)
    {
        var k = new IpcacheKey { Prefixlen = (uint)(32 + c.PrefixLength), Family = c.IsIPv4 ? 4u : 6u };
        Span<byte> bytes = stackalloc byte[16];
        c.NetworkAddress.TryWriteBytes(bytes, out _);
        for (var i = 0; i < 16; i++) k.Addr[i] = bytes[i];
        return k;
    }
}

[StructLayout(LayoutKind.Sequential)]
internal struct EndpointValue
{
    public uint EgressProgram;
    public uint IngressProgram;
}

// Record structs: value equality field by field (pad bytes are always 0), for the sets of keys the driver keeps.
[StructLayout(LayoutKind.Sequential)]
internal record struct PolicyKey
{
    public uint Prefixlen;
    public uint Program;
    public uint Identity;
    public byte Protocol;
    public byte Pad;
    public ushort Port;

    public static PolicyKey Of(uint program, uint identity, PolicyEntry e) => new()
    {
        Prefixlen = (uint)(e.PortBits < 0 ? 64 : e.PortBits == 0 ? 72 : 80 + e.PortBits), // the pad byte (always 0) sits before the port
        Program = BinaryPrimitives.ReverseEndianness(program), Identity = BinaryPrimitives.ReverseEndianness(identity),
        Protocol = e.PortBits < 0 ? (byte)0 : e.Protocol, Port = e.PortBits <= 0 ? (ushort)0 : BinaryPrimitives.ReverseEndianness(e.Port),
    };

    public readonly uint ProgramId => BinaryPrimitives.ReverseEndianness(Program);
    public readonly uint IdentityId => BinaryPrimitives.ReverseEndianness(Identity);
}

[StructLayout(LayoutKind.Sequential)]
internal struct Verdict
{
    public byte Action;
    public byte Log;
    public ushort Pad;
    public uint Token;
    public uint SportTable;
    public uint LogToken;

    public static Verdict Of(BpfVerdict v) => new() { Action = v.Action, Log = v.Log ? (byte)1 : (byte)0, Token = v.Token, SportTable = v.SportTable, LogToken = v.LogToken };
}

[StructLayout(LayoutKind.Sequential)]
internal record struct SportKey
{
    public uint Prefixlen;
    public uint Table;
    public ushort Port;
    public ushort Pad;

    public static SportKey Of(uint table, SportEntry e) => new()
    {
        Prefixlen = (uint)(32 + e.PortBits), Table = BinaryPrimitives.ReverseEndianness(table),
        Port = e.PortBits == 0 ? (ushort)0 : BinaryPrimitives.ReverseEndianness(e.Port),
    };

}

[StructLayout(LayoutKind.Sequential)]
internal unsafe struct CtKey
{
    public uint Ifindex;
    public byte Family;
    public byte Protocol;
    public ushort Sport;
    public ushort Dport;
    public ushort Pad;
    public fixed byte Saddr[16];
    public fixed byte Daddr[16];

    /// <summary>The connection as its first packet here went (the original direction).</summary>
    public readonly ConnectionTuple Connection
    {
        get
        {
            var n = Family == 4 ? 4 : 16;
            var s = new byte[n];
            var d = new byte[n];
            for (var i = 0; i < n; i++) { s[i] = Saddr[i]; d[i] = Daddr[i]; }
            return new ConnectionTuple(new System.Net.IPAddress(s), new System.Net.IPAddress(d), Protocol, Sport, Dport);
        }
    }
}

[StructLayout(LayoutKind.Sequential)]
internal struct CtEntry
{
    public ulong LastSeen;
    public uint Flags;
    public uint Pad;

    /// <summary>CT_CLOSING: a FIN or RST was seen.</summary>
    public const uint Closing = 1;

    /// <summary>How long an entry lives unused, as policy.bpf.c's TCP_IDLE, UDP_IDLE and OTHER_IDLE.</summary>
    public static TimeSpan IdleLimit(byte protocol) => protocol switch
    {
        6 => TimeSpan.FromHours(6),
        17 => TimeSpan.FromSeconds(60),
        _ => TimeSpan.FromSeconds(30),
    };
}

[StructLayout(LayoutKind.Sequential)]
public unsafe struct FlowEvent
{
    public ulong Time;
    public uint Ifindex;
    public byte Family;
    public byte Protocol;
    public byte Direction;
    public byte Action;
    public ushort Sport;
    public ushort Dport;
    public uint Token;
    public byte TcpFlags;
    public byte IcmpType;
    public byte IcmpCode;
    public byte Kind;
    public fixed byte Saddr[16];
    public fixed byte Daddr[16];

    public readonly IPAddress Source => Address(true);
    public readonly IPAddress Destination => Address(false);

    private readonly IPAddress Address(bool source)
    {
        Span<byte> b = stackalloc byte[16];
        for (var i = 0; i < 16; i++) b[i] = source ? Saddr[i] : Daddr[i];
        return Family == 4 ? new IPAddress(b[..4]) : new IPAddress(b);
    }

    public const byte KindVerdict = 0, KindLog = 1;
}

internal static class Families
{
    public static byte Of(AddressFamily f) => f == AddressFamily.InterNetwork ? (byte)4 : (byte)6;
}
