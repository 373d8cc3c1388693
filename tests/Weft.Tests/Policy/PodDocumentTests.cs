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
}
