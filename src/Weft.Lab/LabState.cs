using System.Text.Json;
using System.Text.Json.Serialization;

namespace Weft.Lab;

public sealed class LabNode
{
    public required string Name { get; init; }
    public required string Netns { get; init; }
    public required string UnderlayIp { get; init; }
    public int AgentPid { get; set; }
    public required string Socket { get; init; }
}

/// <summary>One member of the lab's etcd cluster, running in the control-plane namespace.</summary>
public sealed class LabEtcdMember
{
    public required string Name { get; init; }
    public required string Ip { get; init; }
    public int Pid { get; set; }
    public required string DataDir { get; init; }
}

public sealed class LabPort
{
    public string? Name { get; init; }
    public int ContainerPort { get; init; }
    public string Protocol { get; init; } = "TCP";
}

public sealed class LabPod
{
    public required string Namespace { get; init; }
    public required string Name { get; init; }
    public required string Node { get; init; }
    public required string Netns { get; init; }
    public string? ContainerId { get; init; }
    public string? Ip { get; set; }
    public string? Ip6 { get; set; }
    public Dictionary<string, string> Labels { get; init; } = [];
    public Dictionary<string, string> Annotations { get; init; } = [];
    public List<LabPort> Ports { get; init; } = [];
    public int ServerPid { get; set; }
    [JsonIgnore] public string Key => $"{Namespace}/{Name}";
    /// <summary>Stopwatch timestamp of the moment CNI ADD returned (benchmarks: ADD → first packet).</summary>
    [JsonIgnore] public long AddReturnedAt { get; set; }
}

public sealed class LabNamespace
{
    public required string Name { get; init; }
    public Dictionary<string, string> Labels { get; init; } = [];
}

/// <summary>Everything a lab created, written as it goes, so `lab down` can remove it all even after a crash.</summary>
public sealed class LabState
{
    public required string Name { get; init; }
    public required string Dir { get; init; }
    /// <summary>The URI agents and the plugin use, from inside the lab's namespaces.</summary>
    public required string Datastore { get; init; }
    /// <summary>The etcd members' or the API server's namespace (`&lt;lab&gt;-cp`), or null with sqlite.</summary>
    public string? ControlPlane { get; init; }
    public List<LabEtcdMember> Etcd { get; init; } = [];
    /// <summary>The lab's API server process (`weftctl lab apiserver` in the control-plane namespace) with the kubernetes datastore, else 0.</summary>
    public int ApiServerPid { get; set; }

    /// <summary>The URI weftctl uses when it differs from the agents' (kubernetes: the admin's kubeconfig; agents and the plugin have the weft-agent role's).</summary>
    public string? AdminDatastore { get; init; }

    /// <summary>The URI for weftctl in the root namespace: etcd or the API server is reached through the control-plane namespace.</summary>
    [JsonIgnore]
    public string CtlDatastore => ControlPlane is null ? Datastore : $"{AdminDatastore ?? Datastore}?netns=/var/run/netns/{ControlPlane}";
    /// <summary>Each node's agent through its socket (what `lab sync` and `--lab ... --wait` ask).</summary>
    public List<Weft.Client.AgentEndpoint> AgentEndpoints() => Nodes.Select(n => Weft.Client.AgentEndpoint.ForSocket(n.Name, n.Socket)).ToList();

    public string Backend { get; init; } = "vxlan";
    /// <summary>The lab's copy of a Flannel net-conf.json the agents run from, if `lab up --net-conf` gave one.</summary>
    public string? NetConf { get; set; }
    public string Mode { get; init; } = "routed";
    /// <summary>Whether the lab's agents enforce network policy ("on", the default) or not ("off").</summary>
    public string Policy { get; init; } = "on";
    /// <summary>on: agents capture flows for `weftctl observe`.</summary>
    public string Flows { get; init; } = "on";
    /// <summary>How agents masquerade natOutgoing traffic: auto, bpf or nftables.</summary>
    public string Masquerade { get; init; } = "auto";
    /// <summary>Kubernetes datastore: seconds a deleted Node waits before the agents release its addresses (--node-release-grace).</summary>
    public int NodeReleaseGrace { get; init; } = 60;
    /// <summary>--dataplane given to every agent; null: they follow the Installation.</summary>
    public string? Dataplane { get; init; }
    /// <summary>The lab's own bpffs mount: agents pin their BPF state under it, and `lab down` unmounts it.</summary>
    [JsonIgnore]
    public string BpfDir => System.IO.Path.Combine(Dir, "bpf");
    /// <summary>One node's pins (its agent's --bpf-pin-dir, its plugin's "bpfPinDir").</summary>
    public string BpfPinDir(string node) => System.IO.Path.Combine(BpfDir, node);
    public int PodMtu { get; set; } = 1450;
    public string Underlay { get; init; } = "";
    public string Gateway { get; init; } = "";
    public List<string> Namespaces { get; init; } = [];
    public List<LabNode> Nodes { get; init; } = [];
    public List<LabPod> Pods { get; init; } = [];
    public List<LabNamespace> K8sNamespaces { get; init; } = [];

    public const string Root = "/var/lib/weft/labs";

    public static string DirFor(string name) => Path.Combine(Root, name);
    public static string FileFor(string name) => Path.Combine(DirFor(name), "lab.json");

    public void Save()
    {
        Directory.CreateDirectory(Dir);
        var tmp = Path.Combine(Dir, "lab.json.tmp");
        File.WriteAllText(tmp, JsonSerializer.Serialize(this, LabJson.Default.LabState));
        File.Move(tmp, Path.Combine(Dir, "lab.json"), overwrite: true);
    }

    public static LabState? Load(string name)
    {
        var file = FileFor(name);
        if (!File.Exists(file)) return null;
        return JsonSerializer.Deserialize(File.ReadAllText(file), LabJson.Default.LabState);
    }

    public static LabState LoadOrThrow(string name) =>
        Load(name) ?? throw new ArgumentException($"no lab named '{name}' (looked for {FileFor(name)}); start one with `weftctl lab up --name {name}`");

    public LabPod FindPod(string key) =>
        Pods.FirstOrDefault(p => p.Key == key) ?? Pods.FirstOrDefault(p => p.Name == key && Pods.Count(q => q.Name == key) == 1)
        ?? throw new ArgumentException($"no pod '{key}' in lab {Name}; pods: {string.Join(", ", Pods.Select(p => p.Key))}");
}

[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase, WriteIndented = true)]
[JsonSerializable(typeof(LabState))]
internal sealed partial class LabJson : JsonSerializerContext;
