using Microsoft.Extensions.Logging.Abstractions;
using Weft.Agent.Flows;
using Weft.Agent.Reconcile;
using Weft.Datastore;
using Weft.Flows;
using Weft.Flows.Api;

namespace Weft.Tests.Agent;

/// <summary>
/// The flow collector with fake sources: every source's flows reach the ring and the counters; a source that fails
/// is retried with backoff while the others keep going; one that blocks holds up nobody.
/// </summary>
public sealed class FlowCollectorTests : IDisposable
{
    private readonly string _dir = Support.TestEnv.TempDir("flow-collector");

    public void Dispose() => Directory.Delete(_dir, true);

    private sealed class FakeSource(string name, int flows, int failFirst = 0, bool block = false) : IFlowSource
    {
        public int Runs;
        public string Name => name;

        public void Run(IFlowSink sink, CancellationToken ct)
        {
            if (Interlocked.Increment(ref Runs) <= failFirst) throw new IOException($"{name}: the kernel said no");
            for (var i = 0; i < flows; i++) sink.Add(new Flow { Verdict = i % 2 == 0 ? "FORWARDED" : "DROPPED", DropReasonDesc = i % 2 == 0 ? "" : "POLICY_DENIED", Protocol = 6, TrafficDirection = "INGRESS", NodeName = name });
            sink.Ignored();
            sink.Lost(2);
            sink.Publish();
            if (block) ct.WaitHandle.WaitOne();
        }
    }

    [Fact]
    public async Task Every_source_reaches_the_ring_and_a_failing_one_is_retried_without_holding_up_the_others()
    {
        using var store = DatastoreFactory.Open("sqlite://" + Path.Combine(_dir, "weft.db"));
        using var trigger = new DatastoreTrigger(store, NullLogger<DatastoreTrigger>.Instance);
        var ring = new FlowRing(64);
        var counters = new FlowCounters();
        var blocking = new FakeSource("blocking", 3, block: true);
        var failing = new FakeSource("failing", 4, failFirst: 1);
        using var collector = new FlowCollector(ring, new FlowIdentities("n1"), counters, [blocking, failing], trigger.Cache, trigger, refreshIdentities: false, NullLogger<FlowCollector>.Instance);
        await collector.StartAsync(CancellationToken.None);
        try
        {
            var deadline = DateTime.UtcNow.AddSeconds(10);
            while (ring.Written < 7 && DateTime.UtcNow < deadline) await Task.Delay(20);
            var flows = new List<Flow>();
            ring.ReadFrom(0, flows);
            Assert.Equal(3, flows.Count(f => f.NodeName == "blocking"));
            Assert.Equal(4, flows.Count(f => f.NodeName == "failing"));
            Assert.Equal(2, failing.Runs); // failed once, then ran after the backoff
            Assert.Equal(7, counters.Seen);
            Assert.Equal(4, counters.Lost);
        }
        finally { await collector.StopAsync(CancellationToken.None); }
    }
}
