using System.Runtime.InteropServices;

namespace Weft.Native;

/// <summary>Replaces the running process with another program (execve), handing it bytes as its standard input.</summary>
public static unsafe partial class ExecHandoff
{
    private const uint MFD_CLOEXEC = 1;

    [LibraryImport("libc.so.6", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int memfd_create(string name, uint flags);

    [LibraryImport("libc.so.6", SetLastError = true)]
    private static partial nint write(int fd, byte* buf, nint count);

    [LibraryImport("libc.so.6", SetLastError = true)]
    private static partial long lseek(int fd, long offset, int whence);

    [LibraryImport("libc.so.6", SetLastError = true)]
    private static partial int dup2(int oldfd, int newfd);

    [LibraryImport("libc.so.6", SetLastError = true)]
    private static partial int execv(byte* path, byte** argv);

    /// <summary>
    /// Runs <paramref name="path"/> in place of this process with the same environment, stdout and stderr, and
    /// <paramref name="stdin"/> as its standard input (an in-memory file, since ours has been read already).
    /// Returns only on failure, by throwing.
    /// </summary>
    public static void Replace(string path, ReadOnlySpan<byte> stdin)
    {
        var fd = memfd_create("weft-stdin", MFD_CLOEXEC);
        if (fd < 0) throw Error("memfd_create");
        try
        {
            fixed (byte* p = stdin)
            {
                for (nint done = 0; done < stdin.Length;)
                {
                    var n = write(fd, p + done, stdin.Length - done);
                    if (n < 0)
                    {
                        if (Marshal.GetLastPInvokeError() == Libc.EINTR) continue;
                        throw Error("write");
                    }
                    done += n;
                }
            }
            if (lseek(fd, 0, 0) < 0) throw Error("lseek");
            // dup2 clears close-on-exec on the copy: fd 0 survives the exec, the memfd itself does not.
            if (dup2(fd, 0) < 0) throw Error("dup2");
            var file = System.Text.Encoding.UTF8.GetBytes(path + "\0");
            fixed (byte* f = file)
            {
                var argv = stackalloc byte*[2];
                argv[0] = f;
                argv[1] = null;
                execv(f, argv);
            }
            throw Error("execv " + path);
        }
        finally
        {
            Libc.close(fd);
        }
    }

    private static IOException Error(string what)
    {
        var errno = Marshal.GetLastPInvokeError();
        return new IOException($"{what}: {Marshal.GetPInvokeErrorMessage(errno)}", errno);
    }
}
