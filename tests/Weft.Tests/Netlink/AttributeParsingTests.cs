using CsCheck;
using Weft.Netlink;

namespace Weft.Tests.Netlink;

/// <summary>Replies from the kernel are parsed bounds-checked: garbage never throws or reads past the end.</summary>
public sealed class AttributeParsingTests
{
    [Fact]
    public void Random_link_messages_parse_or_are_rejected_without_exceptions()
    {
        Gen.Byte.Array[0, 400].Sample(bytes =>
        {
            var msg = bytes;
            var link = RtNetlink.ParseLink(msg);
            if (msg.Length < 32) Assert.Null(link);
        }, iter: 20_000);
    }

    [Fact]
    public void A_well_formed_newlink_reply_is_read()
    {
        // nlmsghdr(16) + ifinfomsg(16) + IFLA_IFNAME "eth0\0" (len 9, padded to 12) + IFLA_MTU 1450 (len 8)
        var msg = new byte[16 + 16 + 12 + 8];
        BitConverter.TryWriteBytes(msg.AsSpan(0), (uint)msg.Length);
        BitConverter.TryWriteBytes(msg.AsSpan(16 + 4), 7); // index
        BitConverter.TryWriteBytes(msg.AsSpan(16 + 8), 1u); // IFF_UP
        var a = msg.AsSpan(32);
        BitConverter.TryWriteBytes(a, (ushort)9); BitConverter.TryWriteBytes(a[2..], (ushort)3); "eth0"u8.CopyTo(a[4..]);
        BitConverter.TryWriteBytes(a[12..], (ushort)8); BitConverter.TryWriteBytes(a[14..], (ushort)4); BitConverter.TryWriteBytes(a[16..], 1450u);
        var link = RtNetlink.ParseLink(msg)!;
        Assert.Equal(7, link.Index);
        Assert.Equal("eth0", link.Name);
        Assert.Equal(1450, link.Mtu);
        Assert.True(link.IsUp);
        // Truncate the last attribute: the name survives, the MTU is dropped, nothing throws.
        Assert.Equal("eth0", RtNetlink.ParseLink(msg[..^3])!.Name);
    }
}
