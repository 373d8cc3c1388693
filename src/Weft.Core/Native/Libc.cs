using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Weft.Native;

/// <summary>The libc calls .NET does not expose: netlink sockets, setns, statfs. Nothing outside Native/ sees a raw fd.</summary>
internal static unsafe partial class Libc
{
    public const int AF_NETLINK = 16, SOCK_RAW = 3, SOCK_CLOEXEC = 0x80000, NETLINK_ROUTE = 0, NETLINK_NETFILTER = 12;
    public const int CLONE_NEWNET = 0x40000000;
    public const int O_RDONLY = 0, O_CLOEXEC = 0x80000;
    public const int EINTR = 4;
    public const long NSFS_MAGIC = 0x6e736673;

    [LibraryImport("libc.so.6", SetLastError = true)]
    public static partial int socket(int domain, int type, int protocol);

    [LibraryImport("libc.so.6", SetLastError = true)]
    public static partial int bind(SafeHandle fd, byte* addr, int len);

    [LibraryImport("libc.so.6", SetLastError = true)]
    public static partial nint send(SafeHandle fd, byte* buf, nint len, int flags);

    [LibraryImport("libc.so.6", SetLastError = true)]
    public static partial nint recv(SafeHandle fd, byte* buf, nint len, int flags);

    [LibraryImport("libc.so.6", SetLastError = true)]
    public static partial int setsockopt(SafeHandle fd, int level, int name, int* value, int len);

    [LibraryImport("libc.so.6", SetLastError = true)]
    public static partial int close(int fd);

    [LibraryImport("libc.so.6", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int open(string path, int flags);

    [LibraryImport("libc.so.6", SetLastError = true)]
    public static partial int setns(SafeHandle fd, int nstype);

    [LibraryImport("libc.so.6", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int statfs(string path, byte* buf);

    public static SafeFileHandle OpenReadOnly(string path)
    {
        var fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
        {
            var errno = Marshal.GetLastPInvokeError();
            throw new IOException($"open {path}: {Marshal.GetPInvokeErrorMessage(errno)}", errno);
        }
        return new SafeFileHandle(fd, ownsHandle: true);
    }

    [LibraryImport("libc.so.6", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int mount(string source, string target, string fstype, ulong flags, IntPtr data);

    [LibraryImport("libc.so.6", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int umount2(string target, int flags);

    public const long BPF_FS_MAGIC = 0xcafe4a11;
    public const int MNT_DETACH = 2;

    public const int IN_CLOEXEC = 0x80000;
    public const uint IN_MODIFY = 0x2, IN_DELETE_SELF = 0x400, IN_MOVE_SELF = 0x800, IN_IGNORED = 0x8000;

    [LibraryImport("libc.so.6", SetLastError = true)]
    public static partial int inotify_init1(int flags);

    [LibraryImport("libc.so.6", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int inotify_add_watch(SafeHandle fd, string path, uint mask);

    [LibraryImport("libc.so.6", SetLastError = true)]
    public static partial int inotify_rm_watch(SafeHandle fd, int wd);

    [LibraryImport("libc.so.6", SetLastError = true)]
    public static partial nint read(SafeHandle fd, byte* buf, nint count);

    public static bool IsNsfs(string path) => FsType(path) == NSFS_MAGIC;

    public static long FsType(string path)
    {
        var buf = stackalloc byte[256];
        return statfs(path, buf) == 0 ? *(long*)buf : 0;
    }
}

/// <summary>A netlink socket descriptor; closed exactly once, never while a call is using it.</summary>
internal sealed class NetlinkSocketHandle : SafeHandle
{
    public NetlinkSocketHandle(int fd) : base(-1, ownsHandle: true) => SetHandle(fd);
    public override bool IsInvalid => handle == -1;
    protected override bool ReleaseHandle() => Libc.close((int)handle) == 0;
}
