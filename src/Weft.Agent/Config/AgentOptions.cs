using System.Globalization;
using System.Text.Json;

namespace Weft.Agent.Config;

/// <summary>The agent's settings: flags, an optional JSON config file (same keys), and Flannel's net-conf.json.</summary>
public sealed class AgentOptions
{
    public string NodeName { get; set; } = Environment.MachineName;
    public string Datastore { get; set; } = Weft.Datastore.DatastoreFactory.DefaultUri;
    public string Backend { get; set; } = "vxlan";
    public string? UnderlayInterface { get; set; }
    public int Vni { get; set; } = 1;
    public int Port { get; set; } = 8472;
    public string SocketPath { get; set; } = "/var/run/weft/agent.sock";
    public string MetricsAddress { get; set; } = "0.0.0.0:9962";
    public string? NetConfPath { get; set; }
    public Dictionary<string, string> Labels { get; } = [];
    public TimeSpan Resync { get; set; } = TimeSpan.FromSeconds(10);
    /// <summary>Enforce network policy with the nftables dataplane (fail closed for endpoints not yet programmed).</summary>
    public bool Policy { get; set; } = true;
    /// <summary>The policy dataplane, "nftables" or "bpf"; null follows the datastore's Installation (else nftables).</summary>
    public string? Dataplane { get; set; }
    /// <summary>Tests only: a BPF policy object to load instead of the built-in one (to see a verifier refusal).</summary>
    public string? BpfPolicyObject { get; set; } = Environment.GetEnvironmentVariable("WEFT_BPF_POLICY_OBJECT");
    /// <summary>Flow capture (NFLOG verdicts, conntrack ends) into a ring of this many flows; 0 turns it off.</summary>
    public int FlowBuffer { get; set; } = Weft.Flows.FlowRing.DefaultCapacity;
    /// <summary>The flow API for remote readers (gRPC over TCP, Hubble's port); empty turns it off.</summary>
    public string FlowAddress { get; set; } = "0.0.0.0:4244";
    /// <summary>
    /// How natOutgoing masquerades: "bpf" (tc programs on the uplink, no conntrack for it), "nftables" (masquerade in
    /// the nat hook, conntrack for every flow), or "auto": bpf when the kernel and libbpf allow, else nftables.
    /// </summary>
    public string Masquerade { get; set; } = "auto";
    /// <summary>Where the BPF masquerade pins its translation state (a bpffs directory; mounted when missing).</summary>
    public string BpfPinDir { get; set; } = Weft.Model.Ownership.BpfPinDir;
    /// <summary>Kubernetes mode: how long a node's Kubernetes Node must be gone before its addresses and blocks are released.</summary>
    public TimeSpan NodeReleaseGrace { get; set; } = TimeSpan.FromMinutes(5);
    /// <summary>In the DaemonSet: the host's CNI directories as mounted (install-cni wrote them; the agent keeps them).</summary>
    public string? CniConfDir { get; set; }
    public string CniBinDir { get; set; } = "/host/opt/cni/bin";
    /// <summary>From net-conf.json: the pool to create when none covers it.</summary>
    public FlannelNetConf? NetConf { get; private set; }

    public static readonly string[] Backends = ["vxlan", "host-gw"];
    public static readonly string[] MasqueradeModes = ["auto", "bpf", "nftables"];

    public static AgentOptions Parse(string[] args)
    {
        var o = new AgentOptions();
        for (var i = 0; i < args.Length; i++)
        {
            var a = args[i];
            string Value() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{a} needs a value");
            switch (a)
            {
                case "--nodename": o.NodeName = Value(); break;
                case "--datastore": o.Datastore = Value(); break;
                case "--backend": o.Backend = Value(); break;
                case "--underlay-interface": o.UnderlayInterface = Value(); break;
                case "--vni": o.Vni = Int(a, Value()); break;
                case "--port": o.Port = Int(a, Value()); break;
                case "--socket": o.SocketPath = Value(); break;
                case "--metrics-address": o.MetricsAddress = Value(); break;
                case "--net-conf": o.NetConfPath = Value(); break;
                case "--policy":
                    o.Policy = Value() switch { "on" => true, "off" => false, var v => throw new ArgumentException($"--policy {v}: use on or off") };
                    break;
                case "--flows":
                    o.FlowBuffer = Value() switch { "on" => o.FlowBuffer > 0 ? o.FlowBuffer : Weft.Flows.FlowRing.DefaultCapacity, "off" => 0, var v => throw new ArgumentException($"--flows {v}: use on or off") };
                    break;
                case "--flow-buffer": o.FlowBuffer = Int(a, Value()); break;
                case "--flow-address": o.FlowAddress = Value(); break;
                case "--masquerade": o.Masquerade = Value(); break;
                case "--dataplane":
                    o.Dataplane = Value() switch { var v and ("nftables" or "bpf") => v, var v => throw new ArgumentException($"--dataplane {v}: use nftables or bpf") };
                    break;
                case "--bpf-pin-dir": o.BpfPinDir = Value(); break;
                case "--resync-seconds": o.Resync = TimeSpan.FromSeconds(Int(a, Value())); break;
                case "--node-release-grace": o.NodeReleaseGrace = TimeSpan.FromSeconds(Int(a, Value())); break;
                case "--cni-conf-dir": o.CniConfDir = Value(); break;
                case "--cni-bin-dir": o.CniBinDir = Value(); break;
                case "--label":
                    var kv = Value().Split('=', 2);
                    if (kv.Length != 2 || kv[0].Length == 0) throw new ArgumentException($"--label wants key=value, got '{string.Join('=', kv)}'");
                    o.Labels[kv[0]] = kv[1];
                    break;
                case "--config": o.ApplyConfigFile(Value()); break;
                case "-h" or "--help": throw new HelpRequestedException();
                default: throw new ArgumentException($"unknown flag '{a}' (see --help)");
            }
        }
        if (o.NetConfPath is not null)
        {
            o.NetConf = FlannelNetConf.Load(o.NetConfPath);
            o.Backend = o.NetConf.BackendType;
            if (o.NetConf.Vni is { } vni) o.Vni = vni;
            if (o.NetConf.Port is { } port) o.Port = port;
        }
        o.Validate();
        return o;
    }

    private void ApplyConfigFile(string path)
    {
        JsonDocument doc;
        try { doc = JsonDocument.Parse(File.ReadAllBytes(path)); }
        catch (Exception e) when (e is JsonException or IOException) { throw new ArgumentException($"{path}: {e.Message}"); }
        using (doc)
        {
            foreach (var p in doc.RootElement.EnumerateObject())
            {
                string S() => p.Value.ValueKind == JsonValueKind.String ? p.Value.GetString()! : throw new ArgumentException($"{path}: {p.Name} must be a string");
                int N() => p.Value.ValueKind == JsonValueKind.Number && p.Value.TryGetInt32(out var n) ? n : throw new ArgumentException($"{path}: {p.Name} must be an integer");
                switch (p.Name)
                {
                    case "nodeName": NodeName = S(); break;
                    case "datastore": Datastore = S(); break;
                    case "backend": Backend = S(); break;
                    case "underlayInterface": UnderlayInterface = S(); break;
                    case "vni": Vni = N(); break;
                    case "port": Port = N(); break;
                    case "socket": SocketPath = S(); break;
                    case "metricsAddress": MetricsAddress = S(); break;
                    case "netConf": NetConfPath = S(); break;
                    case "flowBuffer": FlowBuffer = N(); break;
                    case "flowAddress": FlowAddress = S(); break;
                    case "masquerade": Masquerade = S(); break;
                    case "dataplane": Dataplane = S() switch { var v and ("nftables" or "bpf") => v, _ => throw new ArgumentException($"{path}: dataplane must be nftables or bpf") }; break;
                    case "bpfPinDir": BpfPinDir = S(); break;
                    case "nodeReleaseGrace": NodeReleaseGrace = TimeSpan.FromSeconds(N()); break;
                    case "cniConfDir": CniConfDir = S(); break;
                    case "cniBinDir": CniBinDir = S(); break;
                    default: throw new ArgumentException($"{path}: unknown key '{p.Name}'");
                }
            }
        }
    }

    private void Validate()
    {
        if (!Backends.Contains(Backend)) throw new ArgumentException($"backend '{Backend}' is unknown; use {string.Join(" or ", Backends)}");
        if (Vni is < 1 or > 16_777_215) throw new ArgumentException($"VNI {Vni} is out of range (1-16777215)");
        if (Port is < 1 or > 65535) throw new ArgumentException($"port {Port} is out of range");
        if (!MasqueradeModes.Contains(Masquerade)) throw new ArgumentException($"masquerade '{Masquerade}' is unknown; use auto, bpf or nftables");
        if (!Path.IsPathFullyQualified(BpfPinDir)) throw new ArgumentException($"BPF pin directory '{BpfPinDir}' must be an absolute path");
        if (NodeReleaseGrace < TimeSpan.Zero) throw new ArgumentException($"node release grace {NodeReleaseGrace.TotalSeconds} s is negative");
        if (FlowBuffer is < 0 or > 1 << 20) throw new ArgumentException($"flow buffer {FlowBuffer} is out of range (0-1048576)");
        if (FlowAddress.Length > 0 && !System.Net.IPEndPoint.TryParse(FlowAddress, out _)) throw new ArgumentException($"flow address '{FlowAddress}' is not IP:PORT");
        if (string.IsNullOrWhiteSpace(NodeName) || NodeName.Contains('/', StringComparison.Ordinal))
            throw new ArgumentException($"node name '{NodeName}' is invalid");
    }

    private static int Int(string flag, string v) =>
        int.TryParse(v, NumberStyles.Integer, CultureInfo.InvariantCulture, out var n) ? n : throw new ArgumentException($"{flag} wants an integer, got '{v}'");

    public const string Help = """
        weft-agent: programs one node's kernel for the Weft pod network.
          --nodename NAME             node name (default: host name)
          --datastore URI             sqlite:///path or etcd://host:port (default sqlite:///var/lib/weft/weft.db)
          --backend vxlan|host-gw     how pod traffic crosses nodes (default vxlan)
          --underlay-interface IF     the node's link to other nodes (default: the default route's interface)
          --vni N --port N            VXLAN id and UDP port (default 1 and 8472, as Flannel)
          --net-conf FILE             Flannel's net-conf.json (Network, SubnetLen, Backend.Type/VNI/Port)
          --config FILE               the same settings as JSON
          --label k=v                 node labels (pools' nodeSelector)
          --socket PATH               local API (default /var/run/weft/agent.sock)
          --metrics-address IP:PORT   Prometheus metrics (default 0.0.0.0:9962)
          --policy on|off             enforce network policy with nftables, fail closed for new pods (default on)
          --flows on|off              capture flows (policy verdicts, connection ends) for `weftctl observe` (default on)
          --flow-buffer N             flows kept per node (default 4095, as Hubble)
          --flow-address IP:PORT      flow API for remote readers, gRPC (default 0.0.0.0:4244; "" for none)
          --dataplane nftables|bpf    the policy dataplane: nftables tables, or tc eBPF programs on pod interfaces
                                      (default: the datastore's Installation linuxDataplane, else nftables;
                                      a changed Installation switches a running agent)
          --masquerade auto|bpf|nftables
                                      how natOutgoing pools masquerade: tc BPF programs on the uplink (no
                                      conntrack), or nftables; auto picks bpf when the kernel allows (default auto)
          --bpf-pin-dir DIR           bpffs directory for the BPF masquerade's state (default /sys/fs/bpf/weft)
          --node-release-grace SECONDS
                                      kubernetes datastore: release a node's addresses and blocks once its
                                      Kubernetes Node has been deleted this long (default 300)
          --cni-conf-dir DIR --cni-bin-dir DIR
                                      kubernetes datastore, in the DaemonSet: the host's CNI directories as
                                      mounted; the plugin's kubeconfig follows token rotation, and the conflist
                                      and binaries are removed when the DaemonSet is deleted
        """;
}

public sealed class HelpRequestedException : Exception;

/// <summary>Flannel's net-conf.json, accepted as written.</summary>
public sealed class FlannelNetConf
{
    public required string Network { get; init; }
    public int SubnetLen { get; init; }
    public required string BackendType { get; init; }
    public int? Vni { get; init; }
    public int? Port { get; init; }

    public static FlannelNetConf Load(string path)
    {
        byte[] bytes;
        try { bytes = File.ReadAllBytes(path); }
        catch (IOException e) { throw new ArgumentException($"{path}: {e.Message}"); }
        return Parse(bytes, path);
    }

    public static FlannelNetConf Parse(byte[] bytes, string path)
    {
        JsonDocument doc;
        try { doc = JsonDocument.Parse(bytes); }
        catch (JsonException e) { throw new ArgumentException($"{path}: not valid JSON: {e.Message}"); }
        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object) throw new ArgumentException($"{path}: must be a JSON object");
            foreach (var p in root.EnumerateObject())
                if (p.Name is not ("Network" or "SubnetLen" or "SubnetMin" or "SubnetMax" or "Backend" or "EnableIPv4" or "EnableIPv6" or "IPv6Network" or "IPv6SubnetLen" or "EnableNFTables"))
                    throw new ArgumentException($"{path}: unknown key '{p.Name}'");
            if (!root.TryGetProperty("Network", out var net) || net.ValueKind != JsonValueKind.String)
                throw new ArgumentException($"{path}: \"Network\" (a CIDR string) is required");
            if (!Weft.Model.Cidr.TryParse(net.GetString(), out var cidr, out var err) || !cidr.IsIPv4)
                throw new ArgumentException($"{path}: \"Network\": {err ?? "must be an IPv4 CIDR"}");
            var subnetLen = 24;
            if (root.TryGetProperty("SubnetLen", out var sl))
            {
                if (sl.ValueKind != JsonValueKind.Number || !sl.TryGetInt32(out subnetLen) || subnetLen < cidr.PrefixLength || subnetLen > 30)
                    throw new ArgumentException($"{path}: \"SubnetLen\" must be an integer between {cidr.PrefixLength} and 30");
            }
            var type = "vxlan";
            int? vni = null, port = null;
            if (root.TryGetProperty("Backend", out var be))
            {
                if (be.ValueKind != JsonValueKind.Object) throw new ArgumentException($"{path}: \"Backend\" must be an object");
                foreach (var p in be.EnumerateObject())
                {
                    switch (p.Name)
                    {
                        case "Type":
                            type = p.Value.ValueKind == JsonValueKind.String ? p.Value.GetString()! : throw new ArgumentException($"{path}: \"Backend.Type\" must be a string");
                            break;
                        case "VNI":
                            vni = p.Value.ValueKind == JsonValueKind.Number && p.Value.TryGetInt32(out var v) ? v : throw new ArgumentException($"{path}: \"Backend.VNI\" must be an integer");
                            break;
                        case "Port":
                            port = p.Value.ValueKind == JsonValueKind.Number && p.Value.TryGetInt32(out var pt) ? pt : throw new ArgumentException($"{path}: \"Backend.Port\" must be an integer");
                            break;
                        case "DirectRouting" or "GBP" or "MTU" or "MacPrefix":
                            break;
                        default:
                            throw new ArgumentException($"{path}: unknown key 'Backend.{p.Name}'");
                    }
                }
            }
            if (!AgentOptions.Backends.Contains(type))
                throw new ArgumentException($"{path}: \"Backend.Type\" '{type}' is not supported; use vxlan or host-gw");
            return new FlannelNetConf { Network = cidr.ToString(), SubnetLen = subnetLen, BackendType = type, Vni = vni, Port = port };
        }
    }
}
