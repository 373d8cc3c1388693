using System.Buffers.Binary;
using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;
using Weft.Native;

namespace Weft.Datastore;

/// <summary>
/// Cross-process "a transaction committed" for the SQLite backend. Writers touch a sidecar file (`DB-notify`) after
/// COMMIT; watchers hold an inotify watch on that one file. Watching the WAL instead (the first design) woke readers
/// on SQLite's page writes, which come before the commit is visible: a reader that raced the commit saw nothing and
/// slept until its fallback poll, so a policy could reach the agents half a second late.
/// </summary>
internal sealed class SqliteCommitSignal : IDisposable
{
    private readonly string _path;
    private SafeFileHandle? _writer;
    private SafeFileHandle? _inotify;
    private int _watch = -1;
    private volatile bool _disposed;
    private TaskCompletionSource _changed = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public SqliteCommitSignal(string databasePath) => _path = databasePath + "-notify";

    /// <summary>False when inotify is unavailable (e.g. the watch limit is reached): watchers then poll quickly.</summary>
    public bool Watching { get; private set; }

    /// <summary>After a commit: one 8-byte write, which every watcher's inotify sees. Never fails the commit.</summary>
    public void Committed(long revision)
    {
        try
        {
            _writer ??= File.OpenHandle(_path, FileMode.OpenOrCreate, FileAccess.Write, FileShare.ReadWrite | FileShare.Delete);
            Span<byte> bytes = stackalloc byte[8];
            BinaryPrimitives.WriteInt64LittleEndian(bytes, revision);
            RandomAccess.Write(_writer, bytes, 0);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Watchers still see the change by their poll; a commit must not fail for want of a notification.
            _writer?.Dispose();
            _writer = null;
        }
    }

    /// <summary>Completes at the next commit by any process after this call; starts the watch on first use.</summary>
    public Task Next()
    {
        if (_inotify is null && !_disposed) Start();
        return Volatile.Read(ref _changed).Task;
    }

    private unsafe void Start()
    {
        try
        {
            using (File.Open(_path, FileMode.OpenOrCreate, FileAccess.Write, FileShare.ReadWrite | FileShare.Delete)) { }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return; }
        var fd = Libc.inotify_init1(Libc.IN_CLOEXEC);
        if (fd < 0) return;
        _inotify = new SafeFileHandle(fd, ownsHandle: true);
        _watch = Libc.inotify_add_watch(_inotify, _path, Libc.IN_MODIFY | Libc.IN_DELETE_SELF | Libc.IN_MOVE_SELF);
        if (_watch < 0) return;
        Watching = true;
        new Thread(Loop) { IsBackground = true, Name = "sqlite-commit-watch" }.Start();
    }

    private unsafe void Loop()
    {
        var buffer = stackalloc byte[4096];
        while (!_disposed)
        {
            var n = Libc.read(_inotify!, buffer, 4096);
            if (n < 0 && Marshal.GetLastPInvokeError() == Libc.EINTR) continue;
            if (n <= 0) break;
            var gone = false;
            for (nint off = 0; off + 16 <= n; off += 16 + (nint)(*(uint*)(buffer + off + 12)))
                gone |= (*(uint*)(buffer + off + 4) & (Libc.IN_IGNORED | Libc.IN_DELETE_SELF | Libc.IN_MOVE_SELF)) != 0;
            Interlocked.Exchange(ref _changed, new(TaskCreationOptions.RunContinuationsAsynchronously)).TrySetResult();
            if (gone) break; // the file was removed: watchers fall back to polling
        }
        Watching = false;
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        // Removing the watch queues IN_IGNORED, which wakes the reader thread so it can see _disposed and exit.
        if (_inotify is not null && _watch >= 0) Libc.inotify_rm_watch(_inotify, _watch);
        _writer?.Dispose();
        // The reader thread may still be in read(): let it exit before the descriptor goes (SafeHandle refcounts it).
        _inotify?.Dispose();
    }
}
