using System.Text.Json.Nodes;
using Weft.Tests.Support;

namespace Weft.Tests.Kubernetes;

/// <summary>
/// deploy/build-image.sh's image run by a real container engine (podman with runc), as the DaemonSet runs it: the
/// init container's command installs the plugin and conflist into host directories, and the agent container programs
/// a node (a throwaway namespace) with the libraries the image carries (libnftables, libbpf, sqlite).
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class ImageTests : IDisposable
{
    private readonly string _dir = TestEnv.TempDir("image");
    private readonly string _netns = $"wimg{Environment.ProcessId % 100000}-n1";
    private readonly List<string> _containers = [];
    // podman refuses a run root over 50 characters.
    private readonly string _runroot = Directory.CreateTempSubdirectory("wi").FullName;

    private TestEnv.ProcessResult Podman(params string[] args) =>
        TestEnv.Run("podman", ["--root", Path.Combine(_dir, "storage"), "--runroot", _runroot, "--storage-driver", "vfs", .. args],
            env: new Dictionary<string, string> { ["CONTAINERS_CONF"] = Path.Combine(_dir, "containers.conf") }, timeout: TimeSpan.FromSeconds(120));

    public void Dispose()
    {
        foreach (var c in _containers) Podman("rm", "-f", c);
        Podman("rmi", "-af");
        TestEnv.TrySh($"ip netns del {_netns}");
        TestEnv.TrySh($"umount {Path.Combine(_dir, "state", "bpf")}");
        Directory.Delete(_dir, true);
        Directory.Delete(_runroot, true);
    }

    [Fact]
    public void The_image_installs_the_plugin_as_the_init_container_and_its_agent_programs_a_node()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for podman and network namespaces");
        Assert.SkipUnless(File.Exists("/usr/bin/podman") && File.Exists("/usr/sbin/runc"), "podman and runc are not installed (scripts/install-deps.sh installs them)");
        var built = TestEnv.Run(Path.Combine(TestEnv.RepoRoot, "deploy", "build-image.sh"), [], timeout: TimeSpan.FromMinutes(5));
        Assert.True(built.ExitCode == 0, built.Stdout + built.Stderr);
        // This machine's cgroup layout needs runc and cgroupfs (MACHINE-NOTES).
        File.WriteAllText(Path.Combine(_dir, "containers.conf"),
            "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n[engine]\ncgroup_manager = \"cgroupfs\"\nruntime = \"runc\"\nevents_logger = \"file\"\n");
        var loaded = Podman("load", "-q", "-i", Path.Combine(TestEnv.RepoRoot, "dist", "weft-image.tar"));
        Assert.True(loaded.ExitCode == 0, loaded.Stdout + loaded.Stderr);

        // The init container: deploy/weft.yaml's command and mount paths, a service account as kubelet projects it.
        var sa = Directory.CreateDirectory(Path.Combine(_dir, "sa")).FullName;
        File.WriteAllText(Path.Combine(sa, "token"), "sa-token\n");
        File.WriteAllText(Path.Combine(sa, "ca.crt"), "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n");
        var bin = Directory.CreateDirectory(Path.Combine(_dir, "opt-cni-bin")).FullName;
        var net = Directory.CreateDirectory(Path.Combine(_dir, "etc-cni-net.d")).FullName;
        var install = Podman("run", "--rm", "--network", "none", "-e", "KUBERNETES_SERVICE_HOST=10.96.0.1", "-e", "KUBERNETES_SERVICE_PORT=443", "-e", "NODE_NAME=worker-1",
            "-v", $"{sa}:/var/run/secrets/kubernetes.io/serviceaccount:ro", "-v", $"{bin}:/host/opt/cni/bin", "-v", $"{net}:/host/etc/cni/net.d",
            "weft:dev", "/opt/weft/bin/weft-agent", "install-cni");
        Assert.True(install.ExitCode == 0, install.Stdout + install.Stderr);
        var conflist = JsonNode.Parse(File.ReadAllText(Path.Combine(net, "10-weft.conflist")))!;
        Assert.Equal("worker-1", conflist["plugins"]![0]!["nodename"]!.GetValue<string>());
        // The plugin copied out of the image runs on the host, as the runtime will run it.
        var version = TestEnv.Run(Path.Combine(bin, "weft"), [], "{\"cniVersion\":\"1.0.0\"}", new Dictionary<string, string> { ["CNI_COMMAND"] = "VERSION" });
        Assert.True(version.ExitCode == 0 && version.Stdout.Contains("1.0.0", StringComparison.Ordinal), version.Stdout + version.Stderr);

        // The agent container on a node: host network (here a throwaway namespace standing for the host), privileged.
        TestEnv.Sh($"ip netns add {_netns} && ip -n {_netns} link set lo up && ip -n {_netns} link add eth0 type veth peer name eth0p && " +
            $"ip -n {_netns} link set eth0p up && ip -n {_netns} addr add 10.9.0.1/24 dev eth0 && ip -n {_netns} link set eth0 up && " +
            $"ip -n {_netns} route add default via 10.9.0.254 dev eth0 onlink");
        var state = Directory.CreateDirectory(Path.Combine(_dir, "state")).FullName;
        File.WriteAllText(Path.Combine(state, "net-conf.json"), """{"Network": "10.77.0.0/16", "Backend": {"Type": "vxlan"}}""");
        var name = $"weft-image-test-{Environment.ProcessId}";
        _containers.Add(name);
        var run = Podman("run", "-d", "--name", name, "--privileged", "--network", $"ns:/var/run/netns/{_netns}", "-v", $"{state}:/var/lib/weft", "weft:dev",
            "/opt/weft/bin/weft-agent", "--nodename", "worker-1", "--datastore", "sqlite:///var/lib/weft/weft.db", "--net-conf", "/var/lib/weft/net-conf.json",
            "--underlay-interface", "eth0", "--socket", "/var/lib/weft/agent.sock", "--bpf-pin-dir", "/var/lib/weft/bpf", "--flow-address", "");
        Assert.True(run.ExitCode == 0, run.Stdout + run.Stderr);
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        string logs;
        while (!(logs = Podman("logs", name).Stdout + Podman("logs", name).Stderr).Contains("policy programmed", StringComparison.Ordinal))
        {
            Assert.True(DateTime.UtcNow < deadline, "the agent in the image did not program policy within 30 s:\n" + logs);
            Thread.Sleep(250);
        }
        // libnftables, libbpf and sqlite came from the image: the node has Weft's tables and the VXLAN device.
        var tables = TestEnv.Sh($"ip netns exec {_netns} nft list tables");
        Assert.Contains("table inet weft-policy", tables);
        Assert.Contains(Weft.Model.Ownership.VxlanDevice, TestEnv.Sh($"ip -n {_netns} link show"));
        Assert.Contains("masquerade: bpf", logs);
    }
}
