using System.Net;
using System.Text.Json;
using Weft.Cni.Skeleton;
using Weft.Model;

namespace Weft.Cni.Results;

public sealed record ResultInterface(string Name, string? Mac, string? Sandbox, int? Mtu = null);

public sealed record ResultIp(IPAddress Address, int PrefixLength, IPAddress? Gateway, int? Interface)
{
    public string AddressText => $"{Address}/{PrefixLength}";
}

public sealed record ResultRoute(Cidr Destination, IPAddress? Gateway);

/// <summary>
/// The CNI result: interfaces, IPs, routes, DNS. Written in the version the runtime asked for
/// (0.3.x/0.4.0 add "version" to each IP; 1.x drops it), parsed back from prevResult in any of them.
/// </summary>
public sealed class CniResult
{
    public List<ResultInterface> Interfaces { get; init; } = [];
    public List<ResultIp> Ips { get; init; } = [];
    public List<ResultRoute> Routes { get; init; } = [];
    public List<string> DnsNameservers { get; init; } = [];
    public string? DnsDomain { get; init; }
    public List<string> DnsSearch { get; init; } = [];

    public byte[] ToJson(string cniVersion)
    {
        using var buffer = new MemoryStream();
        using (var w = new Utf8JsonWriter(buffer, PlainJsonEncoder.Options(indented: true)))
        {
            w.WriteStartObject();
            w.WriteString("cniVersion", cniVersion);
            w.WriteStartArray("interfaces");
            foreach (var i in Interfaces)
            {
                w.WriteStartObject();
                w.WriteString("name", i.Name);
                if (i.Mac is not null) w.WriteString("mac", i.Mac);
                if (i.Mtu is { } mtu && CniVersions.Compare(cniVersion, "1.1.0") >= 0) w.WriteNumber("mtu", mtu);
                if (i.Sandbox is not null) w.WriteString("sandbox", i.Sandbox);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteStartArray("ips");
            var legacy = CniVersions.IsLegacyResult(cniVersion);
            foreach (var ip in Ips)
            {
                w.WriteStartObject();
                if (legacy) w.WriteString("version", ip.Address.AddressFamily == System.Net.Sockets.AddressFamily.InterNetwork ? "4" : "6");
                w.WriteString("address", ip.AddressText);
                if (ip.Gateway is not null) w.WriteString("gateway", ip.Gateway.ToString());
                if (ip.Interface is { } idx) w.WriteNumber("interface", idx);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            if (Routes.Count > 0)
            {
                w.WriteStartArray("routes");
                foreach (var r in Routes)
                {
                    w.WriteStartObject();
                    w.WriteString("dst", r.Destination.ToString());
                    if (r.Gateway is not null) w.WriteString("gw", r.Gateway.ToString());
                    w.WriteEndObject();
                }
                w.WriteEndArray();
            }
            w.WriteStartObject("dns");
            if (DnsNameservers.Count > 0)
            {
                w.WriteStartArray("nameservers");
                foreach (var n in DnsNameservers) w.WriteStringValue(n);
                w.WriteEndArray();
            }
            if (DnsDomain is not null) w.WriteString("domain", DnsDomain);
            if (DnsSearch.Count > 0)
            {
                w.WriteStartArray("search");
                foreach (var n in DnsSearch) w.WriteStringValue(n);
                w.WriteEndArray();
            }
            w.WriteEndObject();
            w.WriteEndObject();
        }
        return buffer.ToArray();
    }

    /// <summary>Reads a result object (prevResult, or a delegated IPAM plugin's output).</summary>
    /// <exception cref="FormatException">a field has the wrong shape.</exception>
    public static CniResult Parse(JsonElement root)
    {
        var result = new CniResult();
        if (root.TryGetProperty("interfaces", out var ifs) && ifs.ValueKind == JsonValueKind.Array)
            foreach (var i in ifs.EnumerateArray())
                result.Interfaces.Add(new ResultInterface(
                    GetString(i, "name") ?? throw new FormatException("interface without name"),
                    GetString(i, "mac"), GetString(i, "sandbox")));
        if (root.TryGetProperty("ips", out var ips) && ips.ValueKind == JsonValueKind.Array)
            foreach (var ip in ips.EnumerateArray())
            {
                var addr = GetString(ip, "address") ?? throw new FormatException("ip without address");
                var slash = addr.IndexOf('/', StringComparison.Ordinal);
                if (slash < 0 || !IPAddress.TryParse(addr[..slash], out var a) || !int.TryParse(addr.AsSpan(slash + 1), out var p) ||
                    p < 0 || p > Cidr.Bits(a.AddressFamily))
                    throw new FormatException($"ip address '{addr}' is not address/prefix");
                IPAddress? gw = null;
                if (GetString(ip, "gateway") is { } g && !IPAddress.TryParse(g, out gw))
                    throw new FormatException($"gateway '{g}' is not an address");
                int? idx = ip.TryGetProperty("interface", out var ie) && ie.ValueKind == JsonValueKind.Number && ie.TryGetInt32(out var ii) ? ii : null;
                result.Ips.Add(new ResultIp(a, p, gw, idx));
            }
        if (root.TryGetProperty("routes", out var routes) && routes.ValueKind == JsonValueKind.Array)
            foreach (var r in routes.EnumerateArray())
            {
                var dst = GetString(r, "dst") ?? throw new FormatException("route without dst");
                if (!Cidr.TryParse(dst, out var cidr, out var err)) throw new FormatException(err);
                IPAddress? gw = null;
                if (GetString(r, "gw") is { } g && !IPAddress.TryParse(g, out gw))
                    throw new FormatException($"route gw '{g}' is not an address");
                result.Routes.Add(new ResultRoute(cidr, gw));
            }
        if (root.TryGetProperty("dns", out var dns) && dns.ValueKind == JsonValueKind.Object)
        {
            if (dns.TryGetProperty("nameservers", out var ns) && ns.ValueKind == JsonValueKind.Array)
                result.DnsNameservers.AddRange(ns.EnumerateArray().Where(n => n.ValueKind == JsonValueKind.String).Select(n => n.GetString()!));
            if (dns.TryGetProperty("search", out var se) && se.ValueKind == JsonValueKind.Array)
                result.DnsSearch.AddRange(se.EnumerateArray().Where(n => n.ValueKind == JsonValueKind.String).Select(n => n.GetString()!));
        }
        return result;
    }

    private static string? GetString(JsonElement e, string name) =>
        e.ValueKind != JsonValueKind.Object ? throw new FormatException($"expected an object holding \"{name}\", got {e.ValueKind.ToString().ToLowerInvariant()}") :
        e.TryGetProperty(name, out var v) ? v.ValueKind switch
        {
            JsonValueKind.String => v.GetString(),
            JsonValueKind.Null => null,
            _ => throw new FormatException($"\"{name}\" must be a string"),
        } : null;
}
