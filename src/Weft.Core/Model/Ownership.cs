namespace Weft.Model;

/// <summary>
/// Every mark by which Weft knows its own kernel state, in one place: what a restarted agent reads back and adopts,
/// what `lab down` and uninstall remove, and what nothing else on a node may use.
/// </summary>
public static class Ownership
{
    /// <summary>Route protocol of the plugin's per-pod host routes.</summary>
    public const byte PluginRouteProtocol = 87;
    /// <summary>Route protocol of the agent's routes (peers' blocks, own blackholes).</summary>
    public const byte AgentRouteProtocol = 88;
    /// <summary>Host-side pod interfaces: this prefix + 11 hex digits (as Calico's "cali").</summary>
    public const string PodInterfacePrefix = "weft";

    /// <summary>
    /// A host-side pod interface by its name: the prefix and exactly 11 lowercase hex digits, so the bridge (`weft0`),
    /// the VXLAN device and anything else merely starting with the prefix is not one.
    /// </summary>
    public static bool IsPodInterface(string name, string prefix = PodInterfacePrefix) =>
        name.Length == prefix.Length + 11 && name.StartsWith(prefix, StringComparison.Ordinal) &&
        name.AsSpan(prefix.Length).IndexOfAnyExcept(LowerHex) < 0;

    private static readonly System.Buffers.SearchValues<char> LowerHex = System.Buffers.SearchValues.Create("0123456789abcdef");
    /// <summary>The bridge of `bridge` mode, unless the conflist names another.</summary>
    public const string DefaultBridge = "weft0";
    /// <summary>The node's VXLAN device.</summary>
    public const string VxlanDevice = "weft-vxlan";
    /// <summary>nftables tables (family inet and ip): policy, and NAT (masquerade, tunnel notrack).</summary>
    public const string PolicyTable = "weft-policy", NatTable = "weft-nat";
    /// <summary>tc filter handle ("WF") and priority of Weft's BPF programs.</summary>
    public const uint TcHandle = 0x5746, TcPriority = 1;
    /// <summary>Where pinned BPF state lives unless --bpf-pin-dir says otherwise.</summary>
    public const string BpfPinDir = "/sys/fs/bpf/weft";
    /// <summary>
    /// The BPF policy programs, pinned in the pin directory while the BPF policy dataplane enforces: the CNI plugin
    /// attaches them to a new pod's interface before the pod can send (fail closed until the agent programs it).
    /// </summary>
    public const string BpfFromPodPin = "policy_prog_from_pod", BpfToPodPin = "policy_prog_to_pod";
}
