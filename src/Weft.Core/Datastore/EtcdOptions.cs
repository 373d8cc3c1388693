using System.Globalization;

namespace Weft.Datastore;

/// <summary>
/// Where the etcd members are and how long to wait for them, parsed from
/// <c>etcd://host:port[,host:port...][?timeout=SECONDS&amp;netns=PATH]</c>. The port defaults to 2379; IPv6 hosts
/// are written in brackets (<c>[fd00::1]:2379</c>). <c>timeout</c> bounds one operation across all retries and
/// fail-overs (default 10 s); <c>netns</c> makes the client's sockets in that network namespace (the lab's
/// control plane, reached from the root namespace by weftctl).
/// </summary>
public sealed record EtcdOptions(IReadOnlyList<(string Host, int Port)> Endpoints, TimeSpan RequestTimeout, string? Netns, string Uri)
{
    public const string Scheme = "etcd://";
    public const int DefaultPort = 2379;
    public static readonly TimeSpan DefaultRequestTimeout = TimeSpan.FromSeconds(10);

    /// <summary>One attempt on one member; a member that does not answer in this time is skipped for the next.</summary>
    public TimeSpan AttemptTimeout { get; init; } = TimeSpan.FromSeconds(3);

    public TimeSpan ConnectTimeout { get; init; } = TimeSpan.FromSeconds(2);

    public static EtcdOptions Parse(string uri)
    {
        if (!uri.StartsWith(Scheme, StringComparison.Ordinal)) throw Bad(uri, "it must start with etcd://");
        var rest = uri[Scheme.Length..];
        string? query = null;
        var q = rest.IndexOf('?', StringComparison.Ordinal);
        if (q >= 0) (rest, query) = (rest[..q], rest[(q + 1)..]);
        rest = rest.TrimEnd('/');
        if (rest.Length == 0) throw Bad(uri, "no endpoint given");
        var endpoints = new List<(string, int)>();
        foreach (var part in rest.Split(','))
        {
            var ep = part.Trim();
            string host;
            var port = DefaultPort;
            if (ep.StartsWith('['))
            {
                var close = ep.IndexOf(']', StringComparison.Ordinal);
                if (close < 0) throw Bad(uri, $"endpoint '{ep}' has no closing ']'");
                host = ep[1..close];
                var after = ep[(close + 1)..];
                if (after.Length > 0 && (after[0] != ':' || !TryPort(after[1..], out port))) throw Bad(uri, $"endpoint '{ep}' has a bad port");
            }
            else
            {
                var colon = ep.LastIndexOf(':');
                host = colon < 0 ? ep : ep[..colon];
                if (colon >= 0 && !TryPort(ep[(colon + 1)..], out port)) throw Bad(uri, $"endpoint '{ep}' has a bad port");
                if (host.Contains(':', StringComparison.Ordinal)) throw Bad(uri, $"endpoint '{ep}': write IPv6 addresses in brackets, [fd00::1]:2379");
            }
            if (host.Length == 0 || host.Contains('/', StringComparison.Ordinal)) throw Bad(uri, $"endpoint '{ep}' has no host");
            endpoints.Add((host, port));
        }
        var timeout = DefaultRequestTimeout;
        string? netns = null;
        foreach (var kv in (query ?? "").Split('&', StringSplitOptions.RemoveEmptyEntries))
        {
            var eq = kv.IndexOf('=', StringComparison.Ordinal);
            var (name, value) = eq < 0 ? (kv, "") : (kv[..eq], System.Uri.UnescapeDataString(kv[(eq + 1)..]));
            switch (name)
            {
                case "timeout":
                    if (!double.TryParse(value.TrimEnd('s'), NumberStyles.Float, CultureInfo.InvariantCulture, out var seconds) || seconds <= 0 || seconds > 3600)
                        throw Bad(uri, $"timeout '{value}' must be seconds, e.g. timeout=5");
                    timeout = TimeSpan.FromSeconds(seconds);
                    break;
                case "netns":
                    if (!value.StartsWith('/')) throw Bad(uri, $"netns '{value}' must be a path, e.g. /var/run/netns/NAME");
                    netns = value;
                    break;
                default:
                    throw Bad(uri, $"unknown option '{name}' (known: timeout, netns)");
            }
        }
        return new EtcdOptions(endpoints, timeout, netns, uri)
        {
            AttemptTimeout = timeout < TimeSpan.FromSeconds(3) ? timeout : TimeSpan.FromSeconds(3),
            ConnectTimeout = timeout < TimeSpan.FromSeconds(2) ? timeout : TimeSpan.FromSeconds(2),
        };
    }

    private static bool TryPort(string s, out int port) =>
        int.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out port) && port is > 0 and < 65536;

    private static ArgumentException Bad(string uri, string why) =>
        new($"datastore '{uri}': {why}; use etcd://host:2379[,host:2379...], e.g. etcd://10.0.0.1:2379,10.0.0.2:2379");
}
