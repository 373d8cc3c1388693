using System.Threading.Channels;
using Weft.Datastore;
using Weft.Model;

namespace Weft.Agent.Reconcile;

/// <summary>
/// The watch side of a reconciler: kick once at every (re)start of the watch, then on every change to a key the
/// reconciler cares about; on failure wait briefly and watch again from the current revision (a relist).
/// </summary>
public static class DatastoreTrigger
{
    public static async Task WatchAsync(IDatastore store, Func<string, bool> relevant, ChannelWriter<bool> kick, ILogger log, string what, CancellationToken ct)
    {
        while (!ct.IsCancellationRequested)
        {
            try
            {
                var rev = await store.RevisionAsync(ct).ConfigureAwait(false);
                kick.TryWrite(true);
                await foreach (var e in store.WatchAsync(Keys.Root, rev, ct).ConfigureAwait(false))
                    if (relevant(e.Key)) kick.TryWrite(true);
            }
            catch (OperationCanceledException) { return; }
            catch (Exception e)
            {
                log.LogWarning("{What} watch failed, relisting: {Error}", what, e.Message);
                try { await Task.Delay(500, ct).ConfigureAwait(false); } catch (OperationCanceledException) { return; }
            }
        }
    }
}
