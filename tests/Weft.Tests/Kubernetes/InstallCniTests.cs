using System.Text.Json.Nodes;
using Weft.Kubernetes;
using Weft.Tests.Support;

namespace Weft.Tests.Kubernetes;

/// <summary>`weft-agent install-cni`, the DaemonSet's init container, run as the kubelet would run it (a service account, KUBERNETES_SERVICE_HOST/PORT).</summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class InstallCniTests : IDisposable
{
    private readonly string _dir = TestEnv.TempDir("installcni");

    public void Dispose() => Directory.Delete(_dir, true);

    [Fact]
    public void Install_writes_the_plugin_its_kubeconfig_and_the_conflist_and_replaces_an_old_one_whole()
    {
        var sa = Directory.CreateDirectory(Path.Combine(_dir, "sa")).FullName;
        File.WriteAllText(Path.Combine(sa, "token"), "sa-token-1\n");
        File.WriteAllText(Path.Combine(sa, "ca.crt"), "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n");
        var bin = Path.Combine(_dir, "opt-cni-bin");
        var net = Directory.CreateDirectory(Path.Combine(_dir, "etc-cni-net.d")).FullName;
        File.WriteAllText(Path.Combine(net, "10-weft.conflist"), "{\"old\": true}");
        var env = new Dictionary<string, string> { ["KUBERNETES_SERVICE_HOST"] = "10.96.0.1", ["KUBERNETES_SERVICE_PORT"] = "443", ["NODE_NAME"] = "worker-7" };
        var r = TestEnv.Run(Path.Combine(TestEnv.Dist, "weft-agent"),
            ["install-cni", "--source-dir", TestEnv.Dist, "--cni-bin-dir", bin, "--cni-conf-dir", net, "--service-account-dir", sa, "--mtu", "1450"], env: env);
        Assert.True(r.ExitCode == 0, r.Stdout + r.Stderr);

        foreach (var plugin in new[] { "weft", "weft-etcd" })
        {
            var installed = Path.Combine(bin, plugin);
            Assert.Equal(new FileInfo(Path.Combine(TestEnv.Dist, plugin)).Length, new FileInfo(installed).Length);
            Assert.True(File.GetUnixFileMode(installed).HasFlag(UnixFileMode.OtherExecute));
        }
        var conflist = JsonNode.Parse(File.ReadAllText(Path.Combine(net, "10-weft.conflist")))!;
        Assert.Equal("weft", conflist["name"]!.GetValue<string>());
        var weft = conflist["plugins"]![0]!;
        Assert.Equal("weft", weft["type"]!.GetValue<string>());
        Assert.Equal("kubernetes:///etc/cni/net.d/weft-kubeconfig", weft["datastore"]!.GetValue<string>());
        Assert.Equal("worker-7", weft["nodename"]!.GetValue<string>());
        Assert.Equal(1450, weft["mtu"]!.GetValue<int>());
        // The plugin's kubeconfig: the API server, the service account's CA and token, readable by its owner alone.
        var kubeconfig = Path.Combine(net, "weft-kubeconfig");
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(kubeconfig));
        var text = File.ReadAllText(kubeconfig);
        Assert.Contains("server: https://10.96.0.1:443", text);
        Assert.Contains("token: sa-token-1", text);
        Assert.Contains("certificate-authority-data: " + Convert.ToBase64String(File.ReadAllBytes(Path.Combine(sa, "ca.crt"))), text);
        Assert.Empty(Directory.GetFiles(net, "*.weft-tmp*").Concat(Directory.GetFiles(bin, "*.weft-tmp*")));
        // The conflist is what the plugin accepts (its own parser, as the runtime would hand it over).
        var version = TestEnv.Run(Path.Combine(TestEnv.Dist, "weft"), [], File.ReadAllText(Path.Combine(net, "10-weft.conflist")),
            new Dictionary<string, string> { ["CNI_COMMAND"] = "VERSION" });
        Assert.Equal(0, version.ExitCode);

        // Outside a pod it says so, and writes nothing.
        var outside = TestEnv.Run(Path.Combine(TestEnv.Dist, "weft-agent"), ["install-cni", "--cni-conf-dir", Path.Combine(_dir, "none")],
            env: new Dictionary<string, string> { ["KUBERNETES_SERVICE_HOST"] = "", ["KUBERNETES_SERVICE_PORT"] = "" });
        Assert.Equal(2, outside.ExitCode);
        Assert.Contains("KUBERNETES_SERVICE_HOST", outside.Stderr);
        Assert.False(Directory.Exists(Path.Combine(_dir, "none")));
        Assert.Equal(2, TestEnv.Run(Path.Combine(TestEnv.Dist, "weft-agent"), ["install-cni", "--mode", "mesh"], env: env).ExitCode);
    }

    /// <summary>
    /// The agent keeps what install-cni wrote: the plugin's kubeconfig follows token rotation, and the files go only
    /// when the DaemonSet is deleted (`kubectl delete -f`), never on an ordinary stop or when the API cannot say.
    /// </summary>
    [Fact]
    public async Task The_agent_follows_token_rotation_and_removes_the_cni_files_only_when_its_daemonset_is_deleted()
    {
        var sa = Directory.CreateDirectory(Path.Combine(_dir, "sa")).FullName;
        File.WriteAllText(Path.Combine(sa, "token"), "sa-token-1\n");
        File.WriteAllText(Path.Combine(sa, "ca.crt"), "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n");
        var o = new Weft.Agent.Install.CniInstaller.Options
        {
            CniBinDir = Directory.CreateDirectory(Path.Combine(_dir, "bin")).FullName, CniConfDir = Directory.CreateDirectory(Path.Combine(_dir, "net.d")).FullName, ServiceAccountDir = sa,
        };
        var kubeconfig = Weft.Agent.Install.CniInstaller.WriteKubeconfig(o, "https://10.96.0.1:443");
        string[] files = [Path.Combine(o.CniConfDir, o.ConfName), Path.Combine(o.CniBinDir, "weft"), Path.Combine(o.CniBinDir, "weft-etcd")];
        foreach (var f in files) File.WriteAllText(f, "installed");
        var other = Path.Combine(o.CniConfDir, "05-other.conflist");
        File.WriteAllText(other, "{}");

        Assert.False(Weft.Agent.Install.CniInstaller.RefreshKubeconfig(o));
        File.WriteAllText(Path.Combine(sa, "token"), "sa-token-2\n"); // kubelet rotated the projected token
        Assert.True(Weft.Agent.Install.CniInstaller.RefreshKubeconfig(o));
        var text = File.ReadAllText(kubeconfig);
        Assert.Contains("token: sa-token-2", text);
        Assert.DoesNotContain("sa-token-1", text);
        Assert.Contains("server: https://10.96.0.1:443", text);
        Assert.False(Weft.Agent.Install.CniInstaller.RefreshKubeconfig(o));

        await using var api = new Weft.Lab.LabApiServer();
        api.RequiredToken = "admin";
        api.Bind("agent", "system:serviceaccount:weft-system:weft-agent", Weft.Lab.LabApiServer.WeftAgentRole());
        using var http = new HttpClient { BaseAddress = api.BaseAddress };
        http.DefaultRequestHeaders.Authorization = new("Bearer", "admin");
        const string path = "/apis/apps/v1/namespaces/weft-system/daemonsets/weft-node";
        var created = await http.PostAsync("/apis/apps/v1/namespaces/weft-system/daemonsets",
            new StringContent("""{"apiVersion":"apps/v1","kind":"DaemonSet","metadata":{"name":"weft-node","namespace":"weft-system"}}""", System.Text.Encoding.UTF8, "application/json"));
        Assert.True(created.IsSuccessStatusCode, await created.Content.ReadAsStringAsync());
        using var agentHttp = new HttpClient();
        using var agentApi = new KubeDatastore(agentHttp, api.BaseAddress, (r, _) => { r.Headers.Authorization = new("Bearer", "agent"); return Task.CompletedTask; });

        async Task StopAgentAsync()
        {
            var keeper = new Weft.Agent.Install.CniKeeper(o, agentApi, path, Microsoft.Extensions.Logging.Abstractions.NullLogger<Weft.Agent.Install.CniKeeper>.Instance);
            await keeper.StartAsync(CancellationToken.None);
            await keeper.StopAsync(CancellationToken.None);
        }
        await StopAgentAsync(); // a restart or rolling update: the DaemonSet is still there
        Assert.All(files.Append(kubeconfig), f => Assert.True(File.Exists(f), f));

        Assert.True((await http.DeleteAsync(path)).IsSuccessStatusCode);
        await StopAgentAsync();
        Assert.All(files.Append(kubeconfig), f => Assert.False(File.Exists(f), f));
        Assert.True(File.Exists(other)); // another CNI's file is not Weft's to remove
        Assert.Empty(api.Forbidden()); // the ClusterRole allows exactly this get
    }
}
