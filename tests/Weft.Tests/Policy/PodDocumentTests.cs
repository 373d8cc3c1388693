using System.Net;
using System.Text.Json.Nodes;
using Weft.Policy;
using Weft.Policy.Dialects;

namespace Weft.Tests.Policy;

/// <summary>Pods as the API server shows them: which of them are policy peers at their status.podIP.</summary>
public sealed class PodDocumentTests
{
    private static PodDocument Read(string status, string spec = "{}") =>
        PolicyDocuments.ReadPod(JsonNode.Parse("{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{\"name\":\"p\",\"namespace\":\"default\",\"labels\":{\"app\":\"db\"}},\"spec\":" + spec + ",\"status\":" + status + "}")!.AsObject(), "test");

    [Fact]
    public void Ended_and_host_network_pods_are_no_peers_at_their_pod_ip()
    {
        Assert.Equal([IPAddress.Parse("10.244.1.5")], Read("""{"phase":"Running","podIP":"10.244.1.5"}""").Addresses);
        Assert.Equal([IPAddress.Parse("10.244.1.5"), IPAddress.Parse("fd00::5")], Read("""{"podIP":"10.244.1.5","podIPs":[{"ip":"10.244.1.5"},{"ip":"fd00::5"}]}""").Addresses);
        // A finished Job's pod keeps its podIP in the API; the address may already be another pod's.
        Assert.Empty(Read("""{"phase":"Succeeded","podIP":"10.244.1.5"}""").Addresses);
        Assert.Empty(Read("""{"phase":"Failed","podIP":"10.244.1.5"}""").Addresses);
        // A host-network pod's podIP is its node's address.
        Assert.Empty(Read("""{"phase":"Running","podIP":"192.168.1.10"}""", """{"hostNetwork":true}""").Addresses);

        // So the world holds the running pod that got the address now, not the finished one that had it.
        var world = PolicyStore.BuildWorld([], new Dictionary<string, PodDocument>
        {
            ["default/old"] = Read("""{"phase":"Succeeded","podIP":"10.244.1.5"}""") with { Name = "old" },
            ["default/new"] = Read("""{"phase":"Running","podIP":"10.244.1.5"}""") with { Name = "new" },
        }, []);
        Assert.Equal("new", Assert.Single(world.Endpoints).Name);
    }

    /// <summary>
    /// What the kubernetes datastore keeps of a Pod (every agent holds every pod): a pod as the API serves it, volumes,
    /// env, resources, statuses and all, reads exactly as before, in a fraction of the bytes.
    /// </summary>
    [Fact]
    public void A_pod_as_the_datastore_keeps_it_reads_as_the_whole_pod_does()
    {
        var full = JsonNode.Parse("""
            {"apiVersion":"v1","kind":"Pod","metadata":{"name":"web-7d4b9","namespace":"shop","uid":"0b4c","resourceVersion":"81234",
              "labels":{"app":"web","pod-template-hash":"7d4b9"},
              "annotations":{"cni.projectcalico.org/ipv4pools":"[\"blue\"]","kubectl.kubernetes.io/restartedAt":"2026-12-01T10:00:00Z","prometheus.io/scrape":"true"},
              "ownerReferences":[{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"web-7d4b9","uid":"9f1e","controller":true}],
              "managedFields":[{"manager":"kube-controller-manager","operation":"Update","fieldsV1":{"f:metadata":{"f:labels":{}}}}]},
             "spec":{"nodeName":"worker-3","serviceAccountName":"web","volumes":[{"name":"kube-api-access","projected":{"sources":[{"serviceAccountToken":{"path":"token","expirationSeconds":3607}}]}}],
              "containers":[{"name":"web","image":"registry.example.com/web:1.2.3","ports":[{"name":"http","containerPort":8080,"protocol":"TCP"},{"name":"metrics","containerPort":9090,"protocol":"TCP"}],
                "env":[{"name":"MODE","value":"prod"},{"name":"POD_IP","valueFrom":{"fieldRef":{"fieldPath":"status.podIP"}}}],
                "resources":{"requests":{"cpu":"100m","memory":"128Mi"},"limits":{"memory":"256Mi"}},
                "readinessProbe":{"httpGet":{"path":"/ready","port":"http"},"periodSeconds":5},
                "volumeMounts":[{"name":"kube-api-access","mountPath":"/var/run/secrets/kubernetes.io/serviceaccount","readOnly":true}]},
               {"name":"sidecar","image":"registry.example.com/proxy:4.5","ports":[{"name":"admin","containerPort":15000}]}],
              "tolerations":[{"key":"node.kubernetes.io/not-ready","operator":"Exists","effect":"NoExecute","tolerationSeconds":300}]},
             "status":{"phase":"Running","hostIP":"192.168.1.13","podIP":"10.244.3.17","podIPs":[{"ip":"10.244.3.17"}],
              "conditions":[{"type":"Ready","status":"True","lastTransitionTime":"2026-12-01T10:00:09Z"},{"type":"ContainersReady","status":"True"}],
              "containerStatuses":[{"name":"web","ready":true,"restartCount":0,"image":"registry.example.com/web:1.2.3","imageID":"sha256:abc","containerID":"containerd://def","state":{"running":{"startedAt":"2026-12-01T10:00:05Z"}}}]}}
            """)!.AsObject();
        var kept = Weft.Kubernetes.KubeDatastore.PodAsRead(full);
        var whole = PolicyDocuments.ReadPod(full, "full");
        var slim = PolicyDocuments.ReadPod(kept, "kept");
        Assert.Equal((whole.Namespace, whole.Name, whole.NodeName), (slim.Namespace, slim.Name, slim.NodeName));
        Assert.Equal(whole.Labels, slim.Labels);
        Assert.Equal(whole.Ports, slim.Ports);
        Assert.Equal(whole.Addresses, slim.Addresses);
        Assert.Equal("[\"blue\"]", kept["metadata"]!["annotations"]!["cni.projectcalico.org/ipv4pools"]!.GetValue<string>()); // the plugin reads these
        Assert.Null(kept["metadata"]!["annotations"]!["prometheus.io/scrape"]);
        Assert.True(kept.ToJsonString().Length * 3 < full.ToJsonString().Length, kept.ToJsonString());
    }
}
