using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging.Abstractions;
using Weft.Agent.Reconcile;
using Weft.Client.Documents;
using Weft.Datastore;
using Weft.Resources;

namespace Weft.Tests.Agent;

/// <summary>
/// One reconciler on the agent's real watch and cache over a sqlite store in <c>dir</c>, as the agent runs it; tests
/// give it fake drivers, write documents and wait for what the reconciler reports in the agent's state.
/// </summary>
internal sealed class ReconcilerRun : IAsyncDisposable
{
    private BackgroundService? _reconciler;

    public ReconcilerRun(string dir)
    {
        Store = DatastoreFactory.Open("sqlite://" + Path.Combine(dir, "weft.db"));
        Trigger = new DatastoreTrigger(Store, NullLogger<DatastoreTrigger>.Instance);
    }

    public IDatastore Store { get; }
    public DatastoreTrigger Trigger { get; }
    public AgentState State { get; } = new("n1", "vxlan");

    public async Task StartAsync(BackgroundService reconciler)
    {
        _reconciler = reconciler;
        await Trigger.StartAsync(CancellationToken.None);
        await reconciler.StartAsync(CancellationToken.None);
    }

    /// <summary>Users' documents through the same service `weftctl apply` uses.</summary>
    public async Task ApplyAsync(string yaml) => await new ResourceService(Store).ApplyAsync(YamlDocuments.Resources(yaml, "test"));

    public async Task<AgentSnapshot> UntilAsync(Func<AgentSnapshot, bool> done)
    {
        var (ok, s) = await State.WaitAsync(done, TimeSpan.FromSeconds(10), CancellationToken.None);
        Assert.True(ok, "timed out; agent state: " + s);
        return s;
    }

    public async ValueTask DisposeAsync()
    {
        if (_reconciler is { } r)
        {
            await r.StopAsync(CancellationToken.None);
            r.Dispose();
        }
        await Trigger.StopAsync(CancellationToken.None);
        Trigger.Dispose();
        Store.Dispose();
    }
}
