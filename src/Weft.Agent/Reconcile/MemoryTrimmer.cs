namespace Weft.Agent.Reconcile;

/// <summary>
/// Idle memory is a goal: an agent allocates in bursts (start-up, a reconcile, a flow flood) and then sits for hours,
/// and the GC keeps a burst's budget committed until the next collection that may never come while idle. Once the
/// allocation rate has settled after a burst, one aggressive collection compacts the heap and gives the pages back.
/// </summary>
public sealed class MemoryTrimmer(ILogger<MemoryTrimmer> log) : BackgroundService
{
    private static readonly TimeSpan Period = TimeSpan.FromSeconds(5);
    private const long Burst = 2 << 20; // allocated since the last trim
    private const long Quiet = 256 << 10; // allocated in the last period: settled

    protected override async Task ExecuteAsync(CancellationToken ct)
    {
        long trimmedAt = 0, last = GC.GetTotalAllocatedBytes();
        using var timer = new PeriodicTimer(Period);
        try
        {
            while (await timer.WaitForNextTickAsync(ct).ConfigureAwait(false))
            {
                var now = GC.GetTotalAllocatedBytes();
                var quiet = now - last < Quiet;
                last = now;
                if (!quiet || now - trimmedAt < Burst) continue;
                var before = GC.GetGCMemoryInfo().TotalCommittedBytes;
                GC.Collect(2, GCCollectionMode.Aggressive, blocking: true, compacting: true);
                trimmedAt = GC.GetTotalAllocatedBytes();
                log.LogDebug("heap trimmed: committed {Before} → {After} KiB", before / 1024, GC.GetGCMemoryInfo().TotalCommittedBytes / 1024);
            }
        }
        catch (OperationCanceledException) { }
    }
}
