using System.Runtime.InteropServices;
using System.Runtime.InteropServices.Marshalling;

namespace Weft.Native;

/// <summary>
/// The dozen libsqlite3 calls the datastore needs. Hand-written rather than Microsoft.Data.Sqlite because the
/// CNI plugin is NativeAOT and exec'd per pod: this binds the system library directly with no provider start-up
/// and no trimming hazards.
/// </summary>
internal static partial class SqliteNative
{
    private const string Lib = "libsqlite3.so.0";

    public const int SQLITE_OK = 0, SQLITE_BUSY = 5, SQLITE_LOCKED = 6, SQLITE_ROW = 100, SQLITE_DONE = 101;
    public const int SQLITE_OPEN_READWRITE = 0x2, SQLITE_OPEN_CREATE = 0x4, SQLITE_OPEN_NOMUTEX = 0x8000, SQLITE_OPEN_EXRESCODE = 0x02000000;
    public const int SQLITE_INTEGER = 1, SQLITE_NULL = 5;

    [LibraryImport(Lib, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int sqlite3_open_v2(string filename, out IntPtr db, int flags, IntPtr vfs);

    [LibraryImport(Lib)]
    public static partial int sqlite3_close_v2(IntPtr db);

    [LibraryImport(Lib)]
    public static partial int sqlite3_busy_timeout(IntPtr db, int ms);

    /// <summary>sqlite3.h: 1006 (1010 is SQLITE_DBCONFIG_DEFENSIVE, which an earlier version passed by mistake).</summary>
    public const int SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE = 1006;

    /// <summary>Variadic in C; on x86-64 SysV integer varargs travel like fixed arguments.</summary>
    [LibraryImport(Lib)]
    public static partial int sqlite3_db_config(IntPtr db, int op, int value, IntPtr result);

    [LibraryImport(Lib)]
    public static partial IntPtr sqlite3_errmsg(IntPtr db);

    [LibraryImport(Lib)]
    public static partial int sqlite3_extended_errcode(IntPtr db);

    [LibraryImport(Lib)]
    public static unsafe partial int sqlite3_prepare_v2(IntPtr db, byte* sql, int nBytes, out IntPtr stmt, IntPtr tail);

    [LibraryImport(Lib)]
    public static partial int sqlite3_step(IntPtr stmt);

    [LibraryImport(Lib)]
    public static partial int sqlite3_reset(IntPtr stmt);

    [LibraryImport(Lib)]
    public static partial int sqlite3_finalize(IntPtr stmt);

    [LibraryImport(Lib)]
    public static partial int sqlite3_bind_int64(IntPtr stmt, int index, long value);

    [LibraryImport(Lib)]
    public static unsafe partial int sqlite3_bind_text(IntPtr stmt, int index, byte* text, int n, IntPtr destructor);

    [LibraryImport(Lib)]
    public static unsafe partial int sqlite3_bind_blob(IntPtr stmt, int index, byte* blob, int n, IntPtr destructor);

    [LibraryImport(Lib)]
    public static partial int sqlite3_bind_null(IntPtr stmt, int index);

    [LibraryImport(Lib)]
    public static partial long sqlite3_column_int64(IntPtr stmt, int col);

    [LibraryImport(Lib)]
    public static partial IntPtr sqlite3_column_blob(IntPtr stmt, int col);

    [LibraryImport(Lib)]
    public static partial IntPtr sqlite3_column_text(IntPtr stmt, int col);

    [LibraryImport(Lib)]
    public static partial int sqlite3_column_bytes(IntPtr stmt, int col);

    [LibraryImport(Lib)]
    public static partial int sqlite3_column_type(IntPtr stmt, int col);

    [LibraryImport(Lib)]
    public static partial int sqlite3_changes(IntPtr db);

    /// <summary>SQLITE_TRANSIENT: sqlite copies the bound buffer before the call returns.</summary>
    public static readonly IntPtr Transient = new(-1);
}

internal sealed class SqliteConnectionHandle : SafeHandle
{
    public SqliteConnectionHandle() : base(IntPtr.Zero, ownsHandle: true) { }
    public SqliteConnectionHandle(IntPtr handle) : this() => SetHandle(handle);
    public override bool IsInvalid => handle == IntPtr.Zero;
    protected override bool ReleaseHandle() => SqliteNative.sqlite3_close_v2(handle) == SqliteNative.SQLITE_OK;
}

internal sealed class SqliteStatementHandle : SafeHandle
{
    public SqliteStatementHandle() : base(IntPtr.Zero, ownsHandle: true) { }
    public SqliteStatementHandle(IntPtr handle) : this() => SetHandle(handle);
    public override bool IsInvalid => handle == IntPtr.Zero;
    protected override bool ReleaseHandle() { _ = SqliteNative.sqlite3_finalize(handle); return true; }
}
