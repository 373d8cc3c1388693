using System.Net;
using Microsoft.Extensions.Logging.Abstractions;
using Weft.Agent.Calculators;
using Weft.Agent.Drivers;
using Weft.Agent.Reconcile;
using Weft.Datastore;
using Weft.Model;
using Weft.Netlink;
using static Weft.Tests.Agent.RouteCalculatorTests;

namespace Weft.Tests.Agent;

/// <summary>
/// The route reconciler on the real watch, cache and sqlite store, with a fake route driver: a peer's block becomes
/// a route through its VTEP, the peer leaving takes it away, and a failed apply is retried with the error reported.
/// </summary>
public sealed class RouteReconcilerTests : IDisposable
{
    private readonly string _dir = Support.TestEnv.TempDir("route-reconciler");

    public void Dispose() => Directory.Delete(_dir, true);

    private sealed class FakeRouteDriver : IRouteDriver
    {
        public int FailNext;
        public RouteState? Last;

        public Delta<RouteSpec> Apply(RouteState desired)
        {
            if (Interlocked.Exchange(ref FailNext, 0) > 0) throw new InvalidOperationException("the kernel said no");
            Volatile.Write(ref Last, desired);
            return new Delta<RouteSpec>([.. desired.AllRoutes], []);
        }
    }

    [Fact]
    public async Task A_peers_block_becomes_a_route_its_leaving_removes_it_and_a_failed_apply_is_retried()
    {
        await using var run = new ReconcilerRun(_dir);
        var driver = new FakeRouteDriver();
        await run.StartAsync(new RouteReconciler(run.Trigger.Cache, run.Trigger, new FakeOverlay(), Me, run.State, TimeSpan.FromSeconds(30), NullLogger<RouteReconciler>.Instance, driver));
        var store = run.Store;
        bool Routed() => driver.Last?.AllRoutes.Any(r => r.Destination.Equals(IPAddress.Parse("10.60.1.0")) && r.PrefixLength == 26 && IPAddress.Parse("10.99.0.2").Equals(r.Gateway)) == true;

        await store.PutAsync(Keys.Pool("p"), Codec.Encode(Pool("p", "10.60.0.0/16", vxlan: "Always")), -1);
        await store.PutAsync(Keys.Node("n1"), Codec.Encode(Node("n1", "198.51.100.11")), -1);
        await store.PutAsync(Keys.Node("n2"), Codec.Encode(Node("n2", "198.51.100.12")), -1);
        await store.PutAsync(Keys.Block(Cidr.Parse("10.60.1.0/26")), Codec.Encode(Block("10.60.1.0/26", "n2", "p")), -1);
        var revision = await store.RevisionAsync();
        await run.UntilAsync(s => s.RoutesRevision >= revision);
        Assert.True(Routed(), "n2's block goes through n2's VTEP");

        driver.FailNext = 1;
        await store.DeleteAsync(Keys.Node("n2"), -1);
        revision = await store.RevisionAsync();
        var failed = await run.UntilAsync(s => s.ReconcileErrors >= 1);
        // The retry may already have cleared LastError by the time this snapshot is taken; the count stays.
        Assert.Equal(1, failed.ReconcileErrors);
        Assert.True(failed.LastError is null or "the kernel said no", failed.LastError);
        await run.UntilAsync(s => s.RoutesRevision >= revision && s.LastError is null); // the retry
        Assert.False(Routed(), "a node that left has no route");
    }
}
