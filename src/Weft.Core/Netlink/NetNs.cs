using System.Runtime.ExceptionServices;
using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;
using Weft.Native;

namespace Weft.Netlink;

/// <summary>
/// "Do this inside that network namespace." Namespaces are per thread, so the work runs on a dedicated new thread
/// that switches in, runs, and switches back; if switching back fails, the thread simply ends (it is never
/// returned to a pool in the wrong namespace). Sockets opened inside keep their namespace wherever they are used.
/// </summary>
public static class NetNs
{
    public static T Run<T>(string netnsPath, Func<T> action)
    {
        T result = default!;
        ExceptionDispatchInfo? error = null;
        var thread = new Thread(() =>
        {
            try
            {
                using var original = Libc.OpenReadOnly("/proc/thread-self/ns/net");
                using var target = Open(netnsPath);
                if (Libc.setns(target, Libc.CLONE_NEWNET) != 0)
                    throw new IOException($"setns into {netnsPath}: {Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError())}");
                try { result = action(); }
                finally
                {
                    // A failure here leaves this dedicated thread in the wrong namespace; it ends right after.
                    _ = Libc.setns(original, Libc.CLONE_NEWNET);
                }
            }
            catch (Exception e) { error = ExceptionDispatchInfo.Capture(e); }
        }, maxStackSize: 1 << 20) { IsBackground = true, Name = "netns" };
        thread.Start();
        thread.Join();
        error?.Throw();
        return result;
    }

    public static void Run(string netnsPath, Action action) => Run(netnsPath, () => { action(); return 0; });

    /// <summary>The namespace file, e.g. for IFLA_NET_NS_FD.</summary>
    public static SafeFileHandle Open(string netnsPath)
    {
        if (!Exists(netnsPath)) throw new IOException($"{netnsPath} is not a network namespace");
        return Libc.OpenReadOnly(netnsPath);
    }

    /// <summary>True when the path is a namespace file (nsfs), as /var/run/netns/X or /proc/PID/ns/net are.</summary>
    public static bool Exists(string netnsPath) =>
        !string.IsNullOrEmpty(netnsPath) && File.Exists(netnsPath) && Libc.IsNsfs(netnsPath);
}

/// <summary>Reads and writes /proc/sys, which answers for the calling thread's network namespace.</summary>
public static class Sysctl
{
    public static void Write(string relativePath, string value) => File.WriteAllText("/proc/sys/" + relativePath, value);

    public static string? Read(string relativePath)
    {
        try { return File.ReadAllText("/proc/sys/" + relativePath); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return null; }
    }
}
