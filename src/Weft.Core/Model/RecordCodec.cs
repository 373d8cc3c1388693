using System.Buffers;
using System.Text.Json;

namespace Weft.Model;

/// <summary>
/// Hand-written JSON for the datastore records the CNI plugin reads and writes on every ADD and DEL. It writes the
/// bytes <see cref="ModelJson"/> writes (camelCase names in declaration order, nulls left out, the default escaping)
/// and reads what it reads (exact names, unknown names skipped, required names enforced; a field left out keeps the
/// record's default, where ModelJson leaves an init-only one null, and no writer leaves one out), so the agent and weftctl,
/// which keep <see cref="ModelJson"/>, and the plugin read each other's records. Why by hand: the source-generated
/// metadata is built on first use in every process, ~3 ms of a ~15 ms plugin run. Checked against
/// <see cref="ModelJson"/> by tests/Weft.Tests/Model/RecordCodecTests.cs.
/// </summary>
internal static class RecordCodec
{
    public static byte[] Write<T>(T value, Action<Utf8JsonWriter, T> write)
    {
        var buffer = new ArrayBufferWriter<byte>(256);
        using (var w = new Utf8JsonWriter(buffer, PlainJsonEncoder.Options())) write(w, value);
        return buffer.WrittenSpan.ToArray();
    }

    public static T Read<T>(byte[] data, string key, ReadObject<T> read) where T : class
    {
        try
        {
            var r = new Utf8JsonReader(data);
            if (!r.Read()) throw new JsonException("empty");
            if (r.TokenType == JsonTokenType.Null) throw new InvalidDataException($"datastore record {key} is null");
            var value = read(ref r);
            if (r.Read()) throw new JsonException($"unexpected {r.TokenType} after the record");
            return value;
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or FormatException)
        {
            throw new InvalidDataException($"datastore record {key} is malformed: {e.Message}", e);
        }
    }

    public delegate T ReadObject<out T>(ref Utf8JsonReader r);

    // ------------------------------------------------------------------ writers (declaration order, as ModelJson)

    public static void WritePool(Utf8JsonWriter w, IPPool p)
    {
        w.WriteStartObject();
        Str(w, "name"u8, p.Name);
        Str(w, "cidr"u8, p.Cidr);
        w.WriteNumber("blockSize"u8, p.BlockSize);
        Str(w, "nodeSelector"u8, p.NodeSelector);
        w.WriteBoolean("disabled"u8, p.Disabled);
        w.WriteBoolean("natOutgoing"u8, p.NatOutgoing);
        Str(w, "ipipMode"u8, p.IpipMode);
        Str(w, "vxlanMode"u8, p.VxlanMode);
        StrList(w, "allowedUses"u8, p.AllowedUses);
        w.WriteBoolean("disableBGPExport"u8, p.DisableBGPExport);
        Str(w, "assignmentMode"u8, p.AssignmentMode);
        Str(w, "creationTimestamp"u8, p.CreationTimestamp);
        w.WriteEndObject();
    }

    public static void WriteReservation(Utf8JsonWriter w, IPReservation v)
    {
        w.WriteStartObject();
        Str(w, "name"u8, v.Name);
        StrList(w, "reservedCIDRs"u8, v.ReservedCIDRs);
        w.WriteEndObject();
    }

    public static void WriteBlock(Utf8JsonWriter w, AllocationBlock b)
    {
        w.WriteStartObject();
        Str(w, "cidr"u8, b.Cidr);
        Str(w, "affinity"u8, b.Affinity);
        Str(w, "pool"u8, b.Pool);
        if (b.Allocations is not null)
        {
            w.WriteStartArray("allocations"u8);
            foreach (var a in b.Allocations)
            {
                if (a is null) { w.WriteNullValue(); continue; }
                w.WriteStartObject();
                w.WriteNumber("ordinal"u8, a.Ordinal);
                Str(w, "handle"u8, a.Handle);
                StrMap(w, "attributes"u8, a.Attributes);
                w.WriteEndObject();
            }
            w.WriteEndArray();
        }
        w.WriteEndObject();
    }

    public static void WriteHandle(Utf8JsonWriter w, IpamHandle h)
    {
        w.WriteStartObject();
        Str(w, "id"u8, h.Id);
        Str(w, "node"u8, h.Node);
        Str(w, "network"u8, h.Network);
        Str(w, "containerId"u8, h.ContainerId);
        Str(w, "ifName"u8, h.IfName);
        if (h.Blocks is not null)
        {
            w.WriteStartObject("blocks"u8);
            foreach (var (k, v) in h.Blocks) w.WriteNumber(k, v);
            w.WriteEndObject();
        }
        Str(w, "created"u8, h.Created);
        w.WriteEndObject();
    }

    public static void WriteEndpoint(Utf8JsonWriter w, WorkloadEndpoint e)
    {
        w.WriteStartObject();
        Str(w, "node"u8, e.Node);
        Str(w, "network"u8, e.Network);
        Str(w, "containerId"u8, e.ContainerId);
        Str(w, "ifName"u8, e.IfName);
        Str(w, "namespace"u8, e.Namespace);
        Str(w, "pod"u8, e.Pod);
        Str(w, "netns"u8, e.Netns);
        Str(w, "hostInterface"u8, e.HostInterface);
        Str(w, "mac"u8, e.Mac);
        Str(w, "mode"u8, e.Mode);
        StrList(w, "addresses"u8, e.Addresses);
        StrMap(w, "labels"u8, e.Labels);
        Str(w, "created"u8, e.Created);
        w.WriteEndObject();
    }

    public static void WriteNode(Utf8JsonWriter w, NodeRecord n)
    {
        w.WriteStartObject();
        Str(w, "name"u8, n.Name);
        StrMap(w, "labels"u8, n.Labels);
        Str(w, "underlayAddress"u8, n.UnderlayAddress);
        Str(w, "backend"u8, n.Backend);
        Str(w, "vtepMac"u8, n.VtepMac);
        Str(w, "vtepAddress"u8, n.VtepAddress);
        w.WriteNumber("mtu"u8, n.Mtu);
        Str(w, "agentId"u8, n.AgentId);
        Str(w, "heartbeat"u8, n.Heartbeat);
        w.WriteEndObject();
    }

    private static void Str(Utf8JsonWriter w, ReadOnlySpan<byte> name, string? value)
    {
        if (value is not null) w.WriteString(name, value);
    }

    private static void StrList(Utf8JsonWriter w, ReadOnlySpan<byte> name, List<string>? list)
    {
        if (list is null) return;
        w.WriteStartArray(name);
        foreach (var s in list)
        {
            if (s is null) w.WriteNullValue();
            else w.WriteStringValue(s);
        }
        w.WriteEndArray();
    }

    private static void StrMap(Utf8JsonWriter w, ReadOnlySpan<byte> name, Dictionary<string, string>? map)
    {
        if (map is null) return;
        w.WriteStartObject(name);
        foreach (var (k, v) in map)
        {
            if (v is null) w.WriteNull(k);
            else w.WriteString(k, v);
        }
        w.WriteEndObject();
    }

    // ------------------------------------------------------------------ readers (exact names; unknown ones skipped)

    public static IPPool ReadPool(ref Utf8JsonReader r)
    {
        Expect(ref r, JsonTokenType.StartObject);
        string? name = null, cidr = null, nodeSelector = null, ipip = null, vxlan = null, assignment = null, created = null;
        int blockSize = 0;
        bool disabled = false, nat = false, noExport = false, hasSelector = false, hasIpip = false, hasVxlan = false, hasUses = false, hasAssignment = false;
        List<string>? uses = null;
        while (NextProperty(ref r))
        {
            if (r.ValueTextEquals("name"u8)) name = Text(ref r);
            else if (r.ValueTextEquals("cidr"u8)) cidr = Text(ref r);
            else if (r.ValueTextEquals("blockSize"u8)) blockSize = Int(ref r);
            else if (r.ValueTextEquals("nodeSelector"u8)) { nodeSelector = Text(ref r); hasSelector = true; }
            else if (r.ValueTextEquals("disabled"u8)) disabled = Bool(ref r);
            else if (r.ValueTextEquals("natOutgoing"u8)) nat = Bool(ref r);
            else if (r.ValueTextEquals("ipipMode"u8)) { ipip = Text(ref r); hasIpip = true; }
            else if (r.ValueTextEquals("vxlanMode"u8)) { vxlan = Text(ref r); hasVxlan = true; }
            else if (r.ValueTextEquals("allowedUses"u8)) { uses = TextList(ref r); hasUses = true; }
            else if (r.ValueTextEquals("disableBGPExport"u8)) noExport = Bool(ref r);
            else if (r.ValueTextEquals("assignmentMode"u8)) { assignment = Text(ref r); hasAssignment = true; }
            else if (r.ValueTextEquals("creationTimestamp"u8)) created = Text(ref r);
            else Skip(ref r);
        }
        // Absent keeps the record's defaults, as the source-generated reader does; present replaces them.
        var pool = new IPPool { Name = Required(name, "name"), Cidr = Required(cidr, "cidr") };
        return new IPPool
        {
            Name = pool.Name, Cidr = pool.Cidr, BlockSize = blockSize, Disabled = disabled, NatOutgoing = nat, DisableBGPExport = noExport,
            CreationTimestamp = created,
            NodeSelector = hasSelector ? nodeSelector! : pool.NodeSelector,
            IpipMode = hasIpip ? ipip! : pool.IpipMode,
            VxlanMode = hasVxlan ? vxlan! : pool.VxlanMode,
            AllowedUses = hasUses ? uses! : pool.AllowedUses,
            AssignmentMode = hasAssignment ? assignment! : pool.AssignmentMode,
        };
    }

    public static IPReservation ReadReservation(ref Utf8JsonReader r)
    {
        Expect(ref r, JsonTokenType.StartObject);
        string? name = null;
        List<string>? cidrs = null;
        var hasCidrs = false;
        while (NextProperty(ref r))
        {
            if (r.ValueTextEquals("name"u8)) name = Text(ref r);
            else if (r.ValueTextEquals("reservedCIDRs"u8)) { cidrs = TextList(ref r); hasCidrs = true; }
            else Skip(ref r);
        }
        return hasCidrs ? new IPReservation { Name = Required(name, "name"), ReservedCIDRs = cidrs! } : new IPReservation { Name = Required(name, "name") };
    }

    public static AllocationBlock ReadBlock(ref Utf8JsonReader r)
    {
        Expect(ref r, JsonTokenType.StartObject);
        string? cidr = null, affinity = null, pool = null;
        List<BlockAllocation>? allocations = null;
        while (NextProperty(ref r))
        {
            if (r.ValueTextEquals("cidr"u8)) cidr = Text(ref r);
            else if (r.ValueTextEquals("affinity"u8)) affinity = Text(ref r);
            else if (r.ValueTextEquals("pool"u8)) pool = Text(ref r);
            else if (r.ValueTextEquals("allocations"u8)) allocations = Allocations(ref r);
            else Skip(ref r);
        }
        var block = new AllocationBlock { Cidr = Required(cidr, "cidr"), Affinity = affinity, Pool = Required(pool, "pool") };
        return allocations is null ? block : new AllocationBlock { Cidr = block.Cidr, Affinity = affinity, Pool = block.Pool, Allocations = allocations };
    }

    private static List<BlockAllocation>? Allocations(ref Utf8JsonReader r)
    {
        r.Read();
        if (r.TokenType == JsonTokenType.Null) return null;
        Expect(ref r, JsonTokenType.StartArray);
        var list = new List<BlockAllocation>();
        while (r.Read() && r.TokenType != JsonTokenType.EndArray)
        {
            if (r.TokenType == JsonTokenType.Null) { list.Add(null!); continue; }
            Expect(ref r, JsonTokenType.StartObject);
            var ordinal = 0;
            string? handle = null;
            Dictionary<string, string>? attributes = null;
            var hasAttributes = false;
            while (NextProperty(ref r))
            {
                if (r.ValueTextEquals("ordinal"u8)) ordinal = Int(ref r);
                else if (r.ValueTextEquals("handle"u8)) handle = Text(ref r);
                else if (r.ValueTextEquals("attributes"u8)) { attributes = TextMap(ref r); hasAttributes = true; }
                else Skip(ref r);
            }
            list.Add(hasAttributes
                ? new BlockAllocation { Ordinal = ordinal, Handle = Required(handle, "handle"), Attributes = attributes! }
                : new BlockAllocation { Ordinal = ordinal, Handle = Required(handle, "handle") });
        }
        return list;
    }

    public static IpamHandle ReadHandle(ref Utf8JsonReader r)
    {
        Expect(ref r, JsonTokenType.StartObject);
        string? id = null, node = null, network = null, containerId = null, ifName = null, created = null;
        bool hasNetwork = false, hasContainer = false, hasIfName = false, hasBlocks = false;
        Dictionary<string, int>? blocks = null;
        while (NextProperty(ref r))
        {
            if (r.ValueTextEquals("id"u8)) id = Text(ref r);
            else if (r.ValueTextEquals("node"u8)) node = Text(ref r);
            else if (r.ValueTextEquals("network"u8)) { network = Text(ref r); hasNetwork = true; }
            else if (r.ValueTextEquals("containerId"u8)) { containerId = Text(ref r); hasContainer = true; }
            else if (r.ValueTextEquals("ifName"u8)) { ifName = Text(ref r); hasIfName = true; }
            else if (r.ValueTextEquals("blocks"u8)) { blocks = IntMap(ref r); hasBlocks = true; }
            else if (r.ValueTextEquals("created"u8)) created = Text(ref r);
            else Skip(ref r);
        }
        var defaults = new IpamHandle { Id = Required(id, "id"), Node = Required(node, "node") };
        return new IpamHandle
        {
            Id = defaults.Id, Node = defaults.Node, Created = created,
            Network = hasNetwork ? network! : defaults.Network,
            ContainerId = hasContainer ? containerId! : defaults.ContainerId,
            IfName = hasIfName ? ifName! : defaults.IfName,
            Blocks = hasBlocks ? blocks! : defaults.Blocks,
        };
    }

    public static WorkloadEndpoint ReadEndpoint(ref Utf8JsonReader r)
    {
        Expect(ref r, JsonTokenType.StartObject);
        string? node = null, network = null, containerId = null, ifName = null, ns = null, pod = null, netns = null, host = null, mac = null, mode = null, created = null;
        List<string>? addresses = null;
        Dictionary<string, string>? labels = null;
        bool hasMode = false, hasAddresses = false, hasLabels = false;
        while (NextProperty(ref r))
        {
            if (r.ValueTextEquals("node"u8)) node = Text(ref r);
            else if (r.ValueTextEquals("network"u8)) network = Text(ref r);
            else if (r.ValueTextEquals("containerId"u8)) containerId = Text(ref r);
            else if (r.ValueTextEquals("ifName"u8)) ifName = Text(ref r);
            else if (r.ValueTextEquals("namespace"u8)) ns = Text(ref r);
            else if (r.ValueTextEquals("pod"u8)) pod = Text(ref r);
            else if (r.ValueTextEquals("netns"u8)) netns = Text(ref r);
            else if (r.ValueTextEquals("hostInterface"u8)) host = Text(ref r);
            else if (r.ValueTextEquals("mac"u8)) mac = Text(ref r);
            else if (r.ValueTextEquals("mode"u8)) { mode = Text(ref r); hasMode = true; }
            else if (r.ValueTextEquals("addresses"u8)) { addresses = TextList(ref r); hasAddresses = true; }
            else if (r.ValueTextEquals("labels"u8)) { labels = TextMap(ref r); hasLabels = true; }
            else if (r.ValueTextEquals("created"u8)) created = Text(ref r);
            else Skip(ref r);
        }
        var d = new WorkloadEndpoint
        {
            Node = Required(node, "node"), Network = Required(network, "network"), ContainerId = Required(containerId, "containerId"),
            IfName = Required(ifName, "ifName"), HostInterface = Required(host, "hostInterface"),
        };
        return new WorkloadEndpoint
        {
            Node = d.Node, Network = d.Network, ContainerId = d.ContainerId, IfName = d.IfName, HostInterface = d.HostInterface,
            Namespace = ns, Pod = pod, Netns = netns, Mac = mac, Created = created,
            Mode = hasMode ? mode! : d.Mode,
            Addresses = hasAddresses ? addresses! : d.Addresses,
            Labels = hasLabels ? labels! : d.Labels,
        };
    }

    public static NodeRecord ReadNode(ref Utf8JsonReader r)
    {
        Expect(ref r, JsonTokenType.StartObject);
        string? name = null, underlay = null, backend = null, vtepMac = null, vtepAddress = null, agentId = null, heartbeat = null;
        Dictionary<string, string>? labels = null;
        var hasLabels = false;
        var mtu = 0;
        while (NextProperty(ref r))
        {
            if (r.ValueTextEquals("name"u8)) name = Text(ref r);
            else if (r.ValueTextEquals("labels"u8)) { labels = TextMap(ref r); hasLabels = true; }
            else if (r.ValueTextEquals("underlayAddress"u8)) underlay = Text(ref r);
            else if (r.ValueTextEquals("backend"u8)) backend = Text(ref r);
            else if (r.ValueTextEquals("vtepMac"u8)) vtepMac = Text(ref r);
            else if (r.ValueTextEquals("vtepAddress"u8)) vtepAddress = Text(ref r);
            else if (r.ValueTextEquals("mtu"u8)) mtu = Int(ref r);
            else if (r.ValueTextEquals("agentId"u8)) agentId = Text(ref r);
            else if (r.ValueTextEquals("heartbeat"u8)) heartbeat = Text(ref r);
            else Skip(ref r);
        }
        var n = new NodeRecord
        {
            Name = Required(name, "name"), UnderlayAddress = underlay, Backend = backend, VtepMac = vtepMac, VtepAddress = vtepAddress,
            Mtu = mtu, AgentId = agentId, Heartbeat = heartbeat,
        };
        return hasLabels
            ? new NodeRecord { Name = n.Name, UnderlayAddress = underlay, Backend = backend, VtepMac = vtepMac, VtepAddress = vtepAddress, Mtu = mtu, AgentId = agentId, Heartbeat = heartbeat, Labels = labels! }
            : n;
    }

    /// <summary>Moves to the next property name of the current object; false at its end.</summary>
    private static bool NextProperty(ref Utf8JsonReader r)
    {
        if (!r.Read()) throw new JsonException("unexpected end of the record");
        if (r.TokenType == JsonTokenType.EndObject) return false;
        if (r.TokenType != JsonTokenType.PropertyName) throw new JsonException($"expected a property name, got {r.TokenType}");
        return true;
    }

    private static void Expect(ref Utf8JsonReader r, JsonTokenType type)
    {
        if (r.TokenType != type) throw new JsonException($"expected {type}, got {r.TokenType}");
    }

    private static void Skip(ref Utf8JsonReader r)
    {
        r.Read();
        r.Skip();
    }

    private static string Required(string? value, string name) => value ?? throw new JsonException($"required property '{name}' is missing");

    private static string? Text(ref Utf8JsonReader r)
    {
        r.Read();
        return r.TokenType == JsonTokenType.Null ? null : r.TokenType == JsonTokenType.String ? r.GetString() : throw new JsonException($"expected a string, got {r.TokenType}");
    }

    private static int Int(ref Utf8JsonReader r)
    {
        r.Read();
        return r.TokenType == JsonTokenType.Number ? r.GetInt32() : throw new JsonException($"expected a number, got {r.TokenType}");
    }

    private static bool Bool(ref Utf8JsonReader r)
    {
        r.Read();
        return r.TokenType switch
        {
            JsonTokenType.True => true,
            JsonTokenType.False => false,
            _ => throw new JsonException($"expected true or false, got {r.TokenType}"),
        };
    }

    private static List<string>? TextList(ref Utf8JsonReader r)
    {
        r.Read();
        if (r.TokenType == JsonTokenType.Null) return null;
        Expect(ref r, JsonTokenType.StartArray);
        var list = new List<string>();
        while (r.Read() && r.TokenType != JsonTokenType.EndArray)
            list.Add(r.TokenType == JsonTokenType.Null ? null! : r.TokenType == JsonTokenType.String ? r.GetString()! : throw new JsonException($"expected a string, got {r.TokenType}"));
        return list;
    }

    private static Dictionary<string, string>? TextMap(ref Utf8JsonReader r)
    {
        r.Read();
        if (r.TokenType == JsonTokenType.Null) return null;
        Expect(ref r, JsonTokenType.StartObject);
        var map = new Dictionary<string, string>();
        while (NextProperty(ref r))
        {
            var key = r.GetString()!;
            map[key] = Text(ref r)!;
        }
        return map;
    }

    private static Dictionary<string, int>? IntMap(ref Utf8JsonReader r)
    {
        r.Read();
        if (r.TokenType == JsonTokenType.Null) return null;
        Expect(ref r, JsonTokenType.StartObject);
        var map = new Dictionary<string, int>();
        while (NextProperty(ref r))
        {
            var key = r.GetString()!;
            map[key] = Int(ref r);
        }
        return map;
    }
}

/// <summary>
/// The escaping of System.Text.Json's default encoder (everything outside printable ASCII, and the HTML-sensitive
/// characters, as \uXXXX; \b \t \n \f \r \\ short), written out by hand: the default encoder's static set-up walks
/// all of Unicode (~0.6 ms of each short-lived plugin run). Output is byte-identical (tests/Weft.Tests/Model/RecordCodecTests.cs).
/// </summary>
public sealed class PlainJsonEncoder : System.Text.Encodings.Web.JavaScriptEncoder
{
    public static readonly PlainJsonEncoder Instance = new();

    /// <summary>Options for a Utf8JsonWriter using this encoder.</summary>
    public static JsonWriterOptions Options(bool indented = false) => new() { Encoder = Instance, Indented = indented };

    private PlainJsonEncoder() { }

    public override int MaxOutputCharactersPerInputCharacter => 12; // a surrogate pair as two \uXXXX

    public override bool WillEncode(int unicodeScalar) =>
        unicodeScalar is < 0x20 or >= 0x7F or '"' or '&' or '\'' or '+' or '<' or '>' or '\\' or '`';

    public override unsafe int FindFirstCharacterToEncode(char* text, int textLength)
    {
        for (var i = 0; i < textLength; i++)
            if (WillEncode(text[i])) return i;
        return -1;
    }

    public override int FindFirstCharacterToEncodeUtf8(ReadOnlySpan<byte> utf8Text)
    {
        for (var i = 0; i < utf8Text.Length; i++)
            if (WillEncode(utf8Text[i])) return i;
        return -1;
    }

    public override unsafe bool TryEncodeUnicodeScalar(int unicodeScalar, char* buffer, int bufferLength, out int numberOfCharactersWritten)
    {
        var dest = new Span<char>(buffer, bufferLength);
        numberOfCharactersWritten = 0;
        string? shortForm = unicodeScalar switch
        {
            '\b' => "\\b", '\t' => "\\t", '\n' => "\\n", '\f' => "\\f", '\r' => "\\r", '\\' => "\\\\", _ => null,
        };
        if (shortForm is not null)
        {
            if (!shortForm.AsSpan().TryCopyTo(dest)) return false;
            numberOfCharactersWritten = 2;
            return true;
        }
        if (!WillEncode(unicodeScalar))
        {
            if (dest.Length < 1) return false;
            dest[0] = (char)unicodeScalar;
            numberOfCharactersWritten = 1;
            return true;
        }
        if (unicodeScalar < 0x10000) return TryHex(unicodeScalar, dest, ref numberOfCharactersWritten);
        var v = unicodeScalar - 0x10000;
        return TryHex(0xD800 + (v >> 10), dest, ref numberOfCharactersWritten)
            && TryHex(0xDC00 + (v & 0x3FF), dest[6..], ref numberOfCharactersWritten);
    }

    private static bool TryHex(int unit, Span<char> dest, ref int written)
    {
        if (dest.Length < 6) return false;
        dest[0] = '\\';
        dest[1] = 'u';
        for (var i = 0; i < 4; i++) dest[2 + i] = "0123456789ABCDEF"[(unit >> (12 - 4 * i)) & 0xF];
        written += 6;
        return true;
    }
}
