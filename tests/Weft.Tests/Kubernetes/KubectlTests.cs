using Weft.Tests.Support;

namespace Weft.Tests.Kubernetes;

/// <summary>
/// The real kubectl (a client nobody here wrote) against the lab's API server: it applies deploy/weft.yaml (the whole
/// install: namespace, RBAC, ConfigMap, DaemonSet, CRDs), then the seed's Calico documents exactly as written, and
/// weftctl on the kubernetes datastore reads what kubectl wrote.
/// </summary>
public sealed class KubectlTests : IAsyncDisposable
{
    private readonly Weft.Lab.LabApiServer _api = new();
    private readonly string _dir = TestEnv.TempDir("kubectl");
    private readonly string _kubeconfig;

    public KubectlTests() => _kubeconfig = _api.WriteKubeconfig(Path.Combine(_dir, "kubeconfig"));

    public async ValueTask DisposeAsync()
    {
        await _api.DisposeAsync();
        Directory.Delete(_dir, true);
    }

    private static string? Kubectl => File.Exists("/usr/bin/kubectl") ? "/usr/bin/kubectl" : null;

    private TestEnv.ProcessResult Run(params string[] args) =>
        TestEnv.Run(Kubectl!, ["--kubeconfig", _kubeconfig, .. args], timeout: TimeSpan.FromSeconds(60));

    [Fact]
    public void Kubectl_applies_the_install_manifest_and_the_seed_documents_as_written_and_weftctl_reads_them()
    {
        Assert.SkipWhen(Kubectl is null, "kubectl is not installed");
        var install = Run("apply", "-f", Path.Combine(TestEnv.RepoRoot, "deploy", "weft.yaml"));
        Assert.True(install.ExitCode == 0, install.Stdout + install.Stderr);
        foreach (var made in new[] { "namespace/weft-system created", "serviceaccount/weft-agent created", "clusterrole.rbac.authorization.k8s.io/weft-agent created",
                                     "clusterrolebinding.rbac.authorization.k8s.io/weft-agent created", "configmap/weft-config created", "daemonset.apps/weft-node created",
                                     "customresourcedefinition.apiextensions.k8s.io/ippools.projectcalico.org created" })
            Assert.Contains(made, install.Stdout);
        foreach (var seed in new[] { "calico-ippool.yaml", "calico-globalnetworkpolicy.yaml", "calico-installation-bpf.yaml" })
        {
            var r = Run("apply", "-f", TestEnv.SeedDocument(seed));
            Assert.True(r.ExitCode == 0, seed + ": " + r.Stdout + r.Stderr);
            Assert.Contains("created", r.Stdout);
        }
        // Applied again unchanged: kubectl patches, nothing changes.
        var again = Run("apply", "-f", TestEnv.SeedDocument("calico-ippool.yaml"));
        Assert.True(again.ExitCode == 0, again.Stdout + again.Stderr);
        Assert.Contains("unchanged", again.Stdout);
        var get = Run("get", "ippools.projectcalico.org", "-o", "name");
        Assert.True(get.ExitCode == 0, get.Stdout + get.Stderr);
        Assert.Equal("ippool.projectcalico.org/default-pool", get.Stdout.Trim());

        // weftctl on the kubernetes datastore sees the pool kubectl wrote, with the encapsulation as written.
        var uri = "kubernetes://" + _kubeconfig;
        var pools = TestEnv.Ctl(uri, "get", "ippool", "-o", "wide");
        Assert.True(pools.ExitCode == 0, pools.Stdout + pools.Stderr);
        Assert.Contains("default-pool", pools.Stdout);
        Assert.Contains("10.244.0.0/16", pools.Stdout);
        Assert.Contains("VXLAN", pools.Stdout);
        // kubectl left validation to the server (its OpenAPI says PATCH takes fieldValidation), which checks custom
        // resources against deploy/weft.yaml's CRD schemas: the seed's `encapsulation` is in them; a typo is not.
        Assert.Contains(_api.Requests, r => r.StartsWith("POST /apis/projectcalico.org/v3/ippools", StringComparison.Ordinal) && r.Contains("fieldValidation=Strict", StringComparison.Ordinal));
        var typo = Path.Combine(_dir, "typo.yaml");
        File.WriteAllText(typo, "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: typo}\nspec: {cidr: 10.9.0.0/16, vxlanMod: Always}\n");
        var refused = Run("apply", "-f", typo);
        Assert.NotEqual(0, refused.ExitCode);
        Assert.Contains("unknown field \"spec.vxlanMod\"", refused.Stderr);
        File.WriteAllText(typo, "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: typo}\nspec: {cidr: 10.9.0.0/16, encapsulation: Sometimes}\n");
        refused = Run("apply", "-f", typo);
        Assert.NotEqual(0, refused.ExitCode);
        Assert.Contains("spec.encapsulation: Unsupported value", refused.Stderr);
        var gnp = TestEnv.Ctl(uri, "get", "globalnetworkpolicy");
        Assert.True(gnp.ExitCode == 0, gnp.Stdout + gnp.Stderr);
        Assert.Contains("deny-all-egress", gnp.Stdout);
    }
}
