using System.Buffers.Binary;
using System.Diagnostics.CodeAnalysis;
using System.Net;
using System.Net.Sockets;

namespace Weft.Model;

/// <summary>
/// An IPv4 or IPv6 prefix held as a 128-bit integer, so one set of arithmetic serves both families.
/// The network address is always canonical (host bits zero).
/// </summary>
public readonly record struct Cidr : IComparable<Cidr>
{
    public UInt128 Network { get; }
    public int PrefixLength { get; }
    public AddressFamily Family { get; }

    public Cidr(IPAddress address, int prefixLength)
    {
        Family = address.AddressFamily;
        if (Family is not (AddressFamily.InterNetwork or AddressFamily.InterNetworkV6))
            throw new ArgumentException($"unsupported address family {Family}", nameof(address));
        if (prefixLength < 0 || prefixLength > Bits(Family))
            throw new ArgumentOutOfRangeException(nameof(prefixLength), $"prefix length {prefixLength} out of range for {FamilyName(Family)}");
        PrefixLength = prefixLength;
        Network = ToInteger(address) & Mask(Family, prefixLength);
    }

    private Cidr(UInt128 network, int prefixLength, AddressFamily family)
    {
        Network = network & Mask(family, prefixLength);
        PrefixLength = prefixLength;
        Family = family;
    }

    public bool IsIPv4 => Family == AddressFamily.InterNetwork;
    public int AddressBits => Bits(Family);
    public int HostBits => AddressBits - PrefixLength;
    /// <summary>Number of addresses, saturating at UInt128.MaxValue for ::/0.</summary>
    public UInt128 Size => HostBits >= 128 ? UInt128.MaxValue : UInt128.One << HostBits;
    public IPAddress NetworkAddress => ToAddress(Network, Family);
    public IPAddress LastAddress => ToAddress(Network | ~Mask(Family, PrefixLength) & FamilyMask(Family), Family);

    public static Cidr Parse(string text) =>
        TryParse(text, out var cidr, out var error) ? cidr : throw new FormatException(error);

    public static bool TryParse(string? text, out Cidr cidr) => TryParse(text, out cidr, out _);

    public static bool TryParse(string? text, out Cidr cidr, [NotNullWhen(false)] out string? error)
    {
        cidr = default;
        if (string.IsNullOrWhiteSpace(text)) { error = "empty CIDR"; return false; }
        var slash = text.IndexOf('/', StringComparison.Ordinal);
        var addrText = slash < 0 ? text : text[..slash];
        if (!IPAddress.TryParse(addrText, out var address) || addrText.Contains('%', StringComparison.Ordinal))
        { error = $"'{text}' is not a valid CIDR (bad address)"; return false; }
        if (address.AddressFamily == AddressFamily.InterNetwork && addrText.Count(c => c == '.') != 3)
        { error = $"'{text}' is not a valid CIDR (write all four parts of an IPv4 address)"; return false; }
        if (address.IsIPv4MappedToIPv6) { error = $"'{text}': IPv4-mapped IPv6 addresses are not accepted"; return false; }
        var bits = Bits(address.AddressFamily);
        var prefix = bits;
        if (slash >= 0 && (!int.TryParse(text.AsSpan(slash + 1), System.Globalization.NumberStyles.None, null, out prefix) || prefix > bits))
        { error = $"'{text}' is not a valid CIDR (prefix length must be 0-{bits})"; return false; }
        cidr = new Cidr(address, prefix);
        error = null;
        return true;
    }

    public static Cidr Host(IPAddress address) => new(address, Bits(address.AddressFamily));

    public bool Contains(IPAddress address) =>
        address.AddressFamily == Family && (ToInteger(address) & Mask(Family, PrefixLength)) == Network;

    public bool Contains(Cidr other) =>
        other.Family == Family && other.PrefixLength >= PrefixLength && (other.Network & Mask(Family, PrefixLength)) == Network;

    public bool Overlaps(Cidr other) => Contains(other) || other.Contains(this);

    /// <summary>The address at the given offset from the network address.</summary>
    public IPAddress AddressAt(UInt128 offset)
    {
        if (offset >= Size) throw new ArgumentOutOfRangeException(nameof(offset), $"offset {offset} outside {this}");
        return ToAddress(Network + offset, Family);
    }

    public UInt128 OffsetOf(IPAddress address)
    {
        if (!Contains(address)) throw new ArgumentException($"{address} is not in {this}", nameof(address));
        return ToInteger(address) - Network;
    }

    /// <summary>The index-th subnet of the given length inside this prefix.</summary>
    public Cidr Subnet(int prefixLength, UInt128 index)
    {
        if (prefixLength < PrefixLength || prefixLength > AddressBits) throw new ArgumentOutOfRangeException(nameof(prefixLength));
        var shift = AddressBits - prefixLength;
        return new Cidr(Network + (index << shift), prefixLength, Family);
    }

    public UInt128 SubnetCount(int prefixLength) =>
        prefixLength - PrefixLength >= 128 ? UInt128.MaxValue : UInt128.One << (prefixLength - PrefixLength);

    /// <summary>
    /// This prefix minus every one of <paramref name="holes"/>, as the fewest prefixes that cover the rest (an ipBlock
    /// with except, or nets with notNets, as plain prefixes). Holes of the other family are ignored.
    /// </summary>
    public IReadOnlyList<Cidr> Subtract(IEnumerable<Cidr> holes)
    {
        var self = this;
        var relevant = holes.Where(h => h.Family == self.Family && self.Overlaps(h)).ToList();
        var result = new List<Cidr>();
        void Split(Cidr c)
        {
            var touching = false;
            foreach (var h in relevant)
            {
                if (h.Contains(c)) return; // entirely removed
                if (c.Contains(h)) touching = true;
            }
            if (!touching) { result.Add(c); return; }
            Split(c.Subnet(c.PrefixLength + 1, 0));
            Split(c.Subnet(c.PrefixLength + 1, 1));
        }
        Split(self);
        return result;
    }

    /// <summary>The prefix of the given (shorter or equal) length that contains this one; no address objects involved.</summary>
    public Cidr Supernet(int prefixLength)
    {
        if (prefixLength < 0 || prefixLength > PrefixLength) throw new ArgumentOutOfRangeException(nameof(prefixLength));
        return new Cidr(Network, prefixLength, Family);
    }

    /// <summary>The subnet of the given length that contains this address.</summary>
    public static Cidr Enclosing(IPAddress address, int prefixLength) => new(address, prefixLength);

    public override string ToString() => $"{NetworkAddress}/{PrefixLength}";

    /// <summary>A form usable inside datastore keys and file names ("10.244.0.0-26", "fd00--122").</summary>
    public string ToKey() => ToString().Replace('/', '-').Replace(':', '_');

    public static Cidr FromKey(string key)
    {
        var dash = key.LastIndexOf('-');
        if (dash < 0) throw new FormatException($"'{key}' is not a CIDR key");
        return Parse(key[..dash].Replace('_', ':') + "/" + key[(dash + 1)..]);
    }

    public int CompareTo(Cidr other)
    {
        var c = Family.CompareTo(other.Family);
        if (c != 0) return c;
        c = Network.CompareTo(other.Network);
        return c != 0 ? c : PrefixLength.CompareTo(other.PrefixLength);
    }

    public static bool operator <(Cidr left, Cidr right) => left.CompareTo(right) < 0;
    public static bool operator <=(Cidr left, Cidr right) => left.CompareTo(right) <= 0;
    public static bool operator >(Cidr left, Cidr right) => left.CompareTo(right) > 0;
    public static bool operator >=(Cidr left, Cidr right) => left.CompareTo(right) >= 0;

    public static int Bits(AddressFamily family) => family == AddressFamily.InterNetwork ? 32 : 128;
    public static string FamilyName(AddressFamily family) => family == AddressFamily.InterNetwork ? "IPv4" : "IPv6";

    private static UInt128 FamilyMask(AddressFamily family) =>
        family == AddressFamily.InterNetwork ? uint.MaxValue : UInt128.MaxValue;

    private static UInt128 Mask(AddressFamily family, int prefixLength)
    {
        var bits = Bits(family);
        if (prefixLength == 0) return UInt128.Zero;
        return (FamilyMask(family) << (bits - prefixLength)) & FamilyMask(family);
    }

    public static UInt128 ToInteger(IPAddress address)
    {
        Span<byte> bytes = stackalloc byte[16];
        if (!address.TryWriteBytes(bytes, out var written)) throw new ArgumentException("bad address", nameof(address));
        return written == 4
            ? BinaryPrimitives.ReadUInt32BigEndian(bytes)
            : BinaryPrimitives.ReadUInt128BigEndian(bytes);
    }

    public static IPAddress ToAddress(UInt128 value, AddressFamily family)
    {
        Span<byte> bytes = stackalloc byte[16];
        if (family == AddressFamily.InterNetwork)
        {
            BinaryPrimitives.WriteUInt32BigEndian(bytes, (uint)value);
            return new IPAddress(bytes[..4]);
        }
        BinaryPrimitives.WriteUInt128BigEndian(bytes, value);
        return new IPAddress(bytes);
    }
}
