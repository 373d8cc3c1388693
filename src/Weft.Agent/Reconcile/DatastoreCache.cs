using Weft.Datastore;

namespace Weft.Agent.Reconcile;

/// <summary>
/// The agent's copy of everything under /weft/, kept by the one datastore watch (<see cref="DatastoreTrigger"/>):
/// reconcilers read it instead of listing the datastore on every change. Against etcd a policy recompute listed five
/// prefixes, each a linearizable read through raft, which alone put tens of milliseconds between a commit and its
/// enforcement. Writes, watches and compaction go to the datastore itself.
/// </summary>
public sealed class DatastoreCache(IDatastore inner) : IDatastore
{
    private readonly Lock _lock = new();
    private Dictionary<string, KeyValue> _items = new(StringComparer.Ordinal);
    // Keys in order, so a prefix list costs O(log n + k), not a scan of every key (50k pods are 50k endpoint keys).
    private SortedSet<string> _keys = new(StringComparer.Ordinal);
    private long _revision;
    private readonly TaskCompletionSource _loaded = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public string Describe => inner.Describe;

    /// <summary>Replaces the whole content (the watch's initial list and every relist).</summary>
    public void Load(RangeResult list)
    {
        var items = new Dictionary<string, KeyValue>(StringComparer.Ordinal);
        foreach (var kv in list.Items) items[kv.Key] = kv;
        var keys = new SortedSet<string>(items.Keys, StringComparer.Ordinal);
        lock (_lock)
        {
            (_items, _keys, _revision) = (items, keys, list.Revision);
            _listedAt = list.Revision;
            _deleted.Clear();
        }
        _loaded.TrySetResult();
    }

    // The revision of the last list, and the keys deleted since with the revision of their deletion: a replayed event
    // is judged by its own key, since the kubernetes datastore's watches (one per kind) interleave their revisions.
    private long _listedAt;
    private readonly Dictionary<string, long> _deleted = new(StringComparer.Ordinal);
    private const int MaxTombstones = 100_000;

    /// <summary>
    /// Applies one revision's events together, so no reader sees half of a transaction. An event no newer than what
    /// the cache holds for its key (a duplicate, or history replayed after a reconnect) changes nothing. Events of
    /// different keys may come in any order of revisions (the kubernetes datastore watches each kind apart).
    /// </summary>
    public void Apply(IReadOnlyList<WatchEvent> events)
    {
        lock (_lock)
        {
            foreach (var e in events)
            {
                var known = _items.TryGetValue(e.Key, out var held) ? held.ModRevision : _deleted.GetValueOrDefault(e.Key, _listedAt);
                if (e.Revision <= known) continue;
                if (e.Kind == WatchEventKind.Delete)
                {
                    _items.Remove(e.Key);
                    _keys.Remove(e.Key);
                    if (_deleted.Count >= MaxTombstones) _deleted.Clear(); // bounded: an old replay may then briefly resurrect a key
                    _deleted[e.Key] = e.Revision;
                }
                else
                {
                    _keys.Add(e.Key);
                    _deleted.Remove(e.Key);
                    var created = _items.TryGetValue(e.Key, out var old) ? old.CreateRevision : e.Revision;
                    _items[e.Key] = new KeyValue(e.Key, e.Value ?? [], created, e.Revision);
                }
                _revision = Math.Max(_revision, e.Revision);
            }
        }
    }

    public async ValueTask<KeyValue?> GetAsync(string key, CancellationToken ct = default)
    {
        await _loaded.Task.WaitAsync(ct).ConfigureAwait(false);
        lock (_lock) return _items.GetValueOrDefault(key);
    }

    public async ValueTask<RangeResult> ListAsync(string prefix, CancellationToken ct = default)
    {
        await _loaded.Task.WaitAsync(ct).ConfigureAwait(false);
        lock (_lock)
        {
            var list = new List<KeyValue>();
            if (prefix.Length == 0) list.AddRange(_keys.Select(k => _items[k]));
            else
                foreach (var key in _keys.GetViewBetween(prefix, prefix[..^1] + (char)(prefix[^1] + 1)))
                    if (key.StartsWith(prefix, StringComparison.Ordinal)) list.Add(_items[key]); // the view's upper end is inclusive
            return new RangeResult(list, _revision);
        }
    }

    /// <summary>The revision the cache reflects: every change up to it is in what a read returns next.</summary>
    public async ValueTask<long> RevisionAsync(CancellationToken ct = default)
    {
        await _loaded.Task.WaitAsync(ct).ConfigureAwait(false);
        lock (_lock) return _revision;
    }

    public ValueTask<TxnResult> CommitAsync(IReadOnlyList<Precondition> preconditions, IReadOnlyList<Mutation> mutations, CancellationToken ct = default) =>
        inner.CommitAsync(preconditions, mutations, ct);

    public IAsyncEnumerable<WatchEvent> WatchAsync(string prefix, long afterRevision, CancellationToken ct = default) => inner.WatchAsync(prefix, afterRevision, ct);

    public ValueTask CompactAsync(long revision, CancellationToken ct = default) => inner.CompactAsync(revision, ct);

    /// <summary>The datastore belongs to whoever opened it; the cache only reads through it.</summary>
    public void Dispose() { }
}
