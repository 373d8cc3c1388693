using Microsoft.Extensions.Logging.Abstractions;
using Weft.Agent.Calculators;
using Weft.Agent.Drivers;
using Weft.Agent.Reconcile;
using Weft.Client.Documents;
using Weft.Datastore;
using Weft.Model;
using Weft.Resources;

namespace Weft.Tests.Agent;

/// <summary>
/// The natOutgoing reconciler on the real watch, cache and sqlite store, with fake NAT drivers: every driver gets
/// the pools in order (BPF before nftables), the revision is reported after them, and a driver that fails is retried.
/// </summary>
public sealed class NatReconcilerTests : IDisposable
{
    private readonly string _dir = Support.TestEnv.TempDir("nat-reconciler");

    public void Dispose() => Directory.Delete(_dir, true);

    private sealed class FakeNatDriver(string mode, List<string> calls) : INatDriver
    {
        public int FailNext;
        private string? _applied;
        public string Mode => mode;

        public bool Apply(NatPools pools)
        {
            lock (calls) calls.Add($"{mode}:{pools.Key}");
            if (Interlocked.Exchange(ref FailNext, 0) > 0) throw new InvalidOperationException($"{mode}: the kernel said no");
            if (pools.Key == _applied) return false;
            _applied = pools.Key;
            return true;
        }
    }

    [Fact]
    public async Task Pools_reach_every_driver_in_order_and_a_failing_driver_is_retried()
    {
        using var store = DatastoreFactory.Open("sqlite://" + Path.Combine(_dir, "weft.db"));
        var state = new AgentState("n1", "vxlan");
        var calls = new List<string>();
        var bpf = new FakeNatDriver("bpf", calls);
        var nft = new FakeNatDriver("nftables", calls);
        using var trigger = new DatastoreTrigger(store, NullLogger<DatastoreTrigger>.Instance);
        using var reconciler = new NatReconciler(trigger.Cache, trigger, [bpf, nft], state, TimeSpan.FromSeconds(30), NullLogger<NatReconciler>.Instance);
        await trigger.StartAsync(CancellationToken.None);
        await reconciler.StartAsync(CancellationToken.None);
        try
        {
            async Task<AgentSnapshot> Until(Func<AgentSnapshot, bool> done)
            {
                var (ok, s) = await state.WaitAsync(done, TimeSpan.FromSeconds(10), CancellationToken.None);
                Assert.True(ok, $"timed out; nat revision {s.NatRevision}, errors {s.ReconcileErrors}, last error {s.LastError}");
                return s;
            }

            await new ResourceService(store).ApplyAsync(YamlDocuments.Resources(
                "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.50.0.0/16, natOutgoing: true}\n", "pool.yaml"));
            var revision = await store.RevisionAsync();
            await Until(s => s.NatRevision >= revision);
            var key = new NatPools([Cidr.Parse("10.50.0.0/16")], [Cidr.Parse("10.50.0.0/16")]).Key;
            lock (calls) Assert.Equal([$"bpf:{key}", $"nftables:{key}"], calls.Where(c => c.EndsWith(key, StringComparison.Ordinal)).Take(2));

            bpf.FailNext = 1;
            await new ResourceService(store).ApplyAsync(YamlDocuments.Resources(
                "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.50.0.0/16, natOutgoing: false}\n", "pool.yaml"));
            revision = await store.RevisionAsync();
            var failed = await Until(s => s.ReconcileErrors >= 1);
            Assert.Contains("bpf: the kernel said no", failed.LastError);
            await Until(s => s.NatRevision >= revision); // the retry
            var off = new NatPools([], [Cidr.Parse("10.50.0.0/16")]).Key;
            lock (calls)
            {
                Assert.Equal(2, calls.Count(c => c == $"bpf:{off}")); // refused once, then applied
                Assert.Equal(1, calls.Count(c => c == $"nftables:{off}")); // not reached while BPF failed
            }
        }
        finally
        {
            await reconciler.StopAsync(CancellationToken.None);
            await trigger.StopAsync(CancellationToken.None);
        }
    }
}
