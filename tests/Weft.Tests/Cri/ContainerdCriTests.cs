using System.Diagnostics;
using System.Net.Sockets;
using System.Text;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Grpc.Net.Client;
using Weft.Tests.Lab;
using Weft.Tests.Support;

namespace Weft.Tests.Cri;

/// <summary>
/// kubelet's own CNI path: containerd's CRI plugin (Debian containerd 1.6), one per lab node, in the node's network
/// namespace, driven over the CRI as kubelet drives it (Status, RunPodSandbox, PodSandboxStatus, StopPodSandbox,
/// RemovePodSandbox). containerd finds Weft through the conflist and kubeconfig `weft-agent install-cni` wrote (the
/// DaemonSet's init container), execs the plugin with kubelet's CNI_ARGS, and the plugin works on the lab's API server
/// as the weft-agent service account. Nothing of Weft's code sits between containerd and the plugin.
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class ContainerdCriTests
{
    private const string PauseImage = "localhost/weft-pause:test";

    [Fact]
    public async Task Sandboxes_from_containerds_cri_plugin_get_weft_addresses_reach_each_other_across_nodes_and_give_them_back()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces");
        Assert.SkipUnless(File.Exists("/usr/bin/containerd") && File.Exists("/usr/sbin/runc") && File.Exists("/usr/bin/podman"),
            "containerd, runc and podman are not installed (scripts/install-deps.sh installs them)");
        using var lab = new LabRun();
        lab.Up("--datastore", "kubernetes", "--nodes", "2", "--pods-per-node", "0");
        var work = TestEnv.TempDir("cri");
        var runtimes = new List<Containerd>();
        try
        {
            var image = BuildPauseImage(work);
            var labDir = $"/var/lib/weft/labs/{lab.Name}";
            var agentKubeconfig = File.ReadAllText(Path.Combine(labDir, "agent-kubeconfig"));
            // The service account as kubelet projects it into the DaemonSet's pods: the agent's token, the cluster CA.
            var sa = Directory.CreateDirectory(Path.Combine(work, "sa")).FullName;
            File.WriteAllText(Path.Combine(sa, "token"), Regex.Match(agentKubeconfig, "token: \"([^\"]+)\"").Groups[1].Value);
            File.WriteAllBytes(Path.Combine(sa, "ca.crt"), Convert.FromBase64String(Regex.Match(agentKubeconfig, "certificate-authority-data: ([A-Za-z0-9+/=]+)").Groups[1].Value));

            foreach (var node in new[] { "node-1", "node-2" })
            {
                var dir = Directory.CreateDirectory(Path.Combine(work, node)).FullName;
                var bin = Path.Combine(dir, "bin");
                var net = Path.Combine(dir, "net.d");
                var install = TestEnv.Run(Path.Combine(TestEnv.Dist, "weft-agent"),
                    ["install-cni", "--source-dir", TestEnv.Dist, "--cni-bin-dir", bin, "--cni-conf-dir", net, "--host-cni-conf-dir", net, "--service-account-dir", sa, "--nodename", node, "--mtu", "1450"],
                    env: new Dictionary<string, string> { ["KUBERNETES_SERVICE_HOST"] = "198.51.100.2", ["KUBERNETES_SERVICE_PORT"] = "6443" });
                Assert.True(install.ExitCode == 0, install.Stdout + install.Stderr);
                // containerd sets up each sandbox's loopback with the reference "loopback" plugin, which a node has
                // beside its CNI's (the kubernetes-cni package; Debian's containernetworking-plugins here).
                File.Copy("/usr/lib/cni/loopback", Path.Combine(bin, "loopback"));
                var c = Containerd.Start(lab.Netns(node), dir, bin, net);
                runtimes.Add(c);
                var imported = TestEnv.Run("ctr", ["--address", c.Socket, "-n", "k8s.io", "images", "import", image]);
                Assert.True(imported.ExitCode == 0, imported.Stdout + imported.Stderr);
            }

            // kubelet waits for the runtime's NetworkReady: containerd turns it on once it has read Weft's conflist.
            foreach (var c in runtimes) await c.WaitNetworkReadyAsync();
            // The pods exist in the API before their sandboxes, as kubelet only runs pods the API bound to its node.
            using (var api = Weft.Datastore.DatastoreFactory.Open($"kubernetes://{labDir}/kubeconfig?netns=/var/run/netns/{lab.Netns("cp")}"))
                foreach (var (name, node) in new[] { ("cri-a", "node-1"), ("cri-b", "node-2") })
                {
                    var pod = new JsonObject
                    {
                        ["metadata"] = new JsonObject { ["name"] = name, ["namespace"] = "default", ["labels"] = new JsonObject { ["app"] = name } },
                        ["spec"] = new JsonObject { ["nodeName"] = node, ["containers"] = new JsonArray(new JsonObject { ["name"] = "pause", ["image"] = PauseImage }) },
                    };
                    await Weft.Datastore.DatastoreExtensions.PutAsync(api, Weft.Model.Keys.K8sPod("default", name), Encoding.UTF8.GetBytes(pod.ToJsonString()), 0);
                }

            var a = await runtimes[0].RunPodSandboxAsync("cri-a");
            var b = await runtimes[1].RunPodSandboxAsync("cri-b");
            Assert.StartsWith("10.244.", a.Ip);
            Assert.StartsWith("10.244.", b.Ip);
            Assert.NotEqual(a.Ip, b.Ip);
            // Across nodes, over Weft's VXLAN, from inside the sandboxes' own network namespaces.
            TestEnv.Ok(TestEnv.Run("nsenter", ["-t", a.Pid.ToString(System.Globalization.CultureInfo.InvariantCulture), "-n", "ping", "-c3", "-i0.3", "-w3", b.Ip]));
            TestEnv.Ok(TestEnv.Run("nsenter", ["-t", b.Pid.ToString(System.Globalization.CultureInfo.InvariantCulture), "-n", "ping", "-c3", "-i0.3", "-w3", a.Ip]));
            var handles = TestEnv.Ok(lab.Ctl("--lab", lab.Name, "ipam", "show", "--ip", a.Ip)).Stdout;
            Assert.Contains(a.Id, handles); // the handle kubelet's sandbox id names (containerd's CNI_CONTAINERID)

            // Stop calls DEL (with the cached result), Remove calls it again: the address goes back once, nothing leaks.
            foreach (var (c, s) in new[] { (runtimes[0], a), (runtimes[1], b) })
            {
                await c.Client.StopPodSandboxAsync(new StopPodSandboxRequest { PodSandboxId = s.Id });
                await c.Client.RemovePodSandboxAsync(new RemovePodSandboxRequest { PodSandboxId = s.Id });
            }
            var check = lab.Ctl("--lab", lab.Name, "ipam", "check", "--grace", "0s");
            Assert.True(check.ExitCode == 0 && check.Stdout.Contains("No problems", StringComparison.Ordinal), check.Stdout + check.Stderr);
            Assert.DoesNotContain(a.Ip, TestEnv.Ok(lab.Ctl("--lab", lab.Name, "ipam", "show")).Stdout);
            Assert.DoesNotContain("403 ", File.ReadAllText(Path.Combine(labDir, "apiserver.log")));
        }
        finally
        {
            foreach (var c in runtimes) c.Dispose();
            Directory.Delete(work, true);
        }
    }

    /// <summary>A static `pause()` loop FROM scratch (no registry here), saved as an archive containerd imports.</summary>
    private static string BuildPauseImage(string work)
    {
        var dir = Directory.CreateDirectory(Path.Combine(work, "pause")).FullName;
        File.WriteAllText(Path.Combine(dir, "pause.c"),
            "#include <signal.h>\n#include <stdlib.h>\n#include <unistd.h>\nstatic void bye(int s) { (void)s; _exit(0); }\n" +
            "int main(void) { signal(SIGTERM, bye); signal(SIGINT, bye); for (;;) pause(); }\n");
        TestEnv.Ok(TestEnv.Run("gcc", ["-static", "-O2", "-o", Path.Combine(dir, "pause"), Path.Combine(dir, "pause.c")]));
        File.WriteAllText(Path.Combine(dir, "Containerfile"), "FROM scratch\nCOPY pause /pause\nENTRYPOINT [\"/pause\"]\n");
        var runroot = Directory.CreateTempSubdirectory("wp").FullName; // podman refuses a run root over 50 characters
        try
        {
            string[] podman = ["--root", Path.Combine(work, "podman"), "--runroot", runroot, "--storage-driver", "vfs"];
            TestEnv.Ok(TestEnv.Run("podman", [.. podman, "build", "-q", "-t", PauseImage, dir], timeout: TimeSpan.FromMinutes(2)));
            var archive = Path.Combine(work, "pause.tar");
            TestEnv.Ok(TestEnv.Run("podman", [.. podman, "save", "-q", "--format", "docker-archive", "-o", archive, PauseImage], timeout: TimeSpan.FromMinutes(2)));
            TestEnv.Run("podman", [.. podman, "rmi", "-af"]);
            return archive;
        }
        finally { Directory.Delete(runroot, true); }
    }

    public sealed record Sandbox(string Id, string Ip, int Pid);

    /// <summary>One node's containerd with only its CRI plugin's network set to Weft's directories.</summary>
    private sealed class Containerd : IDisposable
    {
        private readonly Process _process;
        private readonly GrpcChannel _channel;
        private readonly List<string> _sandboxes = [];
        private readonly string _dir;

        public string Socket { get; }
        public RuntimeService.RuntimeServiceClient Client { get; }

        private Containerd(Process process, string dir, string socket)
        {
            _process = process;
            _dir = dir;
            Socket = socket;
            _channel = GrpcChannel.ForAddress("http://localhost", new GrpcChannelOptions
            {
                HttpHandler = new SocketsHttpHandler
                {
                    ConnectCallback = async (_, ct) =>
                    {
                        var s = new System.Net.Sockets.Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                        try { await s.ConnectAsync(new UnixDomainSocketEndPoint(socket), ct); }
                        catch { s.Dispose(); throw; }
                        return new NetworkStream(s, ownsSocket: true);
                    },
                },
            });
            Client = new RuntimeService.RuntimeServiceClient(_channel);
        }

        /// <summary>
        /// In the node's network namespace and a private mount namespace (its mounts stay its own), root, state and
        /// socket under <paramref name="dir"/>, sandboxes' network namespaces under its state directory (never in
        /// /var/run/netns); the settings this machine needs (MACHINE-NOTES): native snapshotter, runc,
        /// restrict_oom_score_adj.
        /// </summary>
        public static Containerd Start(string netns, string dir, string bin, string net)
        {
            var socket = Path.Combine(dir, "containerd.sock");
            var config = Path.Combine(dir, "config.toml");
            File.WriteAllText(config, $"""
                version = 2
                root = "{dir}/root"
                state = "{dir}/state"
                [grpc]
                  address = "{socket}"
                [ttrpc]
                  address = "{socket}.ttrpc"
                [plugins."io.containerd.internal.v1.opt"]
                  path = "{dir}/opt"
                [plugins."io.containerd.grpc.v1.cri"]
                  sandbox_image = "{PauseImage}"
                  restrict_oom_score_adj = true
                  netns_mounts_under_state_dir = true
                  disable_apparmor = true
                  stream_server_address = "127.0.0.1"
                  [plugins."io.containerd.grpc.v1.cri".containerd]
                    snapshotter = "native"
                    default_runtime_name = "runc"
                    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
                      runtime_type = "io.containerd.runc.v2"
                  [plugins."io.containerd.grpc.v1.cri".cni]
                    bin_dir = "{bin}"
                    conf_dir = "{net}"
                """);
            var log = Path.Combine(dir, "containerd.log");
            var process = Process.Start(new ProcessStartInfo("sh", ["-c", $"exec nsenter --net=/var/run/netns/{netns} unshare -m --propagation private containerd --config {config} >{log} 2>&1"]))!;
            var c = new Containerd(process, dir, socket);
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
            while (!File.Exists(socket))
            {
                if (process.HasExited || DateTime.UtcNow > deadline)
                {
                    c.Dispose();
                    throw new Xunit.Sdk.XunitException("containerd did not start:\n" + File.ReadAllText(log));
                }
                Thread.Sleep(50);
            }
            return c;
        }

        public async Task WaitNetworkReadyAsync()
        {
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
            while (true)
            {
                var status = await Client.StatusAsync(new StatusRequest());
                var network = status.Status.Conditions.FirstOrDefault(x => x.Type == "NetworkReady");
                if (network?.Status == true) return;
                Assert.True(DateTime.UtcNow < deadline, $"containerd's NetworkReady stayed false: {network?.Reason} {network?.Message}");
                await Task.Delay(100);
            }
        }

        public async Task<Sandbox> RunPodSandboxAsync(string name)
        {
            var uid = Guid.NewGuid().ToString();
            Directory.CreateDirectory(Path.Combine(_dir, "pods", uid)); // kubelet makes the log directory first
            var run = await Client.RunPodSandboxAsync(new RunPodSandboxRequest
            {
                Config = new PodSandboxConfig
                {
                    Metadata = new PodSandboxMetadata { Name = name, Namespace = "default", Uid = uid },
                    Hostname = name, LogDirectory = Path.Combine(_dir, "pods", uid),
                    Labels = { ["io.kubernetes.pod.name"] = name, ["io.kubernetes.pod.namespace"] = "default", ["io.kubernetes.pod.uid"] = uid },
                },
            });
            _sandboxes.Add(run.PodSandboxId);
            var status = await Client.PodSandboxStatusAsync(new PodSandboxStatusRequest { PodSandboxId = run.PodSandboxId, Verbose = true });
            var info = JsonNode.Parse(status.Info["info"])!;
            return new Sandbox(run.PodSandboxId, status.Status.Network.Ip, info["pid"]!.GetValue<int>());
        }

        public void Dispose()
        {
            // Sandboxes a failed test left: stopped and removed through containerd (DEL included), so nothing outlives it.
            foreach (var id in _sandboxes)
            {
                try
                {
                    Client.StopPodSandbox(new StopPodSandboxRequest { PodSandboxId = id }, deadline: DateTime.UtcNow.AddSeconds(20));
                    Client.RemovePodSandbox(new RemovePodSandboxRequest { PodSandboxId = id }, deadline: DateTime.UtcNow.AddSeconds(20));
                }
                catch (Grpc.Core.RpcException) { }
            }
            _channel.Dispose();
            // containerd, then the shims it started (they outlive it by design): each found by our socket in its command line.
            if (!_process.HasExited)
            {
                TestEnv.TrySh($"kill -TERM {_process.Id}");
                if (!_process.WaitForExit(10_000)) _process.Kill(entireProcessTree: true);
            }
            foreach (var pid in Directory.GetDirectories("/proc").Select(Path.GetFileName).Where(p => p!.All(char.IsAsciiDigit)))
            {
                string cmdline;
                try { cmdline = File.ReadAllText($"/proc/{pid}/cmdline"); }
                catch (IOException) { continue; }
                if (cmdline.Contains(Socket, StringComparison.Ordinal) || cmdline.Contains(_dir, StringComparison.Ordinal)) TestEnv.TrySh($"kill -KILL {pid}");
            }
            _process.Dispose();
        }
    }
}
