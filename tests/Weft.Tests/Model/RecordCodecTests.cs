using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using Weft.Model;

namespace Weft.Tests.Model;

/// <summary>
/// The plugin's hand-written record codec against ModelJson (what the agent and weftctl use): the same bytes out,
/// the same records in, both ways.
/// </summary>
public sealed class RecordCodecTests
{
    private const string Tricky = "a<b>&'\"+\\/`~ é 中 😀 \u0001\u001f\u007f\b\t\n\f\r\u2028";

    [Fact]
    public void Pools_match_model_json()
    {
        Same(new IPPool { Name = "p", Cidr = "10.244.0.0/16" }, ModelJson.Default.IPPool);
        Same(new IPPool
        {
            Name = Tricky, Cidr = "fd00::/48", BlockSize = 122, NodeSelector = "zone == 'a'", Disabled = true, NatOutgoing = true,
            IpipMode = "Always", VxlanMode = "CrossSubnet", AllowedUses = [], DisableBGPExport = true, AssignmentMode = "Manual",
            CreationTimestamp = "2026-12-05T21:00:00.0000000Z",
        }, ModelJson.Default.IPPool);
    }

    [Fact]
    public void Reservations_blocks_handles_endpoints_and_nodes_match_model_json()
    {
        Same(new IPReservation { Name = "r", ReservedCIDRs = ["10.0.0.0/30", "fd00::/126"] }, ModelJson.Default.IPReservation);
        Same(new IPReservation { Name = "r" }, ModelJson.Default.IPReservation);
        Same(new AllocationBlock { Cidr = "10.244.1.0/26", Pool = "p" }, ModelJson.Default.AllocationBlock);
        Same(new AllocationBlock
        {
            Cidr = "10.244.1.0/26", Affinity = "node-1", Pool = "p",
            Allocations =
            [
                new BlockAllocation { Ordinal = 0, Handle = "weft-gateway.10-244-1-0-26", Attributes = { ["use"] = "gateway" } },
                new BlockAllocation { Ordinal = 63, Handle = "net.c1.eth0", Attributes = { ["pod"] = Tricky, ["time"] = "2026-12-05T21:00:00Z" } },
                new BlockAllocation { Ordinal = 7, Handle = "h" },
            ],
        }, ModelJson.Default.AllocationBlock);
        Same(new IpamHandle { Id = "net.c1.eth0", Node = "n" }, ModelJson.Default.IpamHandle);
        Same(new IpamHandle
        {
            Id = "net.c1.eth0", Node = "n", Network = "net", ContainerId = "c1", IfName = "eth0",
            Blocks = { ["10.244.1.0/26"] = 1, ["fd00::/122"] = 2 }, Created = "2026-12-05T21:00:00Z",
        }, ModelJson.Default.IpamHandle);
        Same(new WorkloadEndpoint { Node = "n", Network = "net", ContainerId = "c1", IfName = "eth0", HostInterface = "weft0123" }, ModelJson.Default.WorkloadEndpoint);
        Same(new WorkloadEndpoint
        {
            Node = "n", Network = "net", ContainerId = "c1", IfName = "eth0", Namespace = "ns", Pod = Tricky, Netns = "/var/run/netns/x",
            HostInterface = "weft0123", Mac = "0a:58:0a:f4:01:05", Mode = "bridge", Addresses = ["10.244.1.5/26", "fd00::5/122"],
            Labels = { ["app"] = "web" }, Created = "2026-12-05T21:00:00Z",
        }, ModelJson.Default.WorkloadEndpoint);
        Same(new NodeRecord { Name = "n" }, ModelJson.Default.NodeRecord);
        Same(new NodeRecord
        {
            Name = "n", Labels = { ["kubernetes.io/hostname"] = "n", ["x"] = Tricky }, UnderlayAddress = "198.51.100.11/24", Backend = "vxlan",
            VtepMac = "66:00:00:00:00:01", VtepAddress = "10.244.1.0", Mtu = 1450, AgentId = "abc", Heartbeat = "2026-12-05T21:00:00Z",
        }, ModelJson.Default.NodeRecord);
    }

    [Fact]
    public void Unknown_fields_are_skipped()
    {
        const string pool = """{"future":{"nested":[1,{"a":null}]},"name":"p","cidr":"10.0.0.0/8","blockSize":26,"nodeSelector":"all()","disabled":false,"natOutgoing":true,"ipipMode":"Never","vxlanMode":"Always","allowedUses":["Workload"],"disableBGPExport":false,"assignmentMode":"Automatic","extra":true}""";
        Assert.Equal(Stj(pool, ModelJson.Default.IPPool), Hand<IPPool>(pool, ModelJson.Default.IPPool));
        const string block = """{"cidr":"10.0.0.0/26","affinity":"n","pool":"p","allocations":[{"ordinal":3,"handle":"h","x":1,"attributes":{"pod":"a"}}],"x":[]}""";
        Assert.Equal(Stj(block, ModelJson.Default.AllocationBlock), Hand<AllocationBlock>(block, ModelJson.Default.AllocationBlock));
    }

    /// <summary>Every writer writes every field, so absence only comes from hand edits; ModelJson then leaves init-only fields null.</summary>
    [Fact]
    public void Absent_fields_keep_the_records_defaults()
    {
        var pool = Codec.Decode<IPPool>("""{"cidr":"10.0.0.0/8","name":"p"}"""u8.ToArray(), "k");
        Assert.Equal(("all()", "Never", "Never", "Automatic"), (pool.NodeSelector, pool.IpipMode, pool.VxlanMode, pool.AssignmentMode));
        Assert.Equal(["Workload", "Tunnel"], pool.AllowedUses);
        var handle = Codec.Decode<IpamHandle>("""{"id":"h","node":"n"}"""u8.ToArray(), "k");
        Assert.Equal(("", "", ""), (handle.Network, handle.ContainerId, handle.IfName));
        Assert.Empty(handle.Blocks);
        var ep = Codec.Decode<WorkloadEndpoint>("""{"node":"n","network":"net","containerId":"c","ifName":"eth0","hostInterface":"w"}"""u8.ToArray(), "k");
        Assert.Equal("routed", ep.Mode);
        Assert.Empty(ep.Addresses);
        Assert.Empty(Codec.Decode<AllocationBlock>("""{"cidr":"10.0.0.0/26","pool":"p"}"""u8.ToArray(), "k").Allocations);
    }

    [Theory]
    [InlineData("null")]
    [InlineData("")]
    [InlineData("{")]
    [InlineData("""{"name":"p"}""")]                       // cidr is required
    [InlineData("""{"name":"p","cidr":"10.0.0.0/8"} x""")] // trailing garbage
    [InlineData("""{"name":"p","cidr":"10.0.0.0/8","blockSize":"26"}""")]
    [InlineData("[]")]
    public void Malformed_records_are_refused_with_their_key(string json)
    {
        var e = Assert.Throws<InvalidDataException>(() => Codec.Decode<IPPool>(Encoding.UTF8.GetBytes(json), "/weft/ippools/p"));
        Assert.Contains("/weft/ippools/p", e.Message, StringComparison.Ordinal);
    }

    /// <summary>Hand-written bytes equal ModelJson's; each side reads the other's back to the same bytes.</summary>
    private static void Same<T>(T value, JsonTypeInfo<T> info) where T : class
    {
        var stj = JsonSerializer.SerializeToUtf8Bytes(value, info);
        var hand = Encode(value);
        Assert.Equal(Encoding.UTF8.GetString(stj), Encoding.UTF8.GetString(hand));
        Assert.Equal(Encoding.UTF8.GetString(stj), Encoding.UTF8.GetString(JsonSerializer.SerializeToUtf8Bytes(Codec.Decode<T>(stj, "k"), info)));
        Assert.Equal(Encoding.UTF8.GetString(hand), Encoding.UTF8.GetString(Encode(JsonSerializer.Deserialize(hand, info)!)));
    }

    private static string Stj<T>(string json, JsonTypeInfo<T> info) => JsonSerializer.Serialize(JsonSerializer.Deserialize(json, info)!, info);

    private static string Hand<T>(string json, JsonTypeInfo<T> info) where T : class =>
        JsonSerializer.Serialize(Codec.Decode<T>(Encoding.UTF8.GetBytes(json), "k"), info);

    private static byte[] Encode<T>(T value) => value switch
    {
        IPPool p => Codec.Encode(p),
        IPReservation r => Codec.Encode(r),
        AllocationBlock b => Codec.Encode(b),
        IpamHandle h => Codec.Encode(h),
        WorkloadEndpoint e => Codec.Encode(e),
        NodeRecord n => Codec.Encode(n),
        _ => throw new NotSupportedException(typeof(T).Name),
    };
}
