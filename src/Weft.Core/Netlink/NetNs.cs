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

    /// <summary>
    /// For a one-shot process (the CNI plugin), where a new thread is ~1 ms of its run: the calling thread switches
    /// in, runs <paramref name="action"/>, and switches back. The action must be short and synchronous (no await:
    /// a continuation could run on another thread, in the wrong namespace). If switching back fails, this thread is
    /// stuck in the wrong namespace: the process is marked <see cref="Stranded"/>, after which every netlink socket
    /// and sysctl access throws, and this throws too, so the caller fails (and rolls back what is namespace-free).
    /// </summary>
    public static T RunOnCallingThread<T>(string netnsPath, Func<T> action)
    {
        ThrowIfStranded();
        using var original = Libc.OpenReadOnly("/proc/thread-self/ns/net");
        using var target = Open(netnsPath);
        if (Libc.setns(target, Libc.CLONE_NEWNET) != 0)
            throw new IOException($"setns into {netnsPath}: {Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError())}");
        T result;
        try { result = action(); }
        finally { SwitchBack(original, netnsPath); }
        ThrowIfStranded(); // the action succeeded but this thread is still inside: the caller must not go on
        return result;
    }

    private static void SwitchBack(SafeFileHandle original, string netnsPath)
    {
        if (Libc.setns(original, Libc.CLONE_NEWNET) == 0 || Libc.setns(original, Libc.CLONE_NEWNET) == 0) return;
        Stranded = true;
        StrandedReason = $"setns back out of {netnsPath}: {Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError())}";
    }

    private static string StrandedReason { get; set; } = "";

    /// <summary>True once a <see cref="RunOnCallingThread"/> could not switch back.</summary>
    public static bool Stranded { get; private set; }

    internal static void ThrowIfStranded()
    {
        if (Stranded) throw new IOException($"{StrandedReason}; this process is stuck in a pod's network namespace and refuses further network changes");
    }

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
    // One open and one write: File.WriteAllText's stream and encoder machinery cost more than the syscalls here.
    public static void Write(string relativePath, string value)
    {
        NetNs.ThrowIfStranded();
        using var h = File.OpenHandle("/proc/sys/" + relativePath, FileMode.Open, FileAccess.Write, FileShare.ReadWrite);
        RandomAccess.Write(h, System.Text.Encoding.UTF8.GetBytes(value), 0);
    }

    public static string? Read(string relativePath)
    {
        NetNs.ThrowIfStranded();
        try
        {
            using var h = File.OpenHandle("/proc/sys/" + relativePath, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
            var buf = new byte[4096];
            var n = 0;
            while (true)
            {
                var got = RandomAccess.Read(h, buf.AsSpan(n), n);
                if (got == 0) break;
                n += got;
                if (n == buf.Length) Array.Resize(ref buf, buf.Length * 2);
            }
            return System.Text.Encoding.UTF8.GetString(buf, 0, n);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return null; }
    }
}
