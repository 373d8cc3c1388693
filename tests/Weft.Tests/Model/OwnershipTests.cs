using Weft.Cni.Interfaces;
using Weft.Model;

namespace Weft.Tests.Model;

public sealed class OwnershipTests
{
    [Fact]
    public void Pod_interfaces_are_the_plugins_names_and_nothing_else_with_the_prefix()
    {
        for (var i = 0; i < 100; i++)
            Assert.True(Ownership.IsPodInterface(PodInterfaces.HostVethNameFor($"container-{i}", "eth0")));
        Assert.False(Ownership.IsPodInterface(Ownership.DefaultBridge));
        Assert.False(Ownership.IsPodInterface(Ownership.VxlanDevice));
        Assert.False(Ownership.IsPodInterface("weft3E0D82E9E71")); // the plugin writes lowercase hex
        Assert.False(Ownership.IsPodInterface("weft3e0d82e9e7"));
        Assert.False(Ownership.IsPodInterface("cali3e0d82e9e71"));
        Assert.True(Ownership.IsPodInterface("cali3e0d82e9e71", "cali"));
    }
}
