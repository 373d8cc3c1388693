using Weft.Cni.Skeleton;

namespace Weft.Cni.Config;

/// <summary>CNI_ARGS ("K=V;K=V"). Unknown keys are refused unless IgnoreUnknown=1, as the reference plugins do.</summary>
public sealed class CniArgs
{
    public string? PodNamespace { get; private init; }
    public string? PodName { get; private init; }
    public string? InfraContainerId { get; private init; }
    public IReadOnlyList<IpRequest> Ips { get; private init; } = [];

    private static readonly HashSet<string> Known = new(StringComparer.Ordinal)
    {
        "IgnoreUnknown", "K8S_POD_NAMESPACE", "K8S_POD_NAME", "K8S_POD_INFRA_CONTAINER_ID", "K8S_POD_UID", "IP",
    };

    public static CniArgs Parse(string text)
    {
        if (string.IsNullOrEmpty(text)) return new CniArgs();
        var pairs = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var part in text.Split(';', StringSplitOptions.RemoveEmptyEntries))
        {
            var eq = part.IndexOf('=', StringComparison.Ordinal);
            if (eq <= 0)
                throw new CniException(CniCodes.InvalidEnvironment, $"CNI_ARGS: '{part}' is not KEY=VALUE");
            pairs[part[..eq]] = part[(eq + 1)..];
        }
        var ignoreUnknown = pairs.TryGetValue("IgnoreUnknown", out var ig) && (ig is "1" || ig.Equals("true", StringComparison.OrdinalIgnoreCase));
        if (!ignoreUnknown && pairs.Keys.FirstOrDefault(k => !Known.Contains(k)) is { } unknown)
            throw new CniException(CniCodes.InvalidEnvironment, $"CNI_ARGS: unknown key '{unknown}' (add IgnoreUnknown=1 to allow keys weft does not use)");
        var ips = new List<IpRequest>();
        if (pairs.TryGetValue("IP", out var ipText) && ipText.Length > 0)
            foreach (var one in ipText.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
                ips.Add(IpRequest.Parse(one, "CNI_ARGS IP"));
        return new CniArgs
        {
            PodNamespace = pairs.GetValueOrDefault("K8S_POD_NAMESPACE"),
            PodName = pairs.GetValueOrDefault("K8S_POD_NAME"),
            InfraContainerId = pairs.GetValueOrDefault("K8S_POD_INFRA_CONTAINER_ID"),
            Ips = ips,
        };
    }
}
