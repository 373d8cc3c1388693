using System.Text.Json;
using System.Text.Json.Serialization;
using Weft.Agent.Drivers;
using Weft.Bpf;
using Weft.Dataplane.Bpf;
using Weft.Dataplane.Nftables;
using Weft.Model;
using Weft.Netlink;
using Weft.Policy;
using Weft.Policy.Ir;

namespace Weft.Agent.Bpf;

/// <summary>
/// The eBPF policy dataplane (policy.bpf.c beside this file): the compiler's state written into pinned maps and the two
/// programs attached to every local pod interface. The programs are pinned too, and the CNI plugin attaches them to a
/// new pod's interface before the pod can send; with no endpoint entry they drop everything, so a node needs no
/// netfilter hook to fail closed. Routing drops are reported by the programs too (a third one on the VXLAN device for
/// packets from other nodes; with host-gw a prerouting chain reports those).
/// Writes are ordered so a packet always meets a complete old or new policy: programs' entries first (a
/// changed policy is a new program number), then the ipcache, then endpoints switch programs in one update each,
/// and only then what nobody refers to any more goes. Maps and handed-out numbers survive a restart; the first apply
/// of a new agent adopts what it finds (same numbers, same entries: nothing changes for a packet).
/// </summary>
public sealed class BpfPolicyDataplane : IPolicyDataplane
{
    public const string FromPod = "weft_from_pod", ToPod = "weft_to_pod", FromNode = "weft_from_node";
    private static readonly string[] PinnedMaps = ["ipcache", "endpoints", "policy", "sports", "ct"];

    private readonly BpfObject _obj;
    private readonly string _pinDir;
    private readonly string _idsPath;
    private readonly NftPolicyCompiler.Options _guardOptions;
    private readonly string? _tunnelDevice;
    private int _tunnelAttached;
    private readonly BpfPolicyCompiler _compiler;
    private readonly NftPolicyCompiler _guardCompiler;
    private readonly LibNftTransport _nft = new();
    private NftPolicyDriver? _guard;
    private Dictionary<string, int> _links = new(StringComparer.Ordinal);
    private readonly List<((uint Program, uint Identity) Key, IdentityEntries Entries)> _garbage = [];
    private bool _idsDirty;
    private IReadOnlyDictionary<string, string> _guardMeanings = new Dictionary<string, string>();
    private Applied? _applied;
    private readonly ILogger _log;
    private BpfRingBuffer? _events;
    private Thread? _reader;
    private volatile bool _disposed;

    /// <summary>What the maps hold, as far as this agent wrote or adopted it.</summary>
    private sealed class Applied
    {
        public Dictionary<Cidr, uint> Ipcache { get; } = [];
        public Dictionary<int, EndpointValue> Endpoints { get; } = [];
        public Dictionary<(uint Program, uint Identity), IdentityEntries> Entries { get; } = [];
        public HashSet<int> Attached { get; } = [];
        /// <summary>Keys found in the kernel at adoption that nothing desired has claimed yet.</summary>
        public HashSet<PolicyKey> StrayPolicy { get; } = [];
        public HashSet<SportKey> StraySports { get; } = [];
    }

    private BpfPolicyDataplane(BpfObject obj, string pinDir, string idsPath, BpfPolicyIds? ids, NftPolicyCompiler.Options guard, string? tunnelDevice, ILogger log)
    {
        _tunnelDevice = tunnelDevice;
        _obj = obj;
        _pinDir = pinDir;
        _idsPath = idsPath;
        _guardOptions = guard;
        _compiler = new BpfPolicyCompiler(ids);
        _guardCompiler = new NftPolicyCompiler(guard);
        _log = log;
    }

    public string Name => "bpf";

    /// <summary>
    /// Loads the programs (reusing pinned maps). Throws <see cref="BpfException"/> with the verifier's reason when the
    /// kernel refuses them; nothing is attached or changed then. <paramref name="objectPath"/> replaces the built-in
    /// object (tests load a broken one to see the refusal). The numbers handed out are kept in <paramref name="idsPath"/>
    /// (bpffs holds only pins; a run-time directory is right: the pins do not outlive a reboot either).
    /// <paramref name="tunnelDevice"/>: where packets from other nodes' pods arrive (the VXLAN device), for the report
    /// of those routing drops; without one (host-gw) a netfilter chain reports them.
    /// </summary>
    public static BpfPolicyDataplane Load(string pinDir, string idsPath, NftPolicyCompiler.Options guard, ILogger log, string? objectPath = null, string? tunnelDevice = null)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(idsPath))!);
        BpfPins.Ensure(pinDir);
        var image = objectPath is null ? BpfPins.Embedded("policy.bpf.o") : File.ReadAllBytes(objectPath);
        var pins = PinnedMaps.ToDictionary(m => m, m => Path.Combine(pinDir, "policy_" + m));
        BpfObject obj;
        try { obj = BpfObject.Load(image, pins); }
        catch (BpfException e) when (pins.Values.Any(File.Exists))
        {
            BpfObject.Load(image).Dispose(); // the object itself loads: the pins (an older layout) are what is refused
            log.LogWarning("pinned policy maps in {Dir} have another layout ({Error}); starting them afresh", pinDir, e.Message);
            foreach (var p in pins.Values.Append(idsPath)) File.Delete(p);
            obj = BpfObject.Load(image, pins);
        }
        BpfPolicyIds? ids = null;
        if (File.Exists(idsPath) && pins.Values.All(File.Exists))
        {
            try { ids = JsonSerializer.Deserialize(File.ReadAllText(idsPath), BpfIdsJson.Default.BpfPolicyIds); }
            catch (JsonException e) { log.LogWarning("{File} unreadable ({Error}); policy numbers start afresh", idsPath, e.Message); }
        }
        ids ??= new BpfPolicyIds();
        AboveKernel(obj, ids);
        return new BpfPolicyDataplane(obj, pinDir, idsPath, ids, guard, tunnelDevice, log);
    }

    /// <summary>
    /// Numbers are handed out above every number the pinned maps hold: the file may be older than the maps (an agent
    /// killed between writing them and saving it), and a number in use must never come back meaning something else.
    /// </summary>
    private static void AboveKernel(BpfObject obj, BpfPolicyIds ids)
    {
        uint program = 0, identity = 0, token = 0, table = 0;
        var policy = obj.Map("policy");
        foreach (var k in policy.Keys<PolicyKey>())
        {
            program = Math.Max(program, k.ProgramId);
            identity = Math.Max(identity, k.IdentityId);
            if (policy.TryLookup(k, out Verdict v)) (token, table) = (Math.Max(token, Math.Max(v.Token, v.LogToken)), Math.Max(table, v.SportTable));
        }
        var endpoints = obj.Map("endpoints");
        foreach (var i in endpoints.Keys<int>())
            if (endpoints.TryLookup(i, out EndpointValue e)) program = Math.Max(program, Math.Max(e.EgressProgram, e.IngressProgram));
        var ipcache = obj.Map("ipcache");
        foreach (var k in ipcache.Keys<IpcacheKey>())
            if (ipcache.TryLookup(k, out uint id)) identity = Math.Max(identity, id);
        foreach (var k in obj.Map("sports").Keys<SportKey>()) table = Math.Max(table, System.Buffers.Binary.BinaryPrimitives.ReverseEndianness(k.Table));
        ids.NextProgram = Math.Max(ids.NextProgram, program + 1);
        ids.NextIdentity = Math.Max(ids.NextIdentity, identity + 1);
        ids.NextToken = Math.Max(ids.NextToken, token + 1);
        ids.NextTable = Math.Max(ids.NextTable, table + 1);
    }

    /// <summary>Starts reading verdicts from the programs' ring buffer on a thread of its own.</summary>
    public void StartEvents(Action<FlowEvent> onEvent)
    {
        _events = new BpfRingBuffer(_obj.Map("events"), data =>
        {
            if (data.Length >= System.Runtime.InteropServices.Marshal.SizeOf<FlowEvent>())
                onEvent(System.Runtime.InteropServices.MemoryMarshal.Read<FlowEvent>(data));
        });
        _reader = new Thread(() =>
        {
            while (!_disposed)
            {
                try { _events.Poll(200); }
                catch (BpfException e) when (!_disposed) { _log.LogWarning("BPF flow events: {Error}", e.Message); Thread.Sleep(1000); }
            }
        }) { IsBackground = true, Name = "bpf-flow-events" };
        _reader.Start();
    }

    public PolicyApplyResult Apply(PolicySet policies, PolicyWorld world, IReadOnlyList<EndpointInfo> local)
    {
        CollectGarbage();
        var state = _compiler.Compile(policies, world, local);
        var full = _applied is null;
        var fromPod = _obj.ProgramFd(FromPod);
        var toPod = _obj.ProgramFd(ToPod);
        // Pinned before the interfaces are listed: a pod's interface made after that list finds the pins (its plugin
        // attaches), one made before it is in the list (attached below).
        if (full) PolicyProgramPins.Pin(_pinDir, fromPod, toPod);
        var reportsOnTunnel = _tunnelDevice is not null && _guardOptions.FlowLogGroup > 0;
        var ifindex = Links(reportsOnTunnel ? state.Endpoints.Keys.Append(_tunnelDevice!) : state.Endpoints.Keys, full, out var unknown);
        var applied = _applied ?? Adopt();
        _applied = null; // until this apply completes, the kernel state is not known exactly
        var changes = 0;

        var ipcache = _obj.Map("ipcache");
        var policy = _obj.Map("policy");
        var sports = _obj.Map("sports");
        var endpoints = _obj.Map("endpoints");

        // 1. Every program's entries for every identity (new programs whole, kept ones for new identities).
        var desired = new Dictionary<(uint, uint), IdentityEntries>();
        foreach (var p in state.Programs.Values)
            foreach (var (identity, entries) in p.Identities) desired[(p.Id, identity)] = entries;
        foreach (var (key, entries) in desired)
        {
            if (applied.Entries.TryGetValue(key, out var old) && ReferenceEquals(old, entries)) continue;
            foreach (var t in entries.SportTables)
                foreach (var e in t.Entries)
                {
                    var k = SportKey.Of(t.Id, e);
                    sports.Update(k, Verdict.Of(e.Verdict));
                    applied.StraySports.Remove(k);
                }
            foreach (var e in entries.Entries)
            {
                var k = PolicyKey.Of(key.Item1, key.Item2, e);
                policy.Update(k, Verdict.Of(e.Verdict));
                applied.StrayPolicy.Remove(k);
                changes++;
            }
            if (old is not null) RemoveEntries(policy, sports, key, old, except: entries);
            applied.Entries[key] = entries;
        }
        // 2. The ipcache: addresses to (possibly new) identities.
        foreach (var (prefix, identity) in state.Ipcache)
            if (!applied.Ipcache.TryGetValue(prefix, out var had) || had != identity)
            {
                ipcache.Update(IpcacheKey.Of(prefix), identity);
                applied.Ipcache[prefix] = identity;
                changes++;
            }
        // 3. Endpoints switch to their programs, one map update each; interfaces without the programs (pods from before
        // this dataplane) get them after that. Pod interfaces of no known endpoint get them too: they drop everything.
        foreach (var index in unknown)
            if (applied.Attached.Add(index))
                PolicyProgramPins.Attach(index, fromPod, toPod);
        var liveIndexes = new HashSet<int>();
        foreach (var (name, (egress, ingress)) in state.Endpoints)
        {
            if (!ifindex.TryGetValue(name, out var index) || name == _tunnelDevice) continue;
            liveIndexes.Add(index);
            var value = new EndpointValue { EgressProgram = egress, IngressProgram = ingress };
            if (!applied.Endpoints.TryGetValue(index, out var had) || had.EgressProgram != egress || had.IngressProgram != ingress)
            {
                endpoints.Update(index, value);
                applied.Endpoints[index] = value;
                changes++;
            }
            if (applied.Attached.Add(index))
                PolicyProgramPins.Attach(index, fromPod, toPod);
        }
        // 4. Routing drops of packets from other nodes are reported by the program on the tunnel device, or by a
        // netfilter chain without one. Either replaces the nftables dataplane's table (the programs enforce by now).
        if (reportsOnTunnel && ifindex.TryGetValue(_tunnelDevice!, out var tunnel) && (full || tunnel != _tunnelAttached))
        {
            Tc.Attach(tunnel, ingress: true, _obj.ProgramFd(FromNode), Ownership.TcHandle, Ownership.TcPriority);
            _tunnelAttached = tunnel;
        }
        if (_guard is null)
        {
            var driver = new NftPolicyDriver(_nft);
            if (_tunnelDevice is not null) driver.Remove();
            else
            {
                var guard = _guardCompiler.CompileGuard();
                driver.Apply(guard);
                _guardMeanings = guard.LogMeanings;
            }
            _guard = driver;
        }
        // 5. What nothing refers to any more.
        foreach (var gone in applied.Endpoints.Keys.Where(i => !liveIndexes.Contains(i)).ToList())
        {
            endpoints.Delete(gone); // an interface still there keeps the programs: it drops everything from now on
            applied.Endpoints.Remove(gone);
            applied.Attached.Remove(gone); // a later endpoint at this index gets them again (a replace)
            changes++;
        }
        foreach (var gone in applied.Ipcache.Keys.Where(p => !state.Ipcache.ContainsKey(p)).ToList())
        {
            ipcache.Delete(IpcacheKey.Of(gone));
            applied.Ipcache.Remove(gone);
            changes++;
        }
        // Entries of programs no endpoint points at any more are unreachable: deleting them waits for CollectGarbage.
        var referenced = state.Endpoints.Values.SelectMany(e => new[] { e.Egress, e.Ingress }).ToHashSet();
        foreach (var (key, entries) in applied.Entries.Where(kv => !desired.ContainsKey(kv.Key) || !referenced.Contains(kv.Key.Item1)).ToList())
        {
            _garbage.Add((key, entries));
            applied.Entries.Remove(key);
            changes++;
        }
        foreach (var k in applied.StrayPolicy) policy.Delete(k);
        foreach (var k in applied.StraySports) sports.Delete(k);
        applied.StrayPolicy.Clear();
        applied.StraySports.Clear();
        _applied = applied;
        _idsDirty |= full || _compiler.IdsChanged; // saved in CollectGarbage, off the change's path (Load never hands out a number the maps hold)
        var meanings = _guardMeanings.Concat(state.Tokens.Select(t => KeyValuePair.Create(TokenKey(t.Key), t.Value)))
            .Append(KeyValuePair.Create(FlowLog.Profile, "")).ToDictionary(StringComparer.Ordinal);
        return new PolicyApplyResult(state.Programs.Count, state.Entries, state.Ipcache.Count, full, changes, meanings);
    }

    /// <summary>
    /// The connections in the programs' conntrack go to the kernel's (nftables reads that one), as established. An
    /// entry idle past its limit or closing is left out; one per direction and interface becomes one connection.
    /// </summary>
    public void ExportConnections()
    {
        var ct = _obj.Map("ct");
        var now = (ulong)System.Diagnostics.Stopwatch.GetTimestamp() * (1_000_000_000UL / (ulong)System.Diagnostics.Stopwatch.Frequency);
        var connections = new HashSet<ConnectionTuple>();
        foreach (var k in ct.Keys<CtKey>())
            if (ct.TryLookup(k, out CtEntry e) && (e.Flags & CtEntry.Closing) == 0 && now - e.LastSeen <= (ulong)CtEntry.IdleLimit(k.Protocol).Ticks * 100)
                connections.Add(k.Connection);
        try
        {
            // The kernel keeps them as long as the programs would have (ConntrackTable takes TCP and UDP only).
            var n = ConntrackTable.InsertEstablished(connections, tcpTimeout: CtEntry.IdleLimit(6), udpTimeout: CtEntry.IdleLimit(17));
            if (n > 0) _log.LogInformation("{Count} established connection(s) handed to the kernel's conntrack", n);
        }
        catch (NetlinkException e) { _log.LogWarning("handing connections to the kernel's conntrack: {Error}", e.Message); }
    }

    public void CollectGarbage()
    {
        if (_idsDirty)
        {
            SaveIds();
            _idsDirty = false;
        }
        if (_garbage.Count == 0) return;
        var policy = _obj.Map("policy");
        var sports = _obj.Map("sports");
        foreach (var (key, entries) in _garbage) RemoveEntries(policy, sports, key, entries, except: null);
        _garbage.Clear();
    }

    /// <summary>
    /// Interface indexes of the endpoints' host interfaces. A dump of every link costs milliseconds with thousands of
    /// pods, so known names are kept; a new name (or a full apply) dumps again. A pod being deleted has no link: nothing
    /// to attach to. Interface names are per sandbox (a new pod is a new name), so a kept index does not go stale.
    /// A full apply also returns the pod interfaces no endpoint names (<paramref name="unknown"/>).
    /// </summary>
    private Dictionary<string, int> Links(IEnumerable<string> names, bool full, out List<int> unknown)
    {
        var wanted = names.ToHashSet(StringComparer.Ordinal);
        unknown = [];
        if (full || !wanted.All(_links.ContainsKey))
        {
            using var nl = RtNetlink.Open();
            var links = nl.ListLinks();
            _links = links.Where(l => wanted.Contains(l.Name)).ToDictionary(l => l.Name, l => l.Index, StringComparer.Ordinal);
            if (full) unknown = links.Where(l => IsPodInterface(l.Name) && !wanted.Contains(l.Name)).Select(l => l.Index).ToList();
        }
        else _links = _links.Where(kv => wanted.Contains(kv.Key)).ToDictionary(StringComparer.Ordinal);
        return _links;
    }

    private bool IsPodInterface(string name) =>
        Ownership.IsPodInterface(name, _guardOptions.PodInterfacePrefix) && !_guardOptions.Excluded.Contains(name);

    /// <summary>How verdict tokens appear among the flow log meanings.</summary>
    public static string TokenKey(uint token) => "bpf:" + token.ToString(System.Globalization.CultureInfo.InvariantCulture);

    private static void RemoveEntries(BpfMap policy, BpfMap sports, (uint Program, uint Identity) key, IdentityEntries entries, IdentityEntries? except)
    {
        var keep = except?.Entries.Select(e => PolicyKey.Of(key.Program, key.Identity, e)).ToHashSet() ?? [];
        foreach (var e in entries.Entries)
        {
            var k = PolicyKey.Of(key.Program, key.Identity, e);
            if (!keep.Contains(k)) policy.Delete(k);
        }
        var keepTables = except?.SportTables.Select(t => t.Id).ToHashSet() ?? [];
        foreach (var t in entries.SportTables.Where(t => !keepTables.Contains(t.Id)))
            foreach (var e in t.Entries) sports.Delete(SportKey.Of(t.Id, e));
    }

    /// <summary>
    /// A first apply: what the maps hold (left by an earlier agent) becomes "applied" as far as it can be named,
    /// so the new state is written over it (same keys, same values when the numbers were kept) and the rest removed
    /// at the end, never before the replacement is in place.
    /// </summary>
    private Applied Adopt()
    {
        var a = new Applied();
        foreach (var k in _obj.Map("policy").Keys<PolicyKey>()) a.StrayPolicy.Add(k);
        foreach (var k in _obj.Map("sports").Keys<SportKey>()) a.StraySports.Add(k);
        var endpoints = _obj.Map("endpoints");
        foreach (var index in endpoints.Keys<int>())
            if (endpoints.TryLookup(index, out EndpointValue v)) a.Endpoints[index] = v; // switched or removed in steps 3 and 5
        // Ipcache entries are rewritten where they differ and removed when not desired; unknown ones can only be
        // overwritten by the same prefix, so start from a clean copy of what is there.
        var ipcache = _obj.Map("ipcache");
        foreach (var k in ipcache.Keys<IpcacheKey>())
            if (ipcache.TryLookup(k, out uint id)) a.Ipcache[Prefix(k)] = id;
        return a;
    }

    private static unsafe Cidr Prefix(IpcacheKey k)
    {
        var bytes = new byte[k.Family == 4 ? 4 : 16];
        for (var i = 0; i < bytes.Length; i++) bytes[i] = k.Addr[i];
        return new Cidr(new System.Net.IPAddress(bytes), (int)k.Prefixlen - 32);
    }

    private void SaveIds()
    {
        var path = _idsPath;
        try
        {
            File.WriteAllText(path + ".tmp", JsonSerializer.Serialize(_compiler.Ids, BpfIdsJson.Default.BpfPolicyIds));
            File.Move(path + ".tmp", path, overwrite: true);
        }
        catch (IOException e) { _log.LogWarning("could not save policy numbers to {File}: {Error}", path, e.Message); }
    }

    /// <summary>The next apply reads the maps back and rewrites everything (drift repair, after a failure).</summary>
    public void Reset()
    {
        _applied = null;
        _guard = null;
    }

    /// <summary>Enforcement off: programs off every interface, maps emptied, the flow report table gone.</summary>
    public void Remove()
    {
        Handover();
        new NftPolicyDriver(_nft).Remove();
    }

    /// <summary>
    /// Another dataplane enforces now (its table has replaced the flow report table): take the programs off and empty
    /// the maps. Unpinned first, so a plugin that attached after the sweep below sees the pins gone and detaches.
    /// </summary>
    public void Handover()
    {
        PolicyProgramPins.Unpin(_pinDir);
        using (var nl = RtNetlink.Open())
            foreach (var link in nl.ListLinks().Where(l => IsPodInterface(l.Name) || l.Name == _tunnelDevice))
                PolicyProgramPins.Detach(link.Index);
        Clear<int>("endpoints");
        Clear<IpcacheKey>("ipcache");
        Clear<PolicyKey>("policy");
        Clear<SportKey>("sports");
        Clear<CtKey>("ct");
        File.Delete(_idsPath);
        _applied = null;
        _tunnelAttached = 0;
        _garbage.Clear();
        _links.Clear();
    }

    private void Clear<TKey>(string map) where TKey : unmanaged
    {
        var m = _obj.Map(map);
        foreach (var k in m.Keys<TKey>()) m.Delete(k);
    }

    public void Dispose()
    {
        if (_idsDirty && _applied is not null) SaveIds();
        _disposed = true;
        _reader?.Join(1000);
        _events?.Dispose();
        _obj.Dispose();
        _nft.Dispose();
    }
}

/// <summary>bpffs and the BPF objects built into the agent.</summary>
internal static class BpfPins
{
    public static void Ensure(string pinDir)
    {
        if (!BpfFs.IsMounted(Path.GetDirectoryName(pinDir) ?? pinDir) && !BpfFs.IsMounted(pinDir))
            BpfFs.Mount(pinDir.StartsWith("/sys/fs/bpf/", StringComparison.Ordinal) ? "/sys/fs/bpf" : pinDir);
        Directory.CreateDirectory(pinDir);
    }

    public static byte[] Embedded(string name)
    {
        using var s = typeof(BpfPins).Assembly.GetManifestResourceStream(name) ?? throw new BpfException($"the BPF object {name} is not built into this agent");
        var image = new byte[s.Length];
        s.ReadExactly(image);
        return image;
    }
}

[JsonSerializable(typeof(BpfPolicyIds))]
internal sealed partial class BpfIdsJson : JsonSerializerContext;
