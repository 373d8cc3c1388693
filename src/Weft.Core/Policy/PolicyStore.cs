using System.Net;
using System.Text.Json.Nodes;
using Weft.Datastore;
using Weft.Model;
using Weft.Policy.Dialects;
using Weft.Policy.Ir;

namespace Weft.Policy;

/// <summary>Everything policy needs, read from the datastore at one revision.</summary>
public sealed record PolicySnapshot(PolicySet Policies, PolicyWorld World, long Revision, IReadOnlyList<string> Errors,
    IReadOnlyList<WorkloadEndpoint> WorkloadEndpoints);

/// <summary>
/// Reads policy documents, tiers, namespaces, pods and workload endpoints from the datastore and joins them: an
/// endpoint (what the plugin built: addresses, host interface, node) takes labels and named ports from its Pod
/// document. Pods with a status.podIP but no endpoint (not on a weft node) still count as peers.
/// </summary>
public static class PolicyStore
{
    public static bool IsPolicyInput(string key) =>
        key.StartsWith(Keys.Policies, StringComparison.Ordinal) || key.StartsWith(Keys.Tiers, StringComparison.Ordinal) ||
        key.StartsWith(Keys.K8sNamespaces, StringComparison.Ordinal) || key.StartsWith(Keys.K8sPods, StringComparison.Ordinal) ||
        key.StartsWith(Keys.Endpoints, StringComparison.Ordinal);

    public static async Task<PolicySnapshot> LoadAsync(IDatastore store, CancellationToken ct = default)
    {
        var errors = new List<string>();
        var policyKvs = await store.ListAsync(Keys.Policies, ct).ConfigureAwait(false);
        var tierKvs = await store.ListAsync(Keys.Tiers, ct).ConfigureAwait(false);
        var nsKvs = await store.ListAsync(Keys.K8sNamespaces, ct).ConfigureAwait(false);
        var podKvs = await store.ListAsync(Keys.K8sPods, ct).ConfigureAwait(false);
        var epKvs = await store.ListAsync(Keys.Endpoints, ct).ConfigureAwait(false);

        T? Read<T>(KeyValue kv, Func<JsonObject, string, T> reader) where T : class
        {
            try { return reader(JsonNode.Parse(kv.Value) as JsonObject ?? throw new InvalidDataException("not an object"), "datastore " + kv.Key); }
            catch (Exception e) when (e is Resources.ResourceException or System.Text.Json.JsonException or InvalidDataException)
            {
                errors.Add($"{kv.Key}: {e.Message}");
                return null;
            }
        }
        var policies = policyKvs.Items.Select(kv => Read(kv, PolicyDocuments.ReadPolicy) is { } p ? p with { Version = kv.ModRevision } : null).OfType<PolicyIr>().ToList();
        var tiers = tierKvs.Items.Select(kv => Read(kv, (d, w) => (object)PolicyDocuments.ReadTier(d, w))).OfType<(string Name, double Order)>()
            .ToDictionary(t => t.Name, t => t.Order, StringComparer.Ordinal);
        var namespaces = nsKvs.Items.Select(kv => Read(kv, PolicyDocuments.ReadNamespace)).OfType<NamespaceInfo>().ToList();
        var pods = podKvs.Items.Select(kv => Read(kv, PolicyDocuments.ReadPod)).OfType<PodDocument>()
            .ToDictionary(p => $"{p.Namespace}/{p.Name}", StringComparer.Ordinal);
        var workloads = epKvs.Items.Select(kv => Codec.Decode(kv.Value, ModelJson.Default.WorkloadEndpoint, kv.Key)).ToList();
        foreach (var p in policies.Where(p => !tiers.ContainsKey(p.Tier) && p.Tier != PolicySet.DefaultTier))
            errors.Add($"{p.Display}: tier '{p.Tier}' does not exist; its policies run after every known tier");
        return new PolicySnapshot(new PolicySet(policies, tiers), BuildWorld(namespaces, pods, workloads), policyKvs.Revision, errors, workloads);
    }

    public static PolicyWorld BuildWorld(IEnumerable<NamespaceInfo> namespaces, IReadOnlyDictionary<string, PodDocument> pods, IEnumerable<WorkloadEndpoint> workloads)
    {
        var endpoints = new List<EndpointInfo>();
        var covered = new HashSet<string>(StringComparer.Ordinal);
        foreach (var w in workloads)
        {
            var ns = w.Namespace ?? "default";
            var name = w.Pod ?? w.ContainerId;
            var addresses = w.Addresses.Select(a => IPAddress.Parse(a.Split('/')[0])).ToList();
            var key = $"{ns}/{name}";
            if (pods.TryGetValue(key, out var pod))
            {
                covered.Add(key);
                endpoints.Add(pod.ToEndpoint(addresses, w.Node, w.HostInterface));
            }
            else endpoints.Add(new EndpointInfo(ns, name, w.Labels, addresses, [], w.Node, w.HostInterface));
        }
        foreach (var (key, pod) in pods)
            if (!covered.Contains(key) && pod.Addresses.Count > 0) endpoints.Add(pod.ToEndpoint());
        return new PolicyWorld(namespaces, endpoints);
    }
}
