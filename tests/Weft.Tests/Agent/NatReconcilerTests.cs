using Microsoft.Extensions.Logging.Abstractions;
using Weft.Agent.Calculators;
using Weft.Agent.Drivers;
using Weft.Agent.Reconcile;
using Weft.Model;

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
        await using var run = new ReconcilerRun(_dir);
        var calls = new List<string>();
        var bpf = new FakeNatDriver("bpf", calls);
        var nft = new FakeNatDriver("nftables", calls);
        await run.StartAsync(new NatReconciler(run.Trigger.Cache, run.Trigger, [bpf, nft], run.State, TimeSpan.FromSeconds(30), NullLogger<NatReconciler>.Instance));

        await run.ApplyAsync("apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.50.0.0/16, natOutgoing: true}\n");
        var revision = await run.Store.RevisionAsync();
        await run.UntilAsync(s => s.NatRevision >= revision);
        var key = new NatPools([Cidr.Parse("10.50.0.0/16")], [Cidr.Parse("10.50.0.0/16")]).Key;
        lock (calls) Assert.Equal([$"bpf:{key}", $"nftables:{key}"], calls.Where(c => c.EndsWith(key, StringComparison.Ordinal)).Take(2));

        bpf.FailNext = 1;
        await run.ApplyAsync("apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.50.0.0/16, natOutgoing: false}\n");
        revision = await run.Store.RevisionAsync();
        var failed = await run.UntilAsync(s => s.ReconcileErrors >= 1);
        Assert.Contains("bpf: the kernel said no", failed.LastError);
        await run.UntilAsync(s => s.NatRevision >= revision); // the retry
        var off = new NatPools([], [Cidr.Parse("10.50.0.0/16")]).Key;
        lock (calls)
        {
            Assert.Equal(2, calls.Count(c => c == $"bpf:{off}")); // refused once, then applied
            Assert.Equal(1, calls.Count(c => c == $"nftables:{off}")); // not reached while BPF failed
        }
    }

    [Fact]
    public async Task Conntrack_for_policy_follows_the_installations_dataplane_unless_one_is_forced()
    {
        await using var run = new ReconcilerRun(_dir);
        var calls = new List<string>();
        await run.StartAsync(new NatReconciler(run.Trigger.Cache, run.Trigger, [new FakeNatDriver("nftables", calls)], run.State, TimeSpan.FromSeconds(30),
            NullLogger<NatReconciler>.Instance, policyOn: true, forcedDataplane: null));
        await run.ApplyAsync("apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.50.0.0/16}\n");
        var revision = await run.Store.RevisionAsync();
        await run.UntilAsync(s => s.NatRevision >= revision);
        lock (calls) Assert.EndsWith("|ct", calls[^1]); // no Installation: nftables, which tracks connections

        await run.ApplyAsync(File.ReadAllText(Support.TestEnv.SeedDocument("calico-installation-bpf.yaml")));
        revision = await run.Store.RevisionAsync();
        await run.UntilAsync(s => s.NatRevision >= revision);
        lock (calls) Assert.DoesNotContain("|ct", calls[^1]); // the BPF programs use no kernel conntrack: nothing to untrack

        await run.ApplyAsync(File.ReadAllText(Support.TestEnv.SeedDocument("calico-installation-iptables.yaml")));
        revision = await run.Store.RevisionAsync();
        await run.UntilAsync(s => s.NatRevision >= revision);
        lock (calls) Assert.EndsWith("|ct", calls[^1]);
    }
}
