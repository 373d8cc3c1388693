using System.Net;
using Weft.Flows.Api;
using Endpoint = Weft.Flows.Api.Endpoint;
using Weft.Policy;

namespace Weft.Agent.Flows;

/// <summary>
/// What the flow collector needs to name the two ends of a packet and the policy behind a verdict: every endpoint
/// in the cluster by address, and the meaning of the dataplane's flow log tokens. Rebuilt whole after each policy
/// programming and swapped in one assignment; the previous token table is kept so packets logged just before a
/// change still resolve.
/// </summary>
public sealed class FlowIdentities(string nodeName)
{
    private sealed record Snapshot(Dictionary<IPAddress, Endpoint> ByAddress, HashSet<IPAddress> Local,
        IReadOnlyDictionary<string, string> Meanings, IReadOnlyDictionary<string, string> Previous);

    private Snapshot _current = new([], [], new Dictionary<string, string>(), new Dictionary<string, string>());

    public int LocalEndpoints => Volatile.Read(ref _current).Local.Count;
    public DateTime UpdatedAt { get; private set; }

    public void Update(PolicyWorld world, IReadOnlyDictionary<string, string>? meanings)
    {
        var old = Volatile.Read(ref _current);
        var byAddress = new Dictionary<IPAddress, Endpoint>();
        var local = new HashSet<IPAddress>();
        foreach (var ep in world.Endpoints)
        {
            var e = new Endpoint { Namespace = ep.Namespace, PodName = ep.Name, NodeName = ep.Node ?? "" };
            foreach (var (k, v) in ep.Labels.OrderBy(l => l.Key, StringComparer.Ordinal)) e.Labels.Add($"k8s:{k}={v}");
            e.Labels.Add($"k8s:io.kubernetes.pod.namespace={ep.Namespace}");
            foreach (var a in ep.Addresses)
            {
                byAddress[a] = e;
                if (ep.Node == nodeName) local.Add(a);
            }
        }
        var next = meanings is null
            ? new Snapshot(byAddress, local, old.Meanings, old.Previous)
            : new Snapshot(byAddress, local, new Dictionary<string, string>(meanings, StringComparer.Ordinal), old.Meanings);
        Volatile.Write(ref _current, next);
        UpdatedAt = DateTime.UtcNow;
    }

    public Endpoint? At(IPAddress address) => Volatile.Read(ref _current).ByAddress.GetValueOrDefault(address);

    public bool IsLocal(IPAddress address) => Volatile.Read(ref _current).Local.Contains(address);

    /// <summary>The policies a flow log token stands for (comma-separated ids), or null when unknown.</summary>
    public string? Meaning(string token)
    {
        var s = Volatile.Read(ref _current);
        return s.Meanings.TryGetValue(token, out var m) || s.Previous.TryGetValue(token, out m) ? m : null;
    }
}
