using System.Threading.Channels;

namespace Weft.Agent.Reconcile;

/// <summary>
/// The one loop every dataplane concern runs in. Kicked by the datastore watch for the keys the concern reads;
/// kicks coalesce (one arriving during a run queues exactly one more run, never a backlog); reads come from the
/// watch's cache, which waits for the first full list (in sync) before answering; a failed run is retried with
/// exponential backoff (1 s doubling to 30 s) and reported; a periodic run repairs drift (someone deleting a route or
/// flushing a table by hand). Drivers adopt what the kernel holds on their first run after a restart.
/// </summary>
public abstract class Reconciler(DatastoreTrigger trigger, TimeSpan resync, ILogger log) : BackgroundService
{
    private static readonly TimeSpan FirstRetry = TimeSpan.FromSeconds(1), MaxRetry = TimeSpan.FromSeconds(30);
    private readonly Channel<bool> _kick = Channel.CreateBounded<bool>(new BoundedChannelOptions(1) { FullMode = BoundedChannelFullMode.DropWrite });

    /// <summary>The concern's name in logs: "routes", "policy".</summary>
    protected abstract string Concern { get; }

    /// <summary>Whether a change to this datastore key can change this concern's desired state.</summary>
    protected abstract bool IsInput(string key);

    /// <summary>Computes the desired state and applies the difference. <paramref name="drift"/>: a periodic run (no input changed).</summary>
    protected abstract Task ReconcileAsync(bool drift, CancellationToken ct);

    /// <summary>A run failed; the loop retries after <paramref name="retryIn"/>. Record it where operators look.</summary>
    protected virtual void OnFailed(Exception e, TimeSpan retryIn) { }

    protected override async Task ExecuteAsync(CancellationToken ct)
    {
        trigger.Subscribe(IsInput, _kick.Writer);
        var retry = FirstRetry;
        TimeSpan? wait = null; // null: until a kick or the resync period
        while (!ct.IsCancellationRequested)
        {
            var drift = false;
            using (var timer = CancellationTokenSource.CreateLinkedTokenSource(ct))
            {
                timer.CancelAfter(wait ?? resync);
                try { await _kick.Reader.ReadAsync(timer.Token).ConfigureAwait(false); }
                catch (OperationCanceledException) when (!ct.IsCancellationRequested) { drift = wait is null; }
                catch (OperationCanceledException) { break; }
            }
            try
            {
                await ReconcileAsync(drift, ct).ConfigureAwait(false);
                (retry, wait) = (FirstRetry, null);
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested) { break; }
            catch (Exception e)
            {
                log.LogError("{Concern} reconcile failed, retrying in {Seconds} s: {Error}", Concern, retry.TotalSeconds, e.Message);
                OnFailed(e, retry);
                wait = retry;
                retry = TimeSpan.FromTicks(Math.Min(MaxRetry.Ticks, retry.Ticks * 2));
            }
        }
    }
}
