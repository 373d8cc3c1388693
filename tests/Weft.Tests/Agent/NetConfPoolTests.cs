using Weft.Agent.Config;
using Weft.Agent.Reconcile;
using Weft.Datastore;
using Weft.Resources;

namespace Weft.Tests.Agent;

/// <summary>Every node's agent starts from the same net-conf.json at once: one pool results, and no agent fails for losing the race.</summary>
public sealed class NetConfPoolTests : IDisposable
{
    private readonly string _dir = Support.TestEnv.TempDir("netconf-pool");

    public void Dispose() => Directory.Delete(_dir, true);

    [Fact]
    public async Task Agents_starting_together_create_the_net_conf_pool_once()
    {
        var netConf = FlannelNetConf.Parse("""{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}"""u8.ToArray(), "net-conf.json");
        var uri = "sqlite://" + Path.Combine(_dir, "weft.db");
        for (var round = 0; round < 5; round++)
        {
            using (var reset = DatastoreFactory.Open(uri))
                foreach (var p in await new ResourceService(reset).ListPoolsAsync())
                    await new ResourceService(reset).DeleteAsync("IPPool", p.Name, force: true);
            await Task.WhenAll(Enumerable.Range(0, 8).Select(_ => Task.Run(async () =>
            {
                using var store = DatastoreFactory.Open(uri);
                await NodeRegistration.EnsureNetConfPoolAsync(store, netConf, CancellationToken.None);
            })));
            using var check = DatastoreFactory.Open(uri);
            var pool = Assert.Single(await new ResourceService(check).ListPoolsAsync());
            Assert.Equal(("net-conf", "10.244.0.0/16", 24, "Always"), (pool.Name, pool.Cidr, pool.BlockSize, pool.VxlanMode));
        }
    }
}
