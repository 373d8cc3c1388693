using Weft.Flows.Api;

namespace Weft.Flows;

/// <summary>
/// The node's recent flows: a fixed-size ring (Hubble's default 4095), one writer (the collector) and any number of
/// readers. Memory stays bounded whatever the flow rate: the oldest flow is overwritten. Every flow gets a sequence
/// number, so a follower resumes where it was and learns how many it missed when it fell behind.
/// </summary>
public sealed class FlowRing
{
    public const int DefaultCapacity = 4095;

    private readonly Flow?[] _slots;
    private readonly Lock _lock = new();
    private long _next; // sequence number the next flow gets
    private TaskCompletionSource _pulse = NewPulse();

    public FlowRing(int capacity = DefaultCapacity)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(capacity, 1);
        _slots = new Flow?[capacity];
    }

    public int Capacity => _slots.Length;

    /// <summary>Flows written since start (the newest has sequence Written - 1).</summary>
    public long Written
    {
        get { lock (_lock) return _next; }
    }

    public int Count
    {
        get { lock (_lock) return (int)Math.Min(_next, _slots.Length); }
    }

    public void Add(Flow flow)
    {
        lock (_lock)
        {
            _slots[_next % _slots.Length] = flow;
            _next++;
        }
    }

    /// <summary>Wakes followers; the collector calls it once per batch read from the kernel, not per flow.</summary>
    public void Publish() => Interlocked.Exchange(ref _pulse, NewPulse()).TrySetResult();

    /// <summary>A task that completes at the next <see cref="Publish"/>.</summary>
    public Task NextPublish() => Volatile.Read(ref _pulse).Task;

    /// <summary>
    /// Copies the flows with sequence ≥ <paramref name="from"/> still in the ring into <paramref name="into"/>,
    /// oldest first; returns the sequence to read from next and how many were overwritten before they were read.
    /// </summary>
    public (long Next, long Missed) ReadFrom(long from, List<Flow> into)
    {
        lock (_lock)
        {
            var oldest = Math.Max(0, _next - _slots.Length);
            var missed = Math.Max(0, oldest - from);
            for (var seq = Math.Max(from, oldest); seq < _next; seq++) into.Add(_slots[seq % _slots.Length]!);
            return (_next, missed);
        }
    }

    private static TaskCompletionSource NewPulse() => new(TaskCreationOptions.RunContinuationsAsynchronously);
}
