using System.Diagnostics;

namespace Weft.Lab;

/// <summary>Runs iproute2 and our own binaries for lab set-up. (The lab is a tool around the dataplane, not in it.)</summary>
internal static class Shell
{
    public static string Run(string file, params string[] args) => RunWith(file, args, null, null);

    public static string RunWith(string file, IReadOnlyList<string> args, string? stdin, IDictionary<string, string>? env)
    {
        var (code, stdout, stderr) = TryRun(file, args, stdin, env);
        if (code != 0) throw new LabException($"`{file} {string.Join(' ', args)}` failed ({code}): {(stderr + stdout).Trim()}");
        return stdout;
    }

    public static (int Code, string Stdout, string Stderr) TryRun(string file, IReadOnlyList<string> args, string? stdin = null, IDictionary<string, string>? env = null)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        if (env is not null) foreach (var (k, v) in env) psi.Environment[k] = v;
        using var p = Process.Start(psi) ?? throw new LabException($"cannot start {file}");
        var o = p.StandardOutput.ReadToEndAsync();
        var e = p.StandardError.ReadToEndAsync();
        if (stdin is not null) p.StandardInput.Write(stdin);
        p.StandardInput.Close();
        p.WaitForExit();
        return (p.ExitCode, o.Result, e.Result);
    }

    public static void Ip(params string[] args) => Run("ip", args);

    /// <summary>Starts a long-lived process in a namespace, detached (own session), output to a log file. Returns its PID.</summary>
    public static int StartDetached(string netns, string logFile, string file, params string[] args)
    {
        var psi = new ProcessStartInfo("setsid") { UseShellExecute = false, RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true };
        // Close every inherited descriptor beyond stdio: a long-lived daemon must not keep open what its starter
        // held (a build lock taken with flock around the tests stays locked for as long as any copy lives).
        const string script = "echo $$; for fd in /proc/$$/fd/*; do fd=${fd##*/}; [ \"$fd\" -gt 2 ] && eval \"exec $fd>&-\" 2>/dev/null; done; exec \"$@\" >>\"$0\" 2>&1 </dev/null";
        foreach (var a in new[] { "--fork", "bash", "-c", script, logFile, "ip", "netns", "exec", netns, file }) psi.ArgumentList.Add(a);
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi) ?? throw new LabException($"cannot start {file}");
        p.StandardInput.Close();
        var pidLine = p.StandardOutput.ReadLine();
        p.WaitForExit();
        return int.TryParse(pidLine, out var pid) ? pid : throw new LabException($"could not start {file} in {netns}: {p.StandardError.ReadToEnd()}");
    }

    /// <summary>
    /// Ends a process we started, by PID, only if it is still the program we started: SIGTERM, then SIGKILL after
    /// 3 s. Our detached processes are not our children, so exit is observed through /proc (a zombie counts as gone).
    /// </summary>
    public static void Stop(int pid, string expected, string? netns = null)
    {
        if (!IsRunning(pid, expected)) return;
        // PIDs wrap quickly here (pid_max 32768): a stale PID may now be another lab's process with the same name.
        if (netns is not null && !InNetns(pid, netns)) return;
        var id = pid.ToString(System.Globalization.CultureInfo.InvariantCulture);
        TryRun("kill", ["-TERM", id]);
        for (var i = 0; i < 150 && IsRunning(pid, expected); i++) Thread.Sleep(20);
        if (IsRunning(pid, expected)) TryRun("kill", ["-KILL", id]);
    }

    /// <summary>Stops every process still inside a lab namespace (after a crash the state file may not list them all).</summary>
    public static void StopAllIn(string netns)
    {
        var (code, stdout, _) = TryRun("ip", ["netns", "pids", netns]);
        if (code != 0) return;
        foreach (var line in stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
            if (int.TryParse(line, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var pid) && pid != Environment.ProcessId)
                Stop(pid, "");
    }

    /// <summary>Is the process inside that named network namespace (`ip netns identify`)?</summary>
    public static bool InNetns(int pid, string netns)
    {
        var (code, stdout, _) = TryRun("ip", ["netns", "identify", pid.ToString(System.Globalization.CultureInfo.InvariantCulture)]);
        return code == 0 && stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Contains(netns, StringComparer.Ordinal);
    }

    public static bool IsRunning(int pid, string expected)
    {
        if (pid <= 0) return false;
        try
        {
            if (File.ReadAllText($"/proc/{pid}/stat").Contains(") Z", StringComparison.Ordinal)) return false;
            var cmdline = File.ReadAllText($"/proc/{pid}/cmdline");
            // Mid-exec (our detached processes exec twice: sh → ip netns exec → the program) cmdline reads empty for a
            // moment; that is the process we started, still alive, not a sign that it exited.
            return cmdline.Length == 0 || cmdline.Contains(expected, StringComparison.Ordinal);
        }
        catch (IOException) { return false; }
    }
}

public sealed class LabException(string message) : Exception(message);
