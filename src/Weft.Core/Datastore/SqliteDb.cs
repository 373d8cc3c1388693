using System.Runtime.InteropServices;
using System.Text;
using Weft.Native;
using static Weft.Native.SqliteNative;

namespace Weft.Datastore;

/// <summary>A thin, synchronous SQLite connection: prepared statements with positional parameters.</summary>
internal sealed class SqliteDb : IDisposable
{
    private readonly SqliteConnectionHandle _db;
    private readonly Dictionary<string, SqliteStatement> _cache = new(StringComparer.Ordinal);
    public string Path { get; }

    public SqliteDb(string path, int busyTimeoutMs)
    {
        Path = path;
        int rc;
        IntPtr raw;
        try
        {
            rc = sqlite3_open_v2(path, out raw, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, IntPtr.Zero);
        }
        catch (DllNotFoundException e)
        {
            throw new DatastoreUnavailableException("libsqlite3.so.0 is not installed (apt-get install libsqlite3-0)", e);
        }
        _db = new SqliteConnectionHandle(raw);
        if (rc != SQLITE_OK)
        {
            var msg = raw == IntPtr.Zero ? $"code {rc}" : Marshal.PtrToStringUTF8(sqlite3_errmsg(raw));
            _db.Dispose();
            throw new DatastoreUnavailableException($"cannot open sqlite datastore {path}: {msg}");
        }
        _ = sqlite3_busy_timeout(_db.DangerousGetHandle(), busyTimeoutMs);
        // Each plugin process is often the last connection to close: without this, every exit would checkpoint
        // the WAL and fsync. Checkpoints still happen automatically as the WAL grows.
        _ = sqlite3_db_config(_db.DangerousGetHandle(), SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, IntPtr.Zero);
    }

    internal IntPtr Raw => _db.DangerousGetHandle();

    /// <summary>Runs a statement to its end. Cached too: BEGIN/COMMIT come several times per plugin run.</summary>
    public void Exec(string sql)
    {
        var st = Prepare(sql);
        while (st.Step()) { }
        st.Reset();
    }

    /// <summary>A cached prepared statement, reset and ready to bind.</summary>
    public SqliteStatement Prepare(string sql)
    {
        if (!_cache.TryGetValue(sql, out var st))
        {
            st = PrepareUncached(sql);
            _cache[sql] = st;
        }
        st.Reset();
        return st;
    }

    private unsafe SqliteStatement PrepareUncached(string sql)
    {
        var bytes = Encoding.UTF8.GetBytes(sql);
        int rc;
        IntPtr stmt;
        fixed (byte* p = bytes) rc = sqlite3_prepare_v2(Raw, p, bytes.Length, out stmt, IntPtr.Zero);
        if (rc != SQLITE_OK) throw Error(rc, $"prepare \"{sql}\"");
        return new SqliteStatement(this, new SqliteStatementHandle(stmt));
    }

    public Exception Error(int rc, string what)
    {
        var msg = Marshal.PtrToStringUTF8(sqlite3_errmsg(Raw)) ?? $"code {rc}";
        var primary = rc & 0xff;
        if (primary is SQLITE_BUSY or SQLITE_LOCKED)
            return new DatastoreUnavailableException($"sqlite datastore {Path} is busy ({what}): {msg}; another process holds the write lock, try again");
        return new InvalidOperationException($"sqlite datastore {Path}: {what} failed: {msg} (code {rc})");
    }

    public void Dispose()
    {
        foreach (var st in _cache.Values) st.Dispose();
        _cache.Clear();
        _db.Dispose();
    }
}

internal sealed class SqliteStatement(SqliteDb db, SqliteStatementHandle handle) : IDisposable
{
    private IntPtr H => handle.DangerousGetHandle();

    public void Reset() => _ = sqlite3_reset(H);

    public SqliteStatement Bind(int index, long value) { Check(sqlite3_bind_int64(H, index, value)); return this; }

    public unsafe SqliteStatement Bind(int index, string value)
    {
        var bytes = Encoding.UTF8.GetBytes(value);
        fixed (byte* p = bytes) Check(sqlite3_bind_text(H, index, p, bytes.Length, Transient));
        return this;
    }

    public unsafe SqliteStatement Bind(int index, byte[]? value)
    {
        if (value is null) { Check(sqlite3_bind_null(H, index)); return this; }
        fixed (byte* p = value) Check(sqlite3_bind_blob(H, index, value.Length == 0 ? (byte*)1 : p, value.Length, Transient));
        return this;
    }

    /// <summary>True when a row is available; false when done.</summary>
    public bool Step()
    {
        var rc = sqlite3_step(H);
        if (rc == SQLITE_ROW) return true;
        if (rc == SQLITE_DONE) return false;
        _ = sqlite3_reset(H);
        throw db.Error(rc, "step");
    }

    public long Int64(int col) => sqlite3_column_int64(H, col);
    public bool IsNull(int col) => sqlite3_column_type(H, col) == SQLITE_NULL;

    public string Text(int col)
    {
        var p = sqlite3_column_text(H, col);
        return p == IntPtr.Zero ? "" : Marshal.PtrToStringUTF8(p, sqlite3_column_bytes(H, col));
    }

    public byte[] Blob(int col)
    {
        var p = sqlite3_column_blob(H, col);
        var n = sqlite3_column_bytes(H, col);
        if (p == IntPtr.Zero || n == 0) return [];
        var result = new byte[n];
        Marshal.Copy(p, result, 0, n);
        return result;
    }

    private void Check(int rc)
    {
        if (rc != SQLITE_OK) throw db.Error(rc, "bind");
    }

    public void Dispose() => handle.Dispose();
}
