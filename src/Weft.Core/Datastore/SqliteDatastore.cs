using System.Runtime.CompilerServices;

namespace Weft.Datastore;

/// <summary>
/// The embedded backend: one SQLite file in WAL mode shared by every plugin process and the agent on a machine.
/// Writes take the write lock up front (BEGIN IMMEDIATE) so concurrent compare-and-swaps serialise instead of
/// deadlocking; readers never block writers. Each committed transaction bumps one global revision and appends its
/// changes to an event log, which is what watches read. SQLite has no cross-process notification: writers touch a
/// sidecar file after each commit and watches wake on its inotify events (<see cref="SqliteCommitSignal"/>), polling
/// as a fallback.
/// </summary>
public sealed class SqliteDatastore : IDatastore
{
    private const int SchemaVersion = 1;
    private readonly SqliteDb _db;
    private readonly Lock _lock = new();
    private readonly TimeSpan? _pollInterval;
    private readonly SqliteCommitSignal _signal;

    public string Describe => "sqlite://" + _db.Path;

    public SqliteDatastore(string path, int busyTimeoutMs = 10_000, TimeSpan? watchPollInterval = null)
    {
        _pollInterval = watchPollInterval;
        var dir = System.IO.Path.GetDirectoryName(path);
        if (!string.IsNullOrEmpty(dir))
        {
            try { Directory.CreateDirectory(dir); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            { throw new DatastoreUnavailableException($"cannot create datastore directory {dir}: {e.Message}", e); }
        }
        _db = new SqliteDb(path, busyTimeoutMs);
        _signal = new SqliteCommitSignal(System.IO.Path.GetFullPath(_db.Path));
        try { Initialise(); }
        catch { _db.Dispose(); throw; }
    }

    private void Initialise()
    {
        if (UserVersion() == SchemaVersion) { _db.Exec("PRAGMA synchronous=NORMAL"); return; }
        // WAL: readers don't block the writer; NORMAL sync is durable across process crashes (SIGKILL), which is
        // the failure that matters for a CNI plugin.
        _db.Exec("PRAGMA journal_mode=WAL");
        _db.Exec("PRAGMA synchronous=NORMAL");
        _db.Exec("BEGIN IMMEDIATE");
        try
        {
            if (UserVersion() != SchemaVersion)
            {
                _db.Exec("CREATE TABLE IF NOT EXISTS kv(key TEXT PRIMARY KEY, value BLOB NOT NULL, create_rev INTEGER NOT NULL, mod_rev INTEGER NOT NULL) WITHOUT ROWID");
                _db.Exec("CREATE TABLE IF NOT EXISTS events(rev INTEGER NOT NULL, seq INTEGER NOT NULL, key TEXT NOT NULL, value BLOB, PRIMARY KEY(rev, seq)) WITHOUT ROWID");
                _db.Exec("CREATE TABLE IF NOT EXISTS meta(name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID");
                _db.Exec("INSERT OR IGNORE INTO meta(name, value) VALUES('revision', 0), ('compacted', 0)");
                _db.Exec($"PRAGMA user_version={SchemaVersion}");
            }
            _db.Exec("COMMIT");
        }
        catch
        {
            TryRollback();
            throw;
        }
    }

    private long UserVersion()
    {
        var st = _db.Prepare("PRAGMA user_version");
        var v = st.Step() ? st.Int64(0) : 0;
        st.Reset(); // an unreset statement keeps a read transaction open
        return v;
    }

    public ValueTask<KeyValue?> GetAsync(string key, CancellationToken ct = default)
    {
        lock (_lock)
        {
            var st = _db.Prepare("SELECT value, create_rev, mod_rev FROM kv WHERE key = ?1").Bind(1, key);
            var result = st.Step() ? new KeyValue(key, st.Blob(0), st.Int64(1), st.Int64(2)) : null;
            st.Reset();
            return ValueTask.FromResult(result);
        }
    }

    public ValueTask<RangeResult> ListAsync(string prefix, CancellationToken ct = default)
    {
        lock (_lock)
        {
            // One read transaction so the items and the revision are a consistent snapshot.
            _db.Exec("BEGIN");
            try
            {
                var items = new List<KeyValue>();
                var st = _db.Prepare("SELECT key, value, create_rev, mod_rev FROM kv WHERE key >= ?1 AND key < ?2 ORDER BY key")
                    .Bind(1, prefix).Bind(2, PrefixEnd(prefix));
                while (st.Step()) items.Add(new KeyValue(st.Text(0), st.Blob(1), st.Int64(2), st.Int64(3)));
                st.Reset();
                var rev = ReadMeta("revision");
                _db.Exec("COMMIT");
                return ValueTask.FromResult(new RangeResult(items, rev));
            }
            catch
            {
                TryRollback();
                throw;
            }
        }
    }

    public ValueTask<TxnResult> CommitAsync(IReadOnlyList<Precondition> preconditions, IReadOnlyList<Mutation> mutations, CancellationToken ct = default)
    {
        lock (_lock)
        {
            _db.Exec("BEGIN IMMEDIATE");
            try
            {
                foreach (var pre in preconditions)
                {
                    var st = _db.Prepare("SELECT mod_rev FROM kv WHERE key = ?1").Bind(1, pre.Key);
                    var current = st.Step() ? st.Int64(0) : 0;
                    st.Reset();
                    if (current != pre.ModRevision)
                    {
                        var rev = ReadMeta("revision");
                        _db.Exec("ROLLBACK");
                        return ValueTask.FromResult(new TxnResult(false, rev));
                    }
                }
                var revision = ReadMeta("revision");
                if (mutations.Count == 0)
                {
                    _db.Exec("COMMIT");
                    return ValueTask.FromResult(new TxnResult(true, revision));
                }
                revision++;
                var seq = 0;
                foreach (var m in mutations)
                {
                    if (m.Value is { } value)
                    {
                        _db.Prepare("INSERT INTO kv(key, value, create_rev, mod_rev) VALUES(?1, ?2, ?3, ?3) ON CONFLICT(key) DO UPDATE SET value = excluded.value, mod_rev = excluded.mod_rev")
                            .Bind(1, m.Key).Bind(2, value).Bind(3, revision).Step();
                    }
                    else
                    {
                        var del = _db.Prepare("DELETE FROM kv WHERE key = ?1").Bind(1, m.Key);
                        del.Step();
                        if (Native.SqliteNative.sqlite3_changes(_db.Raw) == 0) continue; // deleting nothing is not an event
                    }
                    _db.Prepare("INSERT INTO events(rev, seq, key, value) VALUES(?1, ?2, ?3, ?4)")
                        .Bind(1, revision).Bind(2, seq++).Bind(3, m.Key).Bind(4, m.Value).Step();
                }
                _db.Prepare("UPDATE meta SET value = ?1 WHERE name = 'revision'").Bind(1, revision).Step();
                _db.Exec("COMMIT");
                _signal.Committed(revision); // after COMMIT: a watcher woken by it always finds the change
                return ValueTask.FromResult(new TxnResult(true, revision));
            }
            catch
            {
                TryRollback();
                throw;
            }
        }
    }

    public ValueTask<long> RevisionAsync(CancellationToken ct = default)
    {
        lock (_lock) return ValueTask.FromResult(ReadMeta("revision"));
    }

    public ValueTask CompactAsync(long revision, CancellationToken ct = default)
    {
        lock (_lock)
        {
            _db.Exec("BEGIN IMMEDIATE");
            try
            {
                _db.Prepare("DELETE FROM events WHERE rev <= ?1").Bind(1, revision).Step();
                _db.Prepare("UPDATE meta SET value = max(value, ?1) WHERE name = 'compacted'").Bind(1, revision).Step();
                _db.Exec("COMMIT");
            }
            catch
            {
                TryRollback();
                throw;
            }
        }
        return ValueTask.CompletedTask;
    }

    public async IAsyncEnumerable<WatchEvent> WatchAsync(string prefix, long afterRevision, [EnumeratorCancellation] CancellationToken ct = default)
    {
        var next = afterRevision;
        var end = PrefixEnd(prefix);
        while (!ct.IsCancellationRequested)
        {
            Task changed;
            lock (_lock) changed = _signal.Next(); // taken before reading, so a commit right after the read still wakes us
            List<WatchEvent> batch;
            lock (_lock)
            {
                // A read transaction, so the events and the revision we advance to are one snapshot.
                _db.Exec("BEGIN");
                try
                {
                    var compacted = ReadMeta("compacted");
                    if (next < compacted) throw new DatastoreCompactedException(next, compacted);
                    batch = [];
                    var st = _db.Prepare("SELECT rev, key, value FROM events WHERE rev > ?1 AND key >= ?2 AND key < ?3 ORDER BY rev, seq")
                        .Bind(1, next).Bind(2, prefix).Bind(3, end);
                    while (st.Step())
                    {
                        var isDelete = st.IsNull(2);
                        batch.Add(new WatchEvent(isDelete ? WatchEventKind.Delete : WatchEventKind.Put, st.Text(1), isDelete ? null : st.Blob(2), st.Int64(0)));
                    }
                    st.Reset();
                    next = Math.Max(next, ReadMeta("revision"));
                    _db.Exec("COMMIT");
                }
                catch
                {
                    TryRollback();
                    throw;
                }
            }
            foreach (var e in batch) yield return e;
            if (batch.Count == 0)
            {
                // The commit signal wakes us at once; the poll only covers a missed signal, so it is slow when inotify
                // works (an idle agent's watches at 50 ms cost ~1.5% of a core) and fast when it does not.
                var poll = _pollInterval ?? (_signal.Watching ? TimeSpan.FromMilliseconds(500) : TimeSpan.FromMilliseconds(50));
                try { await Task.WhenAny(Task.Delay(poll, ct), changed).ConfigureAwait(false); }
                catch (OperationCanceledException) { yield break; }
                if (ct.IsCancellationRequested) yield break;
            }
        }
    }

    private long ReadMeta(string name)
    {
        var st = _db.Prepare("SELECT value FROM meta WHERE name = ?1").Bind(1, name);
        var v = st.Step() ? st.Int64(0) : 0;
        st.Reset();
        return v;
    }

    private void TryRollback()
    {
        try { _db.Exec("ROLLBACK"); } catch (InvalidOperationException) { } catch (DatastoreUnavailableException) { }
    }

    /// <summary>The smallest string greater than every string with this prefix.</summary>
    internal static string PrefixEnd(string prefix) => prefix.Length == 0 ? "\uffff" : prefix[..^1] + (char)(prefix[^1] + 1);

    public void Dispose()
    {
        lock (_lock)
        {
            _signal.Dispose();
            _db.Dispose();
        }
    }
}
