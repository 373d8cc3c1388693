using System.Text;
using System.Text.Json.Nodes;

namespace Weft.Agent.Install;

/// <summary>
/// `weft-agent install-cni`: what the DaemonSet's init container does on every node before the agent starts. It
/// copies the plugin binaries into the host's CNI bin directory, writes a kubeconfig for the plugin (the service
/// account's token and CA, the API server from KUBERNETES_SERVICE_HOST/PORT) and the network's conflist. Every file
/// is written to a temporary name in its directory and renamed over the old one, so kubelet and containerd never
/// read half a file (containerd turns NetworkReady on as soon as a conflist appears).
/// </summary>
public static class CniInstaller
{
    public const string Usage = """
        usage: weft-agent install-cni [--source-dir /opt/weft/bin] [--cni-bin-dir /host/opt/cni/bin]
                                      [--cni-conf-dir /host/etc/cni/net.d] [--host-cni-conf-dir /etc/cni/net.d]
                                      [--conf-name 10-weft.conflist] [--mode routed|bridge] [--mtu N]
                                      [--service-account-dir /var/run/secrets/kubernetes.io/serviceaccount]
        """;

    public sealed record Options
    {
        public string SourceDir { get; init; } = "/opt/weft/bin";
        public string CniBinDir { get; init; } = "/host/opt/cni/bin";
        public string CniConfDir { get; init; } = "/host/etc/cni/net.d";
        /// <summary>Where the conf directory is on the host: the plugin, run by the host's runtime, reads its kubeconfig there.</summary>
        public string HostCniConfDir { get; init; } = "/etc/cni/net.d";
        public string ConfName { get; init; } = "10-weft.conflist";
        public string Mode { get; init; } = "routed";
        public int? Mtu { get; init; }
        public string ServiceAccountDir { get; init; } = "/var/run/secrets/kubernetes.io/serviceaccount";
        public string? NodeName { get; init; }
    }

    public static Options Parse(IReadOnlyList<string> args)
    {
        var o = new Options { NodeName = Environment.GetEnvironmentVariable("NODE_NAME") };
        for (var i = 0; i < args.Count; i++)
        {
            string Value() => i + 1 < args.Count ? args[++i] : throw new ArgumentException($"{args[i]} needs a value\n{Usage}");
            o = args[i] switch
            {
                "--source-dir" => o with { SourceDir = Value() },
                "--cni-bin-dir" => o with { CniBinDir = Value() },
                "--cni-conf-dir" => o with { CniConfDir = Value() },
                "--host-cni-conf-dir" => o with { HostCniConfDir = Value() },
                "--conf-name" => o with { ConfName = Value() },
                "--mode" => o with { Mode = Value() is var m && m is "routed" or "bridge" ? m : throw new ArgumentException($"--mode {m}: use routed or bridge") },
                "--mtu" => o with { Mtu = int.TryParse(Value(), out var mtu) && mtu is >= 576 and <= 65535 ? mtu : throw new ArgumentException($"--mtu: use 576-65535") },
                "--service-account-dir" => o with { ServiceAccountDir = Value() },
                "--nodename" => o with { NodeName = Value() },
                var a => throw new ArgumentException($"unknown option {a}\n{Usage}"),
            };
        }
        if (!o.ConfName.EndsWith(".conflist", StringComparison.Ordinal) || o.ConfName.Contains('/', StringComparison.Ordinal))
            throw new ArgumentException($"--conf-name {o.ConfName}: a file name ending in .conflist");
        return o;
    }

    /// <summary>Installs; returns the files written (for the log).</summary>
    public static IReadOnlyList<string> Run(Options o)
    {
        var server = ApiServer();
        var token = Path.Combine(o.ServiceAccountDir, "token");
        var ca = Path.Combine(o.ServiceAccountDir, "ca.crt");
        if (!File.Exists(token) || !File.Exists(ca)) throw new ArgumentException($"no service account token and ca.crt in {o.ServiceAccountDir}");
        Directory.CreateDirectory(o.CniBinDir);
        Directory.CreateDirectory(o.CniConfDir);
        var written = new List<string>();
        foreach (var binary in new[] { "weft", "weft-etcd" })
        {
            var to = Path.Combine(o.CniBinDir, binary);
            WriteAtomically(to, File.ReadAllBytes(Path.Combine(o.SourceDir, binary)), UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute |
                UnixFileMode.GroupRead | UnixFileMode.GroupExecute | UnixFileMode.OtherRead | UnixFileMode.OtherExecute);
            written.Add(to);
        }
        var kubeconfigPath = WriteKubeconfig(o, server);
        written.Add(kubeconfigPath);
        var plugin = new JsonObject
        {
            ["type"] = "weft",
            ["datastore"] = "kubernetes://" + Path.Combine(o.HostCniConfDir, KubeconfigName),
            ["mode"] = o.Mode,
        };
        if (o.NodeName is { Length: > 0 } node) plugin["nodename"] = node;
        if (o.Mtu is { } mtu) plugin["mtu"] = mtu;
        var conflist = new JsonObject { ["cniVersion"] = "1.0.0", ["name"] = "weft", ["plugins"] = new JsonArray(plugin) };
        var conflistPath = Path.Combine(o.CniConfDir, o.ConfName);
        WriteAtomically(conflistPath, Encoding.UTF8.GetBytes(conflist.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }) + "\n"),
            UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.OtherRead);
        written.Add(conflistPath);
        return written;
    }

    public const string KubeconfigName = "weft-kubeconfig";

    /// <summary>The API server as a pod sees it (KUBERNETES_SERVICE_HOST/PORT).</summary>
    public static string ApiServer()
    {
        var host = Environment.GetEnvironmentVariable("KUBERNETES_SERVICE_HOST");
        var port = Environment.GetEnvironmentVariable("KUBERNETES_SERVICE_PORT");
        if (string.IsNullOrEmpty(host) || string.IsNullOrEmpty(port))
            throw new ArgumentException("KUBERNETES_SERVICE_HOST/PORT are not set: install-cni runs in a pod");
        return host.Contains(':', StringComparison.Ordinal) ? $"https://[{host}]:{port}" : $"https://{host}:{port}";
    }

    /// <summary>The plugin's kubeconfig: the service account's current token and CA. Returns its path.</summary>
    public static string WriteKubeconfig(Options o, string server)
    {
        var kubeconfig = $"""
            # Written by weft-agent for the weft CNI plugin: the weft-agent service account's credentials.
            apiVersion: v1
            kind: Config
            clusters:
            - name: local
              cluster:
                server: {server}
                certificate-authority-data: {Convert.ToBase64String(File.ReadAllBytes(Path.Combine(o.ServiceAccountDir, "ca.crt")))}
            users:
            - name: weft-cni
              user:
                token: {ServiceAccountToken(o)}
            contexts:
            - name: weft-cni@local
              context: {"{"}cluster: local, user: weft-cni{"}"}
            current-context: weft-cni@local

            """;
        var path = Path.Combine(o.CniConfDir, KubeconfigName);
        WriteAtomically(path, Encoding.UTF8.GetBytes(kubeconfig), UnixFileMode.UserRead | UnixFileMode.UserWrite);
        return path;
    }

    private static string ServiceAccountToken(Options o) => File.ReadAllText(Path.Combine(o.ServiceAccountDir, "token")).Trim();

    /// <summary>
    /// Rewrites the plugin's kubeconfig when kubelet has rotated the projected token (it lasts about an hour; a plugin
    /// left with the old one is refused on every ADD). True when it was rewritten.
    /// </summary>
    public static bool RefreshKubeconfig(Options o)
    {
        var path = Path.Combine(o.CniConfDir, KubeconfigName);
        if (!File.Exists(path)) return false;
        var token = ServiceAccountToken(o);
        var lines = File.ReadAllLines(path).Select(l => l.Trim()).ToList();
        if (lines.Contains("token: " + token)) return false;
        // The server install-cni wrote stays (the agent's own environment may name it differently).
        var server = lines.FirstOrDefault(l => l.StartsWith("server: ", StringComparison.Ordinal))?["server: ".Length..] ?? ApiServer();
        WriteKubeconfig(o, server);
        return true;
    }

    /// <summary>Removes what <see cref="Run"/> installed: the conflist first (the runtime stops calling Weft), then the rest.</summary>
    public static IReadOnlyList<string> Uninstall(Options o)
    {
        var removed = new List<string>();
        foreach (var path in new[] { Path.Combine(o.CniConfDir, o.ConfName), Path.Combine(o.CniConfDir, KubeconfigName), Path.Combine(o.CniBinDir, "weft"), Path.Combine(o.CniBinDir, "weft-etcd") })
        {
            if (!File.Exists(path)) continue;
            File.Delete(path);
            removed.Add(path);
        }
        return removed;
    }

    /// <summary>A temporary file in the same directory, then a rename over the target: readers see the old file or the new one.</summary>
    private static void WriteAtomically(string path, byte[] content, UnixFileMode mode)
    {
        var temp = Path.Combine(Path.GetDirectoryName(path)!, "." + Path.GetFileName(path) + ".weft-tmp");
        using (var f = new FileStream(temp, FileMode.Create, FileAccess.Write, FileShare.None, 4096, FileOptions.WriteThrough))
        {
            f.Write(content);
            f.Flush(flushToDisk: true);
        }
        if (OperatingSystem.IsLinux()) File.SetUnixFileMode(temp, mode);
        File.Move(temp, path, overwrite: true);
    }
}
