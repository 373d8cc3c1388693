using System.Text.Json.Serialization;

namespace Weft.Model;

/// <summary>
/// Calico's IPPool (projectcalico.org/v3), stored as Weft's own record. Field names follow Calico's spec so the
/// stored JSON reads like the document the operator applied.
/// </summary>
public sealed class IPPool
{
    public required string Name { get; init; }
    public required string Cidr { get; init; }
    public int BlockSize { get; init; }
    public string NodeSelector { get; init; } = "all()";
    public bool Disabled { get; init; }
    public bool NatOutgoing { get; init; }
    public string IpipMode { get; init; } = "Never";
    public string VxlanMode { get; init; } = "Never";
    public List<string> AllowedUses { get; init; } = ["Workload", "Tunnel"];
    public bool DisableBGPExport { get; init; }
    public string AssignmentMode { get; init; } = "Automatic";
    public string? CreationTimestamp { get; init; }

    [JsonIgnore] public Cidr Network => Model.Cidr.Parse(Cidr);

    /// <summary>The overlay this pool asks for, summarised: "VXLAN", "IPIP" or "None".</summary>
    [JsonIgnore]
    public string Encapsulation =>
        !string.Equals(VxlanMode, "Never", StringComparison.Ordinal) ? "VXLAN" + CrossSubnetSuffix(VxlanMode)
        : !string.Equals(IpipMode, "Never", StringComparison.Ordinal) ? "IPIP" + CrossSubnetSuffix(IpipMode)
        : "None";

    [JsonIgnore] public bool UsableForWorkloads => !Disabled && AllowedUses.Contains("Workload") && AssignmentMode == "Automatic";

    private static string CrossSubnetSuffix(string mode) => mode == "CrossSubnet" ? "CrossSubnet" : "";

    public static int DefaultBlockSize(System.Net.Sockets.AddressFamily family) =>
        family == System.Net.Sockets.AddressFamily.InterNetwork ? 26 : 122;
}

/// <summary>Calico's IPReservation: addresses IPAM must never hand out.</summary>
public sealed class IPReservation
{
    public required string Name { get; init; }
    public List<string> ReservedCIDRs { get; init; } = [];
}

/// <summary>One address held in a block, and who holds it.</summary>
public sealed class BlockAllocation
{
    public int Ordinal { get; init; }
    public required string Handle { get; init; }
    public Dictionary<string, string> Attributes { get; init; } = [];
}

/// <summary>
/// An allocation block (Calico's model): a fixed-size slice of a pool, usually claimed by one node (affinity),
/// changed only by compare-and-swap so two writers can never hand out one address twice.
/// </summary>
public sealed class AllocationBlock
{
    public required string Cidr { get; init; }
    public string? Affinity { get; set; }
    public required string Pool { get; init; }
    public List<BlockAllocation> Allocations { get; init; } = [];

    [JsonIgnore] public Cidr Network => Model.Cidr.Parse(Cidr);
}

/// <summary>An allocation handle: one pod interface's claim on addresses, by block.</summary>
public sealed class IpamHandle
{
    public required string Id { get; init; }
    public required string Node { get; init; }
    public string Network { get; init; } = "";
    public string ContainerId { get; init; } = "";
    public string IfName { get; init; } = "";
    public Dictionary<string, int> Blocks { get; init; } = [];
    public string? Created { get; init; }
}

/// <summary>A pod interface the plugin finished building (Calico's WorkloadEndpoint).</summary>
public sealed class WorkloadEndpoint
{
    public required string Node { get; init; }
    public required string Network { get; init; }
    public required string ContainerId { get; init; }
    public required string IfName { get; init; }
    public string? Namespace { get; init; }
    public string? Pod { get; init; }
    public string? Netns { get; init; }
    public required string HostInterface { get; init; }
    public string? Mac { get; init; }
    public string Mode { get; init; } = "routed";
    public List<string> Addresses { get; init; } = [];
    public Dictionary<string, string> Labels { get; init; } = [];
    public string? Created { get; init; }
}

/// <summary>A node as the datastore knows it: written by its agent, read by every other agent and by the plugin (labels).</summary>
public sealed class NodeRecord
{
    public required string Name { get; init; }
    public Dictionary<string, string> Labels { get; init; } = [];
    /// <summary>The node's address on the underlay ("physical") network, with its prefix: "198.51.100.11/24".</summary>
    public string? UnderlayAddress { get; init; }
    public string? Backend { get; init; }
    public string? VtepMac { get; init; }
    public string? VtepAddress { get; init; }
    public int Mtu { get; init; }
    /// <summary>Random per agent process: tells a restart of the same node from a second node claiming its name.</summary>
    public string? AgentId { get; init; }
    public string? Heartbeat { get; init; }
}

/// <summary>Where each kind of record lives in the datastore's key space.</summary>
public static class Keys
{
    public const string Root = "/weft/";
    public const string Pools = "/weft/ippools/";
    public const string Reservations = "/weft/ipreservations/";
    public const string Blocks = "/weft/ipam/blocks/";
    public const string Affinities = "/weft/ipam/affinity/";
    public const string Handles = "/weft/ipam/handles/";
    /// <summary>Per node, bumped by every block claim: claims are compare-and-swapped on it, so a node claims one block at a time.</summary>
    public const string BlockClaims = "/weft/ipam/claims/";
    public const string Endpoints = "/weft/endpoints/";
    public const string Nodes = "/weft/nodes/";
    /// <summary>Policy documents as applied, by IR id: knp/NS/NAME, np/NS/NAME, gnp/NAME.</summary>
    public const string Policies = "/weft/policies/";
    public const string Tiers = "/weft/tiers/";
    /// <summary>The Tigera operator's Installation documents as applied (the dataplane choice).</summary>
    public const string Installations = "/weft/installations/";
    /// <summary>v1 Namespace and Pod documents (labels, named ports) when no Kubernetes API server provides them.</summary>
    public const string K8sNamespaces = "/weft/k8s/namespaces/";
    public const string K8sPods = "/weft/k8s/pods/";
    /// <summary>Kubernetes Nodes (in Kubernetes mode, the API's own; kubelet registers them).</summary>
    public const string K8sNodes = "/weft/k8s/nodes/";

    public static string Pool(string name) => Pools + name;
    public static string Reservation(string name) => Reservations + name;
    public static string Block(Cidr cidr) => Blocks + cidr.ToKey();
    public static string Affinity(string node, Cidr cidr) => Affinities + node + "/" + cidr.ToKey();
    public static string NodeAffinities(string node) => Affinities + node + "/";
    public static string Handle(string id) => Handles + id;
    public static string BlockClaim(string node) => BlockClaims + node;
    public static string Endpoint(string node, string handleId) => Endpoints + node + "/" + handleId;
    public static string NodeEndpoints(string node) => Endpoints + node + "/";
    public static string Node(string name) => Nodes + name;
    public static string Policy(string id) => Policies + id;
    public static string Tier(string name) => Tiers + name;
    public static string K8sNamespace(string name) => K8sNamespaces + name;
    public static string K8sPod(string ns, string name) => K8sPods + ns + "/" + name;
    public static string K8sNode(string name) => K8sNodes + name;

    /// <summary>The handle of one pod interface: network + container id + interface name.</summary>
    public static string HandleId(string network, string containerId, string ifName) => $"{network}.{containerId}.{ifName}";
}

[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase, DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull, WriteIndented = false)]
[JsonSerializable(typeof(IPPool))]
[JsonSerializable(typeof(IPReservation))]
[JsonSerializable(typeof(AllocationBlock))]
[JsonSerializable(typeof(IpamHandle))]
[JsonSerializable(typeof(WorkloadEndpoint))]
[JsonSerializable(typeof(NodeRecord))]
public sealed partial class ModelJson : JsonSerializerContext;

public static class Codec
{
    // The records the CNI plugin touches on every ADD/DEL, without building ModelJson's metadata (see RecordCodec).
    public static byte[] Encode(IPPool value) => RecordCodec.Write(value, RecordCodec.WritePool);
    public static byte[] Encode(IPReservation value) => RecordCodec.Write(value, RecordCodec.WriteReservation);
    public static byte[] Encode(AllocationBlock value) => RecordCodec.Write(value, RecordCodec.WriteBlock);
    public static byte[] Encode(IpamHandle value) => RecordCodec.Write(value, RecordCodec.WriteHandle);
    public static byte[] Encode(WorkloadEndpoint value) => RecordCodec.Write(value, RecordCodec.WriteEndpoint);
    public static byte[] Encode(NodeRecord value) => RecordCodec.Write(value, RecordCodec.WriteNode);

    /// <summary>One of the records above, read as <see cref="ModelJson"/> reads it.</summary>
    /// <exception cref="InvalidDataException">the record is null or malformed.</exception>
    public static T Decode<T>(byte[] data, string key) where T : class
    {
        object value =
            typeof(T) == typeof(IPPool) ? RecordCodec.Read(data, key, RecordCodec.ReadPool)
            : typeof(T) == typeof(IPReservation) ? RecordCodec.Read(data, key, RecordCodec.ReadReservation)
            : typeof(T) == typeof(AllocationBlock) ? RecordCodec.Read(data, key, RecordCodec.ReadBlock)
            : typeof(T) == typeof(IpamHandle) ? RecordCodec.Read(data, key, RecordCodec.ReadHandle)
            : typeof(T) == typeof(WorkloadEndpoint) ? RecordCodec.Read(data, key, RecordCodec.ReadEndpoint)
            : typeof(T) == typeof(NodeRecord) ? RecordCodec.Read(data, key, RecordCodec.ReadNode)
            : throw new NotSupportedException($"no hand-written codec for {typeof(T).Name}; use the ModelJson overload");
        return (T)value;
    }

    public static byte[] Encode<T>(T value, System.Text.Json.Serialization.Metadata.JsonTypeInfo<T> info) =>
        System.Text.Json.JsonSerializer.SerializeToUtf8Bytes(value, info);

    public static T Decode<T>(byte[] data, System.Text.Json.Serialization.Metadata.JsonTypeInfo<T> info, string key) =>
        System.Text.Json.JsonSerializer.Deserialize(data, info) ?? throw new InvalidDataException($"datastore record {key} is null");
}
