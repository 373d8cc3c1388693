using System.Threading.Channels;
using Weft.Datastore;
using Weft.Model;

namespace Weft.Agent.Reconcile;

/// <summary>
/// The agent's one datastore watch, shared by every reconciler: each subscribes with the keys it cares about and a
/// kick channel. A subscriber is kicked when it subscribes, at every (re)start of the watch (after a failure the
/// watch waits briefly and starts again from the current revision: a relist), and on every change to a relevant
/// key. One watch per agent instead of one per reconciler: every change is read once, into <see cref="Cache"/>,
/// which the reconcilers read; a revision's events are applied to it together before anyone is kicked.
/// </summary>
public sealed class DatastoreTrigger(IDatastore store, ILogger<DatastoreTrigger> log) : BackgroundService
{
    public DatastoreCache Cache { get; } = new(store);

    private readonly Lock _lock = new();
    private (Func<string, bool> Relevant, ChannelWriter<bool> Kick)[] _subscribers = [];

    public void Subscribe(Func<string, bool> relevant, ChannelWriter<bool> kick)
    {
        lock (_lock) _subscribers = [.. _subscribers, (relevant, kick)];
        kick.TryWrite(true);
    }

    private void Flush(List<WatchEvent> pending)
    {
        if (pending.Count == 0) return;
        Cache.Apply(pending);
        foreach (var s in Volatile.Read(ref _subscribers))
            if (pending.Any(e => s.Relevant(e.Key))) s.Kick.TryWrite(true);
        pending.Clear();
    }

    protected override async Task ExecuteAsync(CancellationToken ct)
    {
        while (!ct.IsCancellationRequested)
        {
            try
            {
                var list = await store.ListAsync(Keys.Root, ct).ConfigureAwait(false);
                Cache.Load(list);
                foreach (var s in Volatile.Read(ref _subscribers)) s.Kick.TryWrite(true);
                var pending = new List<WatchEvent>();
                await using var events = store.WatchAsync(Keys.Root, list.Revision, ct).GetAsyncEnumerator(ct);
                while (true)
                {
                    var next = events.MoveNextAsync();
                    // Nothing more ready now, or the next event is of a later revision: this revision is complete.
                    if (!next.IsCompleted) Flush(pending);
                    if (!await next.ConfigureAwait(false)) break;
                    if (pending.Count > 0 && events.Current.Revision != pending[0].Revision) Flush(pending);
                    pending.Add(events.Current);
                }
                Flush(pending);
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
