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
        var host = Environment.GetEnvironmentVariable("KUBERNETES_SERVICE_HOST");
        var port = Environment.GetEnvironmentVariable("KUBERNETES_SERVICE_PORT");
        if (string.IsNullOrEmpty(host) || string.IsNullOrEmpty(port))
            throw new ArgumentException("KUBERNETES_SERVICE_HOST/PORT are not set: install-cni runs in a pod");
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
        var server = host.Contains(':', StringComparison.Ordinal) ? $"https://[{host}]:{port}" : $"https://{host}:{port}";
        var kubeconfigName = "weft-kubeconfig";
        var kubeconfig = $"""
            # Written by weft-agent install-cni for the weft CNI plugin: the weft-agent service account's credentials.
            apiVersion: v1
            kind: Config
            clusters:
            - name: local
              cluster:
                server: {server}
                certificate-authority-data: {Convert.ToBase64String(File.ReadAllBytes(ca))}
            users:
            - name: weft-cni
              user:
                token: {File.ReadAllText(token).Trim()}
            contexts:
            - name: weft-cni@local
              context: {"{"}cluster: local, user: weft-cni{"}"}
            current-context: weft-cni@local

            """;
        var kubeconfigPath = Path.Combine(o.CniConfDir, kubeconfigName);
        WriteAtomically(kubeconfigPath, Encoding.UTF8.GetBytes(kubeconfig), UnixFileMode.UserRead | UnixFileMode.UserWrite);
        written.Add(kubeconfigPath);
        var plugin = new JsonObject
        {
            ["type"] = "weft",
            ["datastore"] = "kubernetes://" + Path.Combine(o.HostCniConfDir, kubeconfigName),
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
