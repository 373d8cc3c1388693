using System.Net;
using System.Net.NetworkInformation;
using System.Text.Json;
using Weft.Cni.Results;
using Weft.Cni.Skeleton;
using Weft.Datastore;
using Weft.Model;

namespace Weft.Cni.Config;

public enum NetworkMode { Routed, Bridge }

/// <summary>The weft plugin's network configuration (one conflist element or a single .conf), validated.</summary>
public sealed class NetConf
{
    public required string CniVersion { get; init; }
    public required string Name { get; init; }
    public string Datastore { get; init; } = DatastoreFactory.DefaultUri;
    public string NodeName { get; init; } = "";
    public int Mtu { get; init; } = 1500;
    public NetworkMode Mode { get; init; } = NetworkMode.Routed;
    public string BridgeName { get; init; } = Weft.Model.Ownership.DefaultBridge;
    /// <summary>The agent's BPF pin directory: while the BPF policy dataplane enforces, its programs are pinned there.</summary>
    public string BpfPinDir { get; init; } = Weft.Model.Ownership.BpfPinDir;
    /// <summary>"weft-ipam" (built in) or the name of a plugin to delegate to.</summary>
    public string IpamType { get; init; } = WeftIpamType;
    public IReadOnlyList<IpRequest> RuntimeIps { get; init; } = [];
    public PhysicalAddress? RuntimeMac { get; init; }
    public CniResult? PrevResult { get; init; }
    /// <summary>runtimeConfig["cni.dev/valid-attachments"] (or cni.dev/attachments) for GC.</summary>
    public IReadOnlyList<(string ContainerId, string IfName)>? ValidAttachments { get; init; }
    public required byte[] Raw { get; init; }

    public const string WeftIpamType = "weft-ipam";
    public bool DelegatesIpam => IpamType != WeftIpamType;

    public static NetConf Parse(ReadOnlySpan<byte> stdin, string command)
    {
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(stdin.ToArray(), new JsonDocumentOptions { MaxDepth = 64 });
        }
        catch (JsonException e)
        {
            throw new CniException(CniCodes.DecodeFailure, "network configuration on stdin is not valid JSON", e.Message);
        }
        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
                throw new CniException(CniCodes.DecodeFailure, "network configuration on stdin must be a JSON object");
            var version = Str(root, "cniVersion") ?? "0.1.0";
            if (command != "VERSION" && !CniVersions.IsSupported(version))
                throw new CniException(CniCodes.IncompatibleVersion, $"cniVersion {version} is not supported; weft supports {string.Join(", ", CniVersions.Supported)}");
            var name = Str(root, "name");
            if (command is "VERSION") name ??= "";
            else if (string.IsNullOrEmpty(name))
                throw new CniException(CniCodes.InvalidNetworkConfig, "network configuration has no \"name\"");
            else if (!char.IsAsciiLetterOrDigit(name[0]) || name.Any(c => !(char.IsAsciiLetterOrDigit(c) || c is '_' or '.' or '-')))
                throw new CniException(CniCodes.InvalidNetworkConfig, $"network name '{name}' is invalid: use letters, digits, '_', '.', '-'");
            var type = Str(root, "type");
            if (command != "VERSION" && type is not null && type != "weft")
                throw new CniException(CniCodes.InvalidNetworkConfig, $"\"type\" is '{type}' but this plugin is 'weft'");

            var mode = Str(root, "mode") switch
            {
                null or "routed" => NetworkMode.Routed,
                "bridge" => NetworkMode.Bridge,
                var other => throw new CniException(CniCodes.InvalidNetworkConfig, $"\"mode\": '{other}' is unknown; use \"routed\" or \"bridge\""),
            };
            var mtu = Int(root, "mtu") ?? 1500;
            if (mtu is < 576 or > 65535)
                throw new CniException(CniCodes.InvalidNetworkConfig, $"\"mtu\": {mtu} is out of range (576-65535)");
            var bridge = Str(root, "bridge") ?? Weft.Model.Ownership.DefaultBridge;
            if (bridge.Length is 0 or > 15)
                throw new CniException(CniCodes.InvalidNetworkConfig, $"\"bridge\": '{bridge}' is not a valid interface name");
            var pinDir = Str(root, "bpfPinDir") ?? Weft.Model.Ownership.BpfPinDir;
            if (!Path.IsPathFullyQualified(pinDir))
                throw new CniException(CniCodes.InvalidNetworkConfig, $"\"bpfPinDir\": '{pinDir}' must be an absolute path");
            var datastore = Str(root, "datastore") ?? DatastoreFactory.DefaultUri;
            if (!datastore.StartsWith("sqlite:///", StringComparison.Ordinal) && !DatastoreFactory.IsRemote(datastore))
                throw new CniException(CniCodes.InvalidNetworkConfig, $"\"datastore\": '{datastore}' is not a datastore URI; use sqlite:///path, etcd://host:port or kubernetes:///path/to/kubeconfig");

            var ipamType = WeftIpamType;
            if (root.TryGetProperty("ipam", out var ipam) && ipam.ValueKind != JsonValueKind.Null)
            {
                if (ipam.ValueKind != JsonValueKind.Object)
                    throw new CniException(CniCodes.InvalidNetworkConfig, "\"ipam\" must be an object like {\"type\": \"weft-ipam\"}");
                ipamType = Str(ipam, "type", "ipam.type") ?? WeftIpamType;
                if (ipamType.Length == 0 || ipamType.Contains('/', StringComparison.Ordinal) || ipamType.Contains("..", StringComparison.Ordinal))
                    throw new CniException(CniCodes.InvalidNetworkConfig, $"\"ipam.type\": '{ipamType}' is not a plugin name");
            }

            var ips = new List<IpRequest>();
            PhysicalAddress? mac = null;
            IReadOnlyList<(string, string)>? attachments = null;
            if (root.TryGetProperty("runtimeConfig", out var rc) && rc.ValueKind == JsonValueKind.Object)
            {
                if (rc.TryGetProperty("ips", out var rips))
                    ips.AddRange(ParseIps(rips, "runtimeConfig.ips"));
                if (Str(rc, "mac", "runtimeConfig.mac") is { } macText)
                    mac = ParseMac(macText, "runtimeConfig.mac");
                attachments = ParseAttachments(rc, "cni.dev/valid-attachments") ?? ParseAttachments(rc, "cni.dev/attachments");
            }
            // The older "args" convention: {"args": {"cni": {"ips": [...]}}}.
            if (root.TryGetProperty("args", out var args) && args.ValueKind == JsonValueKind.Object &&
                args.TryGetProperty("cni", out var cniArgs) && cniArgs.ValueKind == JsonValueKind.Object &&
                cniArgs.TryGetProperty("ips", out var argIps))
                ips.AddRange(ParseIps(argIps, "args.cni.ips"));

            CniResult? prev = null;
            if (root.TryGetProperty("prevResult", out var pr) && pr.ValueKind == JsonValueKind.Object)
            {
                try { prev = CniResult.Parse(pr); }
                catch (FormatException e) { throw new CniException(CniCodes.DecodeFailure, $"prevResult is malformed: {e.Message}"); }
            }

            return new NetConf
            {
                CniVersion = version,
                Name = name ?? "",
                Datastore = datastore,
                NodeName = Str(root, "nodename") ?? "",
                Mtu = mtu,
                Mode = mode,
                BridgeName = bridge,
                BpfPinDir = pinDir,
                IpamType = ipamType,
                RuntimeIps = ips,
                RuntimeMac = mac,
                PrevResult = prev,
                ValidAttachments = attachments,
                Raw = stdin.ToArray(),
            };
        }
    }

    private static List<IpRequest> ParseIps(JsonElement e, string field)
    {
        if (e.ValueKind != JsonValueKind.Array)
            throw new CniException(CniCodes.InvalidNetworkConfig, $"\"{field}\" must be a list of addresses");
        var list = new List<IpRequest>();
        foreach (var item in e.EnumerateArray())
        {
            var text = item.ValueKind == JsonValueKind.String ? item.GetString()! : throw new CniException(CniCodes.InvalidNetworkConfig, $"\"{field}\" entries must be strings");
            list.Add(IpRequest.Parse(text, field));
        }
        return list;
    }

    private static List<(string, string)>? ParseAttachments(JsonElement rc, string key)
    {
        if (!rc.TryGetProperty(key, out var e) || e.ValueKind == JsonValueKind.Null) return null;
        if (e.ValueKind != JsonValueKind.Array)
            throw new CniException(CniCodes.InvalidNetworkConfig, $"\"runtimeConfig.{key}\" must be a list of {{containerID, ifname}}");
        var list = new List<(string, string)>();
        foreach (var item in e.EnumerateArray())
        {
            if (item.ValueKind != JsonValueKind.Object)
                throw new CniException(CniCodes.InvalidNetworkConfig, $"\"runtimeConfig.{key}\" entries must be objects");
            var id = Str(item, "containerID", key + ".containerID");
            var ifname = Str(item, "ifname", key + ".ifname");
            if (string.IsNullOrEmpty(id) || string.IsNullOrEmpty(ifname))
                throw new CniException(CniCodes.InvalidNetworkConfig, $"\"runtimeConfig.{key}\" entries need containerID and ifname");
            list.Add((id, ifname));
        }
        return list;
    }

    internal static PhysicalAddress ParseMac(string text, string field)
    {
        try
        {
            var mac = PhysicalAddress.Parse(text.Replace(':', '-'));
            if (mac.GetAddressBytes().Length != 6) throw new FormatException();
            if ((mac.GetAddressBytes()[0] & 1) != 0) throw new FormatException();
            return mac;
        }
        catch (FormatException)
        {
            throw new CniException(CniCodes.InvalidNetworkConfig, $"\"{field}\": '{text}' is not a unicast MAC address like 0a:58:0a:f4:01:05");
        }
    }

    private static string? Str(JsonElement e, string name, string? path = null)
    {
        if (!e.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        if (v.ValueKind != JsonValueKind.String)
            throw new CniException(CniCodes.InvalidNetworkConfig, $"\"{path ?? name}\" must be a string, got {v.ValueKind.ToString().ToLowerInvariant()}");
        return v.GetString();
    }

    private static int? Int(JsonElement e, string name)
    {
        if (!e.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt32(out var i))
            throw new CniException(CniCodes.InvalidNetworkConfig, $"\"{name}\" must be an integer");
        return i;
    }
}

/// <summary>A specific address asked for, optionally with a prefix ("10.1.2.3" or "10.1.2.3/24").</summary>
public readonly record struct IpRequest(IPAddress Address, int? PrefixLength)
{
    public static IpRequest Parse(string text, string field)
    {
        var slash = text.IndexOf('/', StringComparison.Ordinal);
        var addr = slash < 0 ? text : text[..slash];
        if (!IPAddress.TryParse(addr, out var ip) || addr.Contains('%', StringComparison.Ordinal))
            throw new CniException(CniCodes.InvalidNetworkConfig, $"\"{field}\": '{text}' is not an IP address");
        if (slash < 0) return new IpRequest(ip, null);
        if (!Cidr.TryParse(text, out _, out var error))
            throw new CniException(CniCodes.InvalidNetworkConfig, $"\"{field}\": {error}");
        return new IpRequest(ip, int.Parse(text.AsSpan(slash + 1), System.Globalization.CultureInfo.InvariantCulture));
    }
}
