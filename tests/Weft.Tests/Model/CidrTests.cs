using System.Net;
using CsCheck;
using Weft.Model;

namespace Weft.Tests.Model;

public sealed class CidrTests
{
    [Theory]
    [InlineData("10.244.0.0/16", "10.244.0.0/16")]
    [InlineData("10.244.1.7/16", "10.244.0.0/16")]
    [InlineData("10.0.0.1", "10.0.0.1/32")]
    [InlineData("fd00::1/64", "fd00::/64")]
    [InlineData("::/0", "::/0")]
    public void Parses_and_canonicalises(string text, string expected) => Assert.Equal(expected, Cidr.Parse(text).ToString());

    [Theory]
    [InlineData("")]
    [InlineData("10.0.0.0/33")]
    [InlineData("10.0.0/8")]
    [InlineData("fd00::/129")]
    [InlineData("10.0.0.0/-1")]
    [InlineData("10.0.0.0/ 8")]
    [InlineData("hello")]
    [InlineData("::ffff:10.0.0.1/128")]
    public void Rejects_garbage(string text) => Assert.False(Cidr.TryParse(text, out _, out _));

    [Fact]
    public void Contains_overlaps_and_subnets()
    {
        var pool = Cidr.Parse("10.244.0.0/16");
        Assert.True(pool.Contains(IPAddress.Parse("10.244.255.255")));
        Assert.False(pool.Contains(IPAddress.Parse("10.245.0.0")));
        Assert.False(pool.Contains(IPAddress.Parse("fd00::1")));
        Assert.True(pool.Overlaps(Cidr.Parse("10.0.0.0/8")));
        Assert.False(pool.Overlaps(Cidr.Parse("10.245.0.0/16")));
        Assert.Equal("10.244.0.64/26", pool.Subnet(26, 1).ToString());
        Assert.Equal((UInt128)1024, pool.SubnetCount(26));
        Assert.Equal("10.244.255.255", pool.LastAddress.ToString());
        Assert.Equal("fd00::3f", Cidr.Parse("fd00::/122").LastAddress.ToString());
    }

    [Fact]
    public void Key_form_round_trips()
    {
        foreach (var t in new[] { "10.244.0.0/26", "fd00:10:244::/122", "::/0" })
            Assert.Equal(Cidr.Parse(t), Cidr.FromKey(Cidr.Parse(t).ToKey()));
    }

    [Fact]
    public void Every_address_at_an_offset_is_contained_and_maps_back()
    {
        var v4 = Gen.Select(Gen.UInt, Gen.Int[0, 32]);
        v4.Sample((raw, prefix) =>
        {
            var cidr = new Cidr(Cidr.ToAddress(raw, System.Net.Sockets.AddressFamily.InterNetwork), prefix);
            var offset = (UInt128)raw % cidr.Size;
            var ip = cidr.AddressAt(offset);
            Assert.True(cidr.Contains(ip));
            Assert.Equal(offset, cidr.OffsetOf(ip));
            Assert.Equal(cidr, Cidr.Parse(cidr.ToString()));
        });
        Gen.Select(Gen.ULong, Gen.ULong, Gen.Int[0, 128]).Sample((hi, lo, prefix) =>
        {
            var cidr = new Cidr(Cidr.ToAddress(new UInt128(hi, lo), System.Net.Sockets.AddressFamily.InterNetworkV6), prefix);
            var offset = cidr.HostBits >= 128 ? new UInt128(hi, lo) : new UInt128(hi, lo) % cidr.Size;
            Assert.True(cidr.Contains(cidr.AddressAt(offset)));
            Assert.Equal(cidr, Cidr.Parse(cidr.ToString()));
        });
    }

    [Fact]
    public void Subtract_covers_exactly_the_addresses_outside_every_hole_with_disjoint_prefixes()
    {
        // Small address space (a /20 inside 10.0.0.0/8) so holes often nest, overlap and touch the edges.
        var cidr = Gen.Select(Gen.UInt[0, 4095], Gen.Int[20, 32]).Select((off, len) => new Cidr(System.Net.IPAddress.Parse($"10.0.{off >> 8}.{off & 255}"), len));
        Gen.Select(cidr, cidr.Array[0, 5], Gen.UInt[0, 4095].Array[20]).Sample((a, holes, probes) =>
        {
            var parts = a.Subtract(holes);
            for (var i = 0; i < parts.Count; i++)
                for (var j = i + 1; j < parts.Count; j++)
                    Assert.False(parts[i].Overlaps(parts[j]), $"{parts[i]} overlaps {parts[j]}");
            foreach (var p in probes)
            {
                var ip = System.Net.IPAddress.Parse($"10.0.{p >> 8}.{p & 255}");
                var expected = a.Contains(ip) && !holes.Any(h => h.Contains(ip));
                Assert.Equal(expected, parts.Any(x => x.Contains(ip)));
            }
            foreach (var part in parts) Assert.True(a.Contains(part));
        }, iter: 2000);
    }
}
