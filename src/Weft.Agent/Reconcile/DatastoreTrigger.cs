using System.Threading.Channels;
using Weft.Datastore;
using Weft.Model;

namespace Weft.Agent.Reconcile;

/// <summary>
/// The agent's one datastore watch, shared by every reconciler: each subscribes with the keys it cares about and a
/// kick channel. A subscriber is kicked when it subscribes, at every (re)start of the watch (after a failure the
/// watch waits briefly and starts again from the current revision: a relist), and on every change to a relevant
/// key. One watch per agent instead of one per reconciler: every change is read once.
/// </summary>
public sealed class DatastoreTrigger(IDatastore store, ILogger<DatastoreTrigger> log) : BackgroundService
{
    private readonly Lock _lock = new();
    private (Func<string, bool> Relevant, ChannelWriter<bool> Kick)[] _subscribers = [];

    public void Subscribe(Func<string, bool> relevant, ChannelWriter<bool> kick)
    {
        lock (_lock) _subscribers = [.. _subscribers, (relevant, kick)];
        kick.TryWrite(true);
    }

    protected override async Task ExecuteAsync(CancellationToken ct)
    {
        while (!ct.IsCancellationRequested)
        {
            try
            {
                var rev = await store.RevisionAsync(ct).ConfigureAwait(false);
                foreach (var s in Volatile.Read(ref _subscribers)) s.Kick.TryWrite(true);
                await foreach (var e in store.WatchAsync(Keys.Root, rev, ct).ConfigureAwait(false))
                    foreach (var s in Volatile.Read(ref _subscribers))
                        if (s.Relevant(e.Key)) s.Kick.TryWrite(true);
            }
            catch (OperationCanceledException) { return; }
            catch (Exception e)
            {
                log.LogWarning("datastore watch failed, relisting: {Error}", e.Message);
                try { await Task.Delay(500, ct).ConfigureAwait(false); } catch (OperationCanceledException) { return; }
            }
        }
    }
}
