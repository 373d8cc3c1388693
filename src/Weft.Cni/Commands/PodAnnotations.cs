using System.Net;
using System.Text.Json;
using Weft.Cni.Skeleton;
using Weft.Datastore;

namespace Weft.Cni.Commands;

/// <summary>
/// Calico's pod annotations for IPAM, read from the Pod (on the kubernetes datastore the API's Pod object, otherwise
/// the Pod document applied with weftctl): `cni.projectcalico.org/ipAddrs` (a JSON list of addresses the pod must get)
/// and `cni.projectcalico.org/ipv4pools` / `ipv6pools` (JSON lists of pool names or CIDRs to assign from).
/// </summary>
internal sealed record PodAnnotations(IReadOnlyList<IPAddress> IpAddrs, IReadOnlyList<string>? Pools)
{
    public const string IpAddrsKey = "cni.projectcalico.org/ipAddrs";
    public const string Ipv4Pools = "cni.projectcalico.org/ipv4pools";
    public const string Ipv6Pools = "cni.projectcalico.org/ipv6pools";

    public static readonly PodAnnotations None = new([], null);

    /// <summary>The annotations of a stored Pod, or <see cref="None"/>; a malformed one is invalid configuration (code 7).</summary>
    public static PodAnnotations Read(KeyValue? pod)
    {
        if (pod is null) return None;
        using var doc = JsonDocument.Parse(pod.Value);
        if (!doc.RootElement.TryGetProperty("metadata", out var meta) || !meta.TryGetProperty("annotations", out var annotations) || annotations.ValueKind != JsonValueKind.Object)
            return None;
        var ips = new List<IPAddress>();
        foreach (var text in List(annotations, IpAddrsKey))
            ips.Add(IPAddress.TryParse(text, out var ip) && !text.Contains('/', StringComparison.Ordinal) ? ip
                : throw new CniException(CniCodes.InvalidNetworkConfig, $"annotation {IpAddrsKey}: '{text}' is not an IP address"));
        List<string>? pools = null;
        foreach (var key in new[] { Ipv4Pools, Ipv6Pools })
            foreach (var p in List(annotations, key)) (pools ??= []).Add(p);
        return ips.Count == 0 && pools is null ? None : new PodAnnotations(ips, pools);
    }

    /// <summary>An annotation holding a JSON list of strings (absent: empty).</summary>
    private static List<string> List(JsonElement annotations, string key)
    {
        if (!annotations.TryGetProperty(key, out var value)) return [];
        if (value.ValueKind != JsonValueKind.String) throw new CniException(CniCodes.InvalidNetworkConfig, $"annotation {key} must be a string holding a JSON list");
        try
        {
            using var list = JsonDocument.Parse(value.GetString()!);
            if (list.RootElement.ValueKind != JsonValueKind.Array) throw new JsonException();
            var result = new List<string>();
            foreach (var item in list.RootElement.EnumerateArray())
                result.Add(item.ValueKind == JsonValueKind.String ? item.GetString()! : throw new JsonException());
            return result;
        }
        catch (JsonException)
        {
            throw new CniException(CniCodes.InvalidNetworkConfig, $"annotation {key}: '{value.GetString()}' is not a JSON list of strings like [\"10.244.1.10\"]");
        }
    }
}
