using System.Text.Json.Nodes;
using Weft.Kubernetes;
using Weft.Tests.Support;

namespace Weft.Tests.Kubernetes;

/// <summary>deploy/weft.yaml checked offline: what a CNI DaemonSet must have, and RBAC covering every call the kubernetes datastore makes.</summary>
public sealed class ManifestTests
{
    private static readonly IReadOnlyList<JsonObject> Docs =
        [.. Weft.Client.Documents.YamlDocuments.Load(File.ReadAllText(Path.Combine(TestEnv.RepoRoot, "deploy", "weft.yaml")), "deploy/weft.yaml").Select(d => d.Doc)];

    private static JsonObject One(string kind) => Assert.Single(Docs, d => d["kind"]!.GetValue<string>() == kind);

    /// <summary>
    /// Every document read into KubernetesClient's own model of its kind and written back loses nothing: a field the
    /// model does not know (a typo kubectl would only warn about, or drop) fails here, with its path.
    /// </summary>
    [Fact]
    public void Every_document_reads_strictly_into_kubernetes_client_models()
    {
        foreach (var doc in Docs)
        {
            var name = $"{doc["kind"]} {doc["metadata"]?["name"]}";
            Assert.True(UnknownFields(doc) is [], name + ": unknown fields " + string.Join(", ", UnknownFields(doc)));
        }
        // The check itself: a misspelt field is caught.
        var daemonSet = One("DaemonSet").DeepClone().AsObject();
        daemonSet["spec"]!["template"]!["spec"]!["hostNetwrok"] = true;
        Assert.Equal(["spec.template.spec.hostNetwrok"], UnknownFields(daemonSet));
    }

    private static List<string> UnknownFields(JsonObject doc)
    {
        // A CRD's openAPIV3Schema is typed object in KubernetesClient.Aot's model, which it cannot write back: the schemas
        // are checked where they are used instead (the lab's API server validates the documents against them).
        doc = doc.DeepClone().AsObject();
        if (doc["kind"]!.GetValue<string>() == "CustomResourceDefinition")
            foreach (var version in doc["spec"]!["versions"]!.AsArray())
                if (version!["schema"] is JsonObject schema) schema["openAPIV3Schema"] = new JsonObject();
        var json = doc.ToJsonString();
        object model = doc["kind"]!.GetValue<string>() switch
        {
            "Namespace" => k8s.KubernetesJson.Deserialize<k8s.Models.V1Namespace>(json),
            "ServiceAccount" => k8s.KubernetesJson.Deserialize<k8s.Models.V1ServiceAccount>(json),
            "ClusterRole" => k8s.KubernetesJson.Deserialize<k8s.Models.V1ClusterRole>(json),
            "ClusterRoleBinding" => k8s.KubernetesJson.Deserialize<k8s.Models.V1ClusterRoleBinding>(json),
            "ConfigMap" => k8s.KubernetesJson.Deserialize<k8s.Models.V1ConfigMap>(json),
            "DaemonSet" => k8s.KubernetesJson.Deserialize<k8s.Models.V1DaemonSet>(json),
            "CustomResourceDefinition" => k8s.KubernetesJson.Deserialize<k8s.Models.V1CustomResourceDefinition>(json),
            var kind => throw new Xunit.Sdk.XunitException($"deploy/weft.yaml has a {kind}: add its model here"),
        };
        var back = JsonNode.Parse(k8s.KubernetesJson.Serialize(model))!;
        var missing = new List<string>();
        void Walk(JsonNode? original, JsonNode? written, string path)
        {
            switch (original)
            {
                case JsonObject o:
                    foreach (var (k, v) in o)
                    {
                        var at = path.Length == 0 ? k : path + "." + k;
                        if (written is not JsonObject w || !w.ContainsKey(k)) missing.Add(at);
                        else Walk(v, w[k], at);
                    }
                    break;
                case JsonArray a:
                    for (var i = 0; i < a.Count; i++) Walk(a[i], written is JsonArray w && i < w.Count ? w[i] : null, $"{path}[{i}]");
                    break;
            }
        }
        Walk(doc, back, "");
        return missing;
    }

    [Fact]
    public void The_daemonset_runs_on_every_node_in_the_hosts_network_and_is_probed()
    {
        var ds = One("DaemonSet");
        var pod = ds["spec"]!["template"]!["spec"]!;
        Assert.True(pod["hostNetwork"]!.GetValue<bool>());
        Assert.Equal("system-node-critical", pod["priorityClassName"]!.GetValue<string>());
        Assert.Contains(pod["tolerations"]!.AsArray(), t => t!["operator"]!.GetValue<string>() == "Exists" && t["key"] is null && t["effect"] is null);
        Assert.Equal("weft-agent", pod["serviceAccountName"]!.GetValue<string>());
        Assert.Equal(1L, ds["spec"]!["updateStrategy"]!["rollingUpdate"]!["maxUnavailable"]!.GetValue<long>());
        var init = Assert.Single(pod["initContainers"]!.AsArray())!;
        Assert.Equal(["/opt/weft/bin/weft-agent", "install-cni"], init["command"]!.AsArray().Select(c => c!.GetValue<string>()));
        Assert.Equal(["/host/etc/cni/net.d", "/host/opt/cni/bin"], init["volumeMounts"]!.AsArray().Select(m => m!["mountPath"]!.GetValue<string>()).Order());
        var agent = Assert.Single(pod["containers"]!.AsArray())!;
        foreach (var probe in new[] { "livenessProbe", "readinessProbe" })
        {
            Assert.Equal("/healthz", agent[probe]!["httpGet"]!["path"]!.GetValue<string>());
            Assert.Equal(9962L, agent[probe]!["httpGet"]!["port"]!.GetValue<long>());
        }
        var caps = agent["securityContext"]!["capabilities"]!;
        Assert.Equal(["ALL"], caps["drop"]!.AsArray().Select(c => c!.GetValue<string>()));
        Assert.Equal(["BPF", "NET_ADMIN", "NET_RAW", "PERFMON", "SYS_ADMIN", "SYS_RESOURCE"], caps["add"]!.AsArray().Select(c => c!.GetValue<string>()).Order());
        Assert.Null(agent["securityContext"]!["privileged"]);
        // Every volume mounted exists, and the host paths the agent keeps state in are there.
        var volumes = pod["volumes"]!.AsArray().ToDictionary(v => v!["name"]!.GetValue<string>(), v => v!);
        foreach (var m in agent["volumeMounts"]!.AsArray().Concat(init["volumeMounts"]!.AsArray()))
            Assert.True(volumes.ContainsKey(m!["name"]!.GetValue<string>()), m.ToJsonString());
        Assert.Equal("/sys/fs/bpf", volumes["bpffs"]["hostPath"]!["path"]!.GetValue<string>());
        Assert.Contains(agent["command"]!.AsArray(), c => c!.GetValue<string>() == "kubernetes");
        // The ConfigMap holds net-conf.json as Flannel users write it, and the agent reads it from the mount.
        Assert.Contains("\"Network\"", One("ConfigMap")["data"]!["net-conf.json"]!.GetValue<string>());
    }

    /// <summary>Every collection the kubernetes datastore reads is readable (get, list, watch) by the agent's ClusterRole, every one it writes writable: code and manifest cannot drift apart.</summary>
    [Fact]
    public void The_cluster_role_covers_every_call_of_the_kubernetes_datastore()
    {
        var rules = One("ClusterRole")["rules"]!.AsArray();
        bool Allows(string group, string resource, string verb) => rules.Any(r =>
            r!["apiGroups"]!.AsArray().Any(g => g!.GetValue<string>() == group) &&
            r["resources"]!.AsArray().Any(x => x!.GetValue<string>() == resource) &&
            r["verbs"]!.AsArray().Any(v => v!.GetValue<string>() == verb));
        var missing = new List<string>();
        foreach (var r in KubeDatastore.Resources.Append(KubeDatastore.Other))
        {
            var group = r.ApiVersion.Contains('/', StringComparison.Ordinal) ? r.ApiVersion[..r.ApiVersion.IndexOf('/', StringComparison.Ordinal)] : "";
            // Weft's own records are written by the plugin and the agent; of users' kinds, the agent creates only the net-conf pool.
            var verbs = r.Form == KubeForm.Record ? new[] { "get", "list", "watch", "create", "update", "delete" }
                : r.Form == KubeForm.Pool ? new[] { "get", "list", "watch", "create" }
                : ["get", "list", "watch"];
            foreach (var verb in verbs)
                if (!Allows(group, r.Plural, verb)) missing.Add($"{verb} {r.Plural}.{group}");
        }
        Assert.True(missing.Count == 0, "the ClusterRole lacks: " + string.Join(", ", missing));
        // And no more than that: no wildcards.
        Assert.DoesNotContain(rules, r => r!["verbs"]!.AsArray().Any(v => v!.GetValue<string>() == "*") || r["resources"]!.AsArray().Any(x => x!.GetValue<string>() == "*"));
        var binding = One("ClusterRoleBinding");
        Assert.Equal("weft-agent", binding["roleRef"]!["name"]!.GetValue<string>());
        Assert.Contains(binding["subjects"]!.AsArray(), s => s!["name"]!.GetValue<string>() == "weft-agent" && s["namespace"]!.GetValue<string>() == "weft-system");
    }

    [Fact]
    public void Every_crd_the_datastore_needs_is_in_the_manifest()
    {
        var crds = Docs.Where(d => d["kind"]!.GetValue<string>() == "CustomResourceDefinition").Select(d => d["metadata"]!["name"]!.GetValue<string>()).ToHashSet();
        foreach (var r in KubeDatastore.Resources.Append(KubeDatastore.Other).Where(r => r.ApiVersion.StartsWith("projectcalico.org/", StringComparison.Ordinal) ||
                                                                                         r.ApiVersion.StartsWith("operator.tigera.io/", StringComparison.Ordinal) ||
                                                                                         r.ApiVersion.StartsWith(KubeDatastore.Group + "/", StringComparison.Ordinal)))
            Assert.Contains($"{r.Plural}.{r.ApiVersion[..r.ApiVersion.IndexOf('/', StringComparison.Ordinal)]}", crds);
    }
}
