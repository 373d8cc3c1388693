using Weft.Tests.Support;
using Microsoft.Extensions.Logging.Abstractions;
using Weft.Agent.Drivers;
using Weft.Agent.Reconcile;
using Weft.Policy;
using Weft.Policy.Ir;

namespace Weft.Tests.Agent;

/// <summary>
/// The policy reconciler on the real watch, cache and sqlite store, with a fake dataplane: a committed policy reaches
/// the dataplane with the revision reported; a failing apply is retried after a reset, and counted.
/// </summary>
public sealed class PolicyReconcilerTests : IDisposable
{
    private readonly string _dir = Support.TestEnv.TempDir("policy-reconciler");

    public void Dispose() => Directory.Delete(_dir, true);

    private sealed class FakeDataplane(string name = "nftables", List<string>? events = null) : IPolicyDataplane
    {
        private void Event(string what) { if (events is not null) lock (events) events.Add(name + " " + what); }
        public List<string[]> Applied { get; } = [];
        public int Resets;
        public int FailNext;
        public int Handovers;
        public string Name => name;

        public PolicyApplyResult Apply(PolicySet policies, PolicyWorld world, IReadOnlyList<EndpointInfo> local)
        {
            if (Interlocked.Exchange(ref FailNext, 0) > 0)
            {
                Event("apply failed");
                throw new InvalidOperationException("the kernel said no");
            }
            Event("apply");
            lock (Applied) Applied.Add([.. policies.Policies.Select(p => p.Id)]);
            return new PolicyApplyResult(1, policies.Policies.Count, 0, false, 1, new Dictionary<string, string>());
        }

        public void Reset()
        {
            Interlocked.Increment(ref Resets);
            Event("reset");
        }

        public void Remove() { }

        public void Handover()
        {
            Interlocked.Increment(ref Handovers);
            Event("handover");
        }

        public void Dispose() => Event("dispose");
    }

    [Fact]
    public async Task A_commit_reaches_the_dataplane_and_a_failed_apply_is_retried_after_a_reset()
    {
        await using var run = new ReconcilerRun(_dir);
        var fake = new FakeDataplane();
        await run.StartAsync(new PolicyReconciler(run.Trigger.Cache, run.Trigger, "n1", null, _ => fake, run.State, NullLogger<PolicyReconciler>.Instance));
        await run.UntilAsync(s => s.Policy.Enforcing);

        await run.ApplyAsync("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: default}\nspec: {podSelector: {}}\n");
        var revision = await run.Store.RevisionAsync();
        await run.UntilAsync(s => s.Policy.Revision >= revision);
        lock (fake.Applied) Assert.Contains("knp/default/a", fake.Applied[^1]);

        fake.FailNext = 1;
        await run.ApplyAsync("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: b, namespace: default}\nspec: {podSelector: {}}\n");
        revision = await run.Store.RevisionAsync();
        var failed = await run.UntilAsync(s => s.Policy.Errors == 1);
        Assert.Equal("the kernel said no", failed.Policy.LastError);
        Assert.True(fake.Resets >= 1, "a failed apply must make the next one replace everything");
        var after = await run.UntilAsync(s => s.Policy.Revision >= revision && s.Policy.LastError is null); // the retry, about 1 s later
        lock (fake.Applied) Assert.Contains("knp/default/b", fake.Applied[^1]);
        Assert.Equal(1, after.Policy.Errors);
    }

    [Fact]
    public async Task The_Installation_switches_the_dataplane_and_a_refused_one_keeps_the_running_one()
    {
        await using var run = new ReconcilerRun(_dir);
        var nft = new FakeDataplane("nftables");
        var bpf = new FakeDataplane("bpf");
        var refuse = true;
        IPolicyDataplane Open(string name) => name == "nftables" ? nft : refuse ? throw new Weft.Bpf.BpfException("the verifier said no") : bpf;
        await run.StartAsync(new PolicyReconciler(run.Trigger.Cache, run.Trigger, "n1", null, Open, run.State, NullLogger<PolicyReconciler>.Instance));
        Assert.Equal("nftables", (await run.UntilAsync(s => s.Policy.Enforcing)).Policy.Dataplane); // no Installation: nftables
        var seed = File.ReadAllText(TestEnv.SeedDocument("calico-installation-bpf.yaml"));
        await run.ApplyAsync(seed);
        var revision = await run.Store.RevisionAsync();
        var refused = await run.UntilAsync(s => s.Policy.Revision >= revision);
        Assert.Equal("nftables", refused.Policy.Dataplane);
        Assert.Contains("the verifier said no", refused.Policy.LastError);
        Assert.Equal(0, nft.Handovers);

        refuse = false;
        await run.ApplyAsync("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: default}\nspec: {podSelector: {}}\n");
        revision = await run.Store.RevisionAsync();
        var switched = await run.UntilAsync(s => s.Policy.Revision >= revision && s.Policy.Dataplane == "bpf");
        Assert.Null(switched.Policy.LastError);
        Assert.Equal(1, nft.Handovers); // after bpf applied, never before
        lock (bpf.Applied) Assert.Contains("knp/default/a", bpf.Applied[^1]);
    }

    [Fact]
    public async Task A_switch_whose_first_apply_fails_puts_the_old_dataplane_back_before_removing_the_new_one()
    {
        await using var run = new ReconcilerRun(_dir);
        var events = new List<string>();
        var nft = new FakeDataplane("nftables", events);
        var attempts = new List<FakeDataplane>();
        IPolicyDataplane Open(string name)
        {
            if (name == "nftables") return nft;
            var bpf = new FakeDataplane("bpf", events) { FailNext = attempts.Count == 0 ? 1 : 0 };
            attempts.Add(bpf);
            return bpf;
        }
        await run.StartAsync(new PolicyReconciler(run.Trigger.Cache, run.Trigger, "n1", null, Open, run.State, NullLogger<PolicyReconciler>.Instance));
        await run.UntilAsync(s => s.Policy.Enforcing);
        lock (events) events.Clear();

        await run.ApplyAsync(File.ReadAllText(TestEnv.SeedDocument("calico-installation-bpf.yaml")));
        var failed = await run.UntilAsync(s => s.Policy.Errors == 1);
        Assert.Equal("the kernel said no", failed.Policy.LastError);
        Assert.Equal("nftables", failed.Policy.Dataplane);
        var switched = await run.UntilAsync(s => s.Policy.Dataplane == "bpf"); // the retry
        Assert.Equal(2, attempts.Count);
        lock (events)
            Assert.Equal(["bpf apply failed", "nftables reset", "nftables apply", "bpf handover", "bpf dispose"], events.Take(5));
        lock (events) Assert.Equal(["bpf apply", "nftables handover", "nftables dispose"], events.Skip(5).Where(e => !e.EndsWith(" reset", StringComparison.Ordinal)));
        Assert.Null(switched.Policy.LastError);
    }
}
