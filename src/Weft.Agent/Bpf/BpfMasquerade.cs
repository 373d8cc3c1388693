using System.Buffers.Binary;
using System.Net;
using System.Runtime.InteropServices;
using Weft.Agent.Calculators;
using Weft.Agent.Drivers;
using Weft.Bpf;
using Weft.Model;

namespace Weft.Agent.Bpf;

/// <summary>
/// natOutgoing with tc BPF programs on the node's uplink instead of nftables masquerade (src/Weft.Agent/Bpf/
/// masquerade.bpf.c): the pools go into two LPM tries, the uplink's index and address into the programs' constants, and they are
/// attached while any pool masquerades. Translation state is pinned under <c>pinDir</c>, and attaching replaces the
/// previous agent's programs in one step, so a restart neither drops nor re-maps a running connection.
/// </summary>
public sealed class BpfMasquerade : INatDriver, IDisposable
{
    public string Mode => "bpf";

    // Weft's slot in the uplink's clsact filters ("WF"), kept across versions so a new agent replaces the old one.
    public const uint TcHandle = Ownership.TcHandle, TcPriority = Ownership.TcPriority;
    private const string Egress = "weft_masq_egress", Ingress = "weft_masq_ingress";
    private static readonly string[] PinnedMaps = ["snat_v4", "rnat_v4", "frags_v4"];
    // Must match NAT_PORT_MIN/MAX in masquerade.bpf.c.
    public const string NatPorts = "61000-65535";

    private readonly BpfObject _obj;
    private readonly int _ifIndex;
    private string? _applied;
    private bool _attached;

    private BpfMasquerade(BpfObject obj, int ifIndex)
    {
        _obj = obj;
        _ifIndex = ifIndex;
    }

    /// <summary>Loads the programs (reusing pinned state) and registers the uplink; attaches nothing yet.</summary>
    public static BpfMasquerade Load(int uplinkIndex, IPAddress uplinkAddress, string pinDir, ILogger log)
    {
        Weft.Agent.Bpf.BpfPins.Ensure(pinDir);
        var image = Weft.Agent.Bpf.BpfPins.Embedded("masquerade.bpf.o");
        var pins = PinnedMaps.ToDictionary(m => m, m => Path.Combine(pinDir, m));
        // const volatile struct { u32 addr; u32 ifindex; } uplink, at the start of .rodata
        var uplink = new byte[8];
        AddressBytes(uplinkAddress).CopyTo(uplink, 0);
        BinaryPrimitives.WriteInt32LittleEndian(uplink.AsSpan(4), uplinkIndex);
        BpfObject obj;
        try { obj = BpfObject.Load(image, pins, uplink); }
        catch (BpfException e) when (pins.Values.Any(File.Exists))
        {
            // Only a pin of another shape (an older agent's map layout) may cost the running connections their state:
            // when the object does not load without pins either, the pins are not the problem and stay.
            BpfObject.Load(image, rodata: uplink).Dispose();
            log.LogWarning("pinned masquerade state in {Dir} has another layout ({Error}); starting it afresh", pinDir, e.Message);
            foreach (var p in pins.Values) File.Delete(p);
            obj = BpfObject.Load(image, pins, uplink);
        }
        ReserveNatPorts(log);
        return new BpfMasquerade(obj, uplinkIndex);
    }

    /// <summary>Points the pool maps at this pool set; attaches while a pool masquerades, detaches when none does.</summary>
    public bool Apply(NatPools pools)
    {
        var (masq, cluster, key) = (pools.Masquerading, pools.Cluster, pools.Key);
        if (key == _applied && _attached == masq.Count > 0 && (!_attached || IsAttached())) return false;
        // The cluster first: a new pool's pod-to-pod traffic must never look like traffic leaving the cluster.
        Sync(_obj.Map("cluster"), cluster);
        Sync(_obj.Map("masq_sources"), masq);
        if (masq.Count > 0)
        {
            // Replies first: a flow translated on the way out always finds its way back.
            Tc.Attach(_ifIndex, ingress: true, _obj.ProgramFd(Ingress), TcHandle, TcPriority);
            Tc.Attach(_ifIndex, ingress: false, _obj.ProgramFd(Egress), TcHandle, TcPriority);
            _attached = true;
        }
        else if (_attached || _applied is null)
        {
            Detach(_ifIndex);
            _attached = false;
        }
        _applied = key;
        return true;
    }

    // Someone may have deleted the filters (tc filter del, a qdisc reset): the periodic resync puts them back.
    private bool IsAttached() =>
        Tc.Query(_ifIndex, ingress: false, TcHandle, TcPriority) is not null && Tc.Query(_ifIndex, ingress: true, TcHandle, TcPriority) is not null;

    /// <summary>Removes Weft's masquerade programs from an interface and, with a pin directory, their state.</summary>
    public static void Remove(int ifIndex, string? pinDir)
    {
        try
        {
            Detach(ifIndex);
            if (pinDir is not null)
                foreach (var pin in PinnedMaps.Select(m => Path.Combine(pinDir, m)).Where(File.Exists)) File.Delete(pin);
        }
        catch (DllNotFoundException) { } // no libbpf: nothing of ours can be attached either
    }

    private static void Detach(int ifIndex)
    {
        Tc.Detach(ifIndex, ingress: false, TcHandle, TcPriority);
        Tc.Detach(ifIndex, ingress: true, TcHandle, TcPriority);
    }

    private static void Sync(BpfMap map, IReadOnlyList<Cidr> want)
    {
        var wanted = want.Select(c => new LpmKey((uint)c.PrefixLength, BinaryPrimitives.ReadUInt32LittleEndian(AddressBytes(c.NetworkAddress)))).ToHashSet();
        foreach (var k in map.Keys<LpmKey>().Where(k => !wanted.Contains(k))) map.Delete(k);
        foreach (var k in wanted) map.Update(k, (byte)1);
    }

    // Network byte order, as the programs compare addresses.
    private static byte[] AddressBytes(IPAddress a) =>
        a.AddressFamily == System.Net.Sockets.AddressFamily.InterNetwork ? a.GetAddressBytes() : throw new ArgumentException($"{a} is not an IPv4 address");

    /// <summary>
    /// The node's own sockets must not pick a port the masquerade hands out, or a reply to the node could be taken
    /// for a pod's: the range goes into the node's ip_local_reserved_ports (kept with whatever else is reserved).
    /// </summary>
    private static void ReserveNatPorts(ILogger log)
    {
        const string Sysctl = "net/ipv4/ip_local_reserved_ports";
        var current = Weft.Netlink.Sysctl.Read(Sysctl)?.Trim() ?? "";
        if (current.Split(',').Contains(NatPorts)) return;
        try { Weft.Netlink.Sysctl.Write(Sysctl, current.Length == 0 ? NatPorts : current + "," + NatPorts); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { log.LogWarning("could not reserve ports {Ports} for the masquerade: {Error}", NatPorts, e.Message); }
    }

    public void Dispose() => _obj.Dispose();

    // Layouts shared with masquerade.bpf.c.
    [StructLayout(LayoutKind.Sequential)]
    private readonly record struct LpmKey(uint PrefixLength, uint Address);
}
