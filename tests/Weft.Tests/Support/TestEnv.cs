using System.Diagnostics;
using System.Text;

namespace Weft.Tests.Support;

/// <summary>Where the built programs are, and helpers to run processes the way a runtime or an operator would.</summary>
public static class TestEnv
{
    public static string RepoRoot { get; } = FindRoot();
    public static string Dist => Path.Combine(RepoRoot, "dist");
    public static string WeftPlugin => Path.Combine(Dist, "weft");
    public static string Weftctl => Path.Combine(Dist, "weftctl");
    /// <summary>A document of the chapter, as written: CI lays shared/ beside the checkout.</summary>
    public static string SeedDocument(string file) => Path.Combine(RepoRoot, "..", "shared", "seed-documents", file);

    /// <summary>The command succeeded (else the assertion shows its output); returns it for reading.</summary>
    public static ProcessResult Ok(ProcessResult r)
    {
        Assert.True(r.ExitCode == 0, r.Stdout + r.Stderr);
        return r;
    }
    public const string ReferencePluginDir = "/usr/lib/cni";
    public static bool IsRoot => Environment.UserName == "root" || geteuid() == 0;

    [System.Runtime.InteropServices.DllImport("libc")]
    private static extern uint geteuid();

    private static string FindRoot()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "Weft.slnx"))) dir = dir.Parent;
        return dir?.FullName ?? throw new InvalidOperationException("cannot find the repository root (Weft.slnx) above " + AppContext.BaseDirectory);
    }

    /// <summary>A unique scratch directory under the repo's .tmp, removed by the caller.</summary>
    public static string TempDir(string tag)
    {
        var dir = Path.Combine(Path.GetTempPath(), $"weft-test-{Environment.ProcessId}-{tag}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        return dir;
    }

    public sealed record ProcessResult(int ExitCode, string Stdout, string Stderr, TimeSpan Elapsed);

    public static ProcessResult Run(string file, IEnumerable<string> args, string? stdin = null, IDictionary<string, string>? env = null, TimeSpan? timeout = null)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        if (env is not null) foreach (var (k, v) in env) psi.Environment[k] = v;
        var sw = Stopwatch.StartNew();
        using var p = Process.Start(psi)!;
        var outTask = p.StandardOutput.ReadToEndAsync();
        var errTask = p.StandardError.ReadToEndAsync();
        if (stdin is not null) p.StandardInput.Write(stdin);
        p.StandardInput.Close();
        if (!p.WaitForExit(timeout ?? TimeSpan.FromSeconds(60)))
        {
            p.Kill(entireProcessTree: true);
            throw new TimeoutException($"{file} {string.Join(' ', args)} did not finish");
        }
        p.WaitForExit();
        return new ProcessResult(p.ExitCode, outTask.Result, errTask.Result, sw.Elapsed);
    }

    /// <summary>Runs a command and fails the test if it exits non-zero.</summary>
    public static string Sh(string command)
    {
        var r = Run("/bin/sh", ["-c", command]);
        if (r.ExitCode != 0) throw new InvalidOperationException($"`{command}` failed ({r.ExitCode}): {r.Stderr}{r.Stdout}");
        return r.Stdout;
    }

    public static ProcessResult TrySh(string command) => Run("/bin/sh", ["-c", command]);


    public static ProcessResult Ctl(string datastoreUri, params string[] args) =>
        Run(Weftctl, args, env: new Dictionary<string, string> { ["WEFT_DATASTORE"] = datastoreUri });

    public static ProcessResult CtlIn(string datastoreUri, string stdin, params string[] args) =>
        Run(Weftctl, args, stdin, new Dictionary<string, string> { ["WEFT_DATASTORE"] = datastoreUri });

    public static string Utf8(byte[] b) => Encoding.UTF8.GetString(b);
}
