namespace Weft.Datastore;

/// <summary>One key with its value and the revisions that created and last changed it (etcd's model).</summary>
public sealed record KeyValue(string Key, byte[] Value, long CreateRevision, long ModRevision);

public sealed record RangeResult(IReadOnlyList<KeyValue> Items, long Revision);

/// <summary>A transaction guard: the key's current mod revision must equal <see cref="ModRevision"/> (0 = the key must not exist).</summary>
public readonly record struct Precondition(string Key, long ModRevision)
{
    public static Precondition Absent(string key) => new(key, 0);
}

/// <summary>A write inside a transaction: put when <see cref="Value"/> is set, delete otherwise.</summary>
public readonly record struct Mutation(string Key, byte[]? Value)
{
    public static Mutation Put(string key, byte[] value) => new(key, value);
    public static Mutation Delete(string key) => new(key, null);
}

public sealed record TxnResult(bool Succeeded, long Revision);

public enum WatchEventKind { Put, Delete }

public sealed record WatchEvent(WatchEventKind Kind, string Key, byte[]? Value, long Revision);

/// <summary>
/// The datastore contract every backend (sqlite, etcd, kubernetes) implements. Revisions increase by one per
/// committed transaction; every write is a compare-and-swap transaction so concurrent plugins and agents never
/// overwrite each other blindly.
/// </summary>
public interface IDatastore : IDisposable
{
    /// <summary>A short description for status output, e.g. "sqlite:///var/lib/weft/weft.db".</summary>
    string Describe { get; }

    ValueTask<KeyValue?> GetAsync(string key, CancellationToken ct = default);

    ValueTask<RangeResult> ListAsync(string prefix, CancellationToken ct = default);

    /// <summary>Atomically: if every precondition holds, apply every mutation. Otherwise change nothing.</summary>
    ValueTask<TxnResult> CommitAsync(IReadOnlyList<Precondition> preconditions, IReadOnlyList<Mutation> mutations, CancellationToken ct = default);

    /// <summary>Every change under <paramref name="prefix"/> after <paramref name="afterRevision"/>, then new ones as they happen.</summary>
    /// <exception cref="DatastoreCompactedException">the history before that revision was compacted away.</exception>
    IAsyncEnumerable<WatchEvent> WatchAsync(string prefix, long afterRevision, CancellationToken ct = default);

    ValueTask<long> RevisionAsync(CancellationToken ct = default);

    /// <summary>Drop history at or below <paramref name="revision"/>; watches from older revisions then fail.</summary>
    ValueTask CompactAsync(long revision, CancellationToken ct = default);
}

/// <summary>The datastore could not be reached or stayed locked past the timeout: retry later (CNI code 11).</summary>
public sealed class DatastoreUnavailableException(string message, Exception? inner = null) : Exception(message, inner);

public sealed class DatastoreCompactedException(long requested, long compacted)
    : Exception($"revision {requested} has been compacted (history starts after {compacted}); list again and watch from the new revision")
{
    public long CompactedRevision { get; } = compacted;
}

public static class DatastoreExtensions
{
    /// <summary>Every record under <paramref name="prefix"/>, decoded, in key order.</summary>
    public static async Task<List<T>> ListRecordsAsync<T>(this IDatastore store, string prefix, System.Text.Json.Serialization.Metadata.JsonTypeInfo<T> info, CancellationToken ct = default) =>
        (await store.ListAsync(prefix, ct).ConfigureAwait(false)).Items.Select(kv => Weft.Model.Codec.Decode(kv.Value, info, kv.Key)).ToList();

    /// <summary>Compare-and-swap of one key: <paramref name="expectedModRevision"/> 0 creates, -1 writes unconditionally.</summary>
    public static async ValueTask<TxnResult> PutAsync(this IDatastore store, string key, byte[] value, long expectedModRevision, CancellationToken ct = default)
    {
        var pre = expectedModRevision < 0 ? Array.Empty<Precondition>() : [new Precondition(key, expectedModRevision)];
        return await store.CommitAsync(pre, [Mutation.Put(key, value)], ct).ConfigureAwait(false);
    }

    public static async ValueTask<TxnResult> DeleteAsync(this IDatastore store, string key, long expectedModRevision, CancellationToken ct = default)
    {
        var pre = expectedModRevision < 0 ? Array.Empty<Precondition>() : [new Precondition(key, expectedModRevision)];
        return await store.CommitAsync(pre, [Mutation.Delete(key)], ct).ConfigureAwait(false);
    }
}
