using System.Text.Json.Nodes;
using Weft.Datastore;
using Weft.Ipam;
using Weft.Kubernetes;
using Weft.Resources;
using Weft.Tests.Support;

namespace Weft.Tests.Cni;

/// <summary>
/// The real NativeAOT plugin on the kubernetes datastore: `weft` hands kubernetes:///kubeconfig over to `weft-etcd`,
/// which allocates through the API (the scripted API server, serving inside the node namespace as an API server on the
/// node's network would); blocks, handles and the pool are API objects; the server down is CNI error 11.
/// </summary>
public sealed class KubePluginTests
{
    private static string Ip(JsonObject result) => result["ips"]!.AsArray()[0]!["address"]!.GetValue<string>().Split('/')[0];

    [Fact]
    public async Task Pods_added_and_deleted_through_the_plugin_allocate_and_release_as_api_objects()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces");
        using var ns = new Netns("kubecni");
        // The admin applies the pool and inspects; the plugin has the weft-agent ClusterRole of deploy/weft.yaml, no more.
        await using var api = new Weft.Lab.LabApiServer(ns.Node) { RequiredToken = "admin-token" }.WithWeftCrds();
        api.Bind("node-token", "system:serviceaccount:weft-system:weft-agent", Weft.Lab.LabApiServer.WeftAgentRole());
        var dir = TestEnv.TempDir("kubecni");
        try
        {
            var kubeconfig = api.WriteKubeconfig(Path.Combine(dir, "weft-kubeconfig"), "node-token");
            using var http = api.Client();
            using var store = new KubeDatastore(http, api.BaseAddress, (r, _) => { r.Headers.Authorization = new("Bearer", "admin-token"); return Task.CompletedTask; });
            // The pool as a user's document: a projectcalico.org/v3 IPPool object in the API.
            await new ResourceService(store).ApplyAsync(Weft.Client.Documents.YamlDocuments.Resources(Pools.SeedV4, "seed"));
            Assert.Single(api.Items("/apis/projectcalico.org/v3/ippools"));

            var cni = new CniRunner(ns.Node, TestEnv.Dist);
            var conf = CniRunner.Config("kubernetes://" + kubeconfig, "node-1");
            var a = ns.Pod("a");
            var b = ns.Pod("b");
            var ra = cni.Weft("ADD", conf, "ctr-a", a.Path, args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=a");
            Assert.True(ra.ExitCode == 0, ra.Stdout + ra.Stderr);
            var rb = cni.Weft("ADD", conf, "ctr-b", b.Path, args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=b");
            Assert.True(rb.ExitCode == 0, rb.Stdout + rb.Stderr);
            TestContext.Current.TestOutputHelper?.WriteLine($"ADD through weft -> weft-etcd on the API: {ra.Elapsed.TotalMilliseconds:0} ms (first), {rb.Elapsed.TotalMilliseconds:0} ms (second)");
            Assert.StartsWith("10.244.", Ip(ra.Json));
            Assert.NotEqual(Ip(ra.Json), Ip(rb.Json));
            TestEnv.Sh($"ip netns exec {a.Name} ping -c 1 -W 2 {Ip(rb.Json)}");

            // What the plugin wrote is in the API as Weft's objects, and reads back as IPAM state.
            var block = Assert.Single(api.Items("/apis/weft.dev/v1/ipamblocks").Values);
            Assert.Equal("IPAMBlock", block["kind"]!.GetValue<string>());
            Assert.Equal(2, api.Items("/apis/weft.dev/v1/ipamhandles").Count);
            Assert.Single(api.Items("/apis/weft.dev/v1/blockaffinities"));
            Assert.Equal(2, api.Items("/apis/weft.dev/v1/workloadendpoints").Count);
            var held = await new IpamInspector(store).FindAsync(System.Net.IPAddress.Parse(Ip(ra.Json)));
            Assert.NotNull(held);
            Assert.Contains("ctr-a", held.Handle);

            Assert.Equal(0, cni.Weft("DEL", conf, "ctr-a", a.Path).ExitCode);
            Assert.Equal(0, cni.Weft("DEL", conf, "ctr-a", a.Path).ExitCode); // again: already gone is fine
            Assert.Null(await new IpamInspector(store).FindAsync(System.Net.IPAddress.Parse(Ip(ra.Json))));
            Assert.Single(api.Items("/apis/weft.dev/v1/ipamhandles"));
            var check = await new IpamInspector(store).CheckAsync(TimeSpan.Zero);
            Assert.True(check.Problems.Count == 0, string.Join("; ", check.Problems.Select(p => p.Detail)));
            // Everything the plugin did, the ClusterRole allows; and what it does not allow is refused (403, clearly).
            Assert.Empty(api.Forbidden());
            using var asPlugin = new KubeDatastore(http, api.BaseAddress, (r, _) => { r.Headers.Authorization = new("Bearer", "node-token"); return Task.CompletedTask; });
            var refused = await Assert.ThrowsAsync<UnauthorizedAccessException>(async () => await asPlugin.DeleteAsync(Weft.Model.Keys.Pool("default-ipv4-ippool"), -1));
            Assert.Contains("cannot delete resource \"ippools\" in API group \"projectcalico.org\"", refused.Message);
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void Add_with_the_api_server_unreachable_is_try_again_later_and_leaves_no_interface()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces");
        using var ns = new Netns("kubedown");
        var dir = TestEnv.TempDir("kubedown");
        try
        {
            var kubeconfig = Path.Combine(dir, "kubeconfig");
            File.WriteAllText(kubeconfig, $"apiVersion: v1\nkind: Config\nclusters:\n- name: x\n  cluster: {{server: \"http://127.0.0.1:{EtcdCluster.ClosedPort()}\"}}\n" +
                                          "users:\n- name: u\n  user: {token: t}\ncontexts:\n- name: c\n  context: {cluster: x, user: u}\ncurrent-context: c\n");
            var cni = new CniRunner(ns.Node, TestEnv.Dist);
            var pod = ns.Pod("p");
            var r = cni.Weft("ADD", CniRunner.Config("kubernetes://" + kubeconfig, "node-1"), "ctr-x", pod.Path, args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p");
            Assert.True(r.ErrorCode == 11, r.Stdout);
            Assert.Contains("kubernetes", r.ErrorMessage);
            Assert.DoesNotContain("weft", TestEnv.Sh($"ip -n {ns.Node} -o link show type veth"));
            Assert.DoesNotContain("eth0", TestEnv.Sh($"ip -n {pod.Name} -o link"));
        }
        finally { Directory.Delete(dir, true); }
    }
}
