using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Weft.Model;
using Weft.Policy;
using Weft.Policy.Ir;

namespace Weft.Dataplane.Bpf;

// Design notes.
// - Selectors are resolved here, not in the kernel (Cilium's model): every address a policy can tell apart gets a
//   numeric identity. An endpoint address's identity is its namespace, labels, named ports and the policy CIDRs
//   holding it; any other address's is the longest policy CIDR holding it (0/0 at worst). Identities are
//   content-addressed, so a policy change leaves them alone unless it adds a CIDR around pods.
// - A program is what decides one direction of one local endpoint: its tiers of applicable policies and the
//   endpoint itself (its labels, ports and addresses can appear in rules). Endpoints alike share one program.
//   Programs are content-addressed too: a changed policy means a new program number, filled in before endpoints
//   switch to it, so the kernel never holds a half-updated program.
// - Each (program, identity) is decided once for every protocol, port and ICMP type by evaluating the IR with
//   PolicyEvaluator itself on one representative connection per cell of the partition the rules' own boundaries
//   make: what the dataplane does is the oracle's answer, not a second reading of the semantics. Only rules that
//   can match an identity (its CIDRs, its labels) are considered for it, and an identity no rule tells apart from
//   the world of its family gets no entries at all.

public static class BpfAction
{
    /// <summary>As policy.bpf.c's ACTION_*: NoRoute is no policy's verdict (routing drops the packet).</summary>
    public const byte Allow = 1, Deny = 2, Drop = 3, Profile = 4, Unprogrammed = 5, NoRoute = 6;
}

/// <summary>What one policy trie entry decides. <see cref="SportTable"/> nonzero: look the source port up there.</summary>
public readonly record struct BpfVerdict(byte Action, uint Token, uint SportTable = 0, bool Log = false, uint LogToken = 0)
{
    public bool Allows => Action is BpfAction.Allow or BpfAction.Profile;
}

/// <summary>
/// One entry of an identity's part of the policy trie. <see cref="PortBits"/> -1: every protocol (prefix 64);
/// 0: every port of <see cref="Protocol"/> (prefix 72); n: the first n bits of <see cref="Port"/> (prefix 80+n: a pad
/// byte, always 0, sits between protocol and port).
/// </summary>
public readonly record struct PolicyEntry(byte Protocol, int PortBits, ushort Port, BpfVerdict Verdict);

public readonly record struct SportEntry(int PortBits, ushort Port, BpfVerdict Verdict);

public sealed record SportTable(uint Id, IReadOnlyList<SportEntry> Entries);

/// <summary>Everything one program says about one identity. Immutable; the driver diffs by reference.</summary>
public sealed record IdentityEntries(IReadOnlyList<PolicyEntry> Entries, IReadOnlyList<SportTable> SportTables);

/// <summary>A peer identity: <see cref="Endpoint"/> for pod addresses, <see cref="Region"/> for the rest of the world.</summary>
public sealed record PeerIdentity(uint Id, string Key, AddressFamily Family, IPAddress Sample, EndpointInfo? Endpoint, Cidr? Region);

public sealed class BpfProgram(uint id, string key, Direction direction, TieredPolicies tiers, EndpointInfo local)
{
    public uint Id { get; } = id;
    public string Key { get; } = key;
    public Direction Direction { get; } = direction;
    public TieredPolicies Tiers { get; } = tiers;
    public EndpointInfo Local { get; } = local;
    /// <summary>Identities with entries of their own; the others use their family's world entries.</summary>
    public Dictionary<uint, IdentityEntries> Identities { get; } = [];
    /// <summary>The program's policies with no rules left (what an identity no rule of theirs can match sees).</summary>
    internal Dictionary<PolicyIr, PolicyIr> Emptied { get; } = new(ReferenceEqualityComparer.Instance);
    /// <summary>Identities already decided (with entries or without).</summary>
    internal HashSet<uint> Decided { get; } = [];
    /// <summary>The program's key without policy versions: its next version (a changed policy) has the same one.</summary>
    internal string Lineage { get; init; } = "";
    /// <summary>What every decision of this program rests on besides an identity's own candidate rules.</summary>
    internal List<string>? Basis { get; set; }
    /// <summary>Per identity: its own candidate rules (as text) and the entries decided from them, before the world fold.</summary>
    internal Dictionary<uint, (List<string> Candidates, IdentityEntries Entries)> Decisions { get; } = [];
}

/// <summary>The desired content of every policy map for one node.</summary>
public sealed class BpfPolicyState
{
    public required IReadOnlyDictionary<Cidr, uint> Ipcache { get; init; }
    /// <summary>Host interface → (egress program, ingress program); 0 = no policy applies.</summary>
    public required IReadOnlyDictionary<string, (uint Egress, uint Ingress)> Endpoints { get; init; }
    /// <summary>Programs the endpoints use, and programs they used until now (still filled for new identities).</summary>
    public required IReadOnlyDictionary<uint, BpfProgram> Programs { get; init; }
    public required IReadOnlyDictionary<uint, PeerIdentity> Identities { get; init; }
    /// <summary>Verdict tokens → the policies they stand for (comma-separated ids; "id origin" for Log tokens).</summary>
    public required IReadOnlyDictionary<uint, string> Tokens { get; init; }
    public int Entries => Programs.Values.Sum(p => p.Identities.Values.Sum(e => e.Entries.Count + e.SportTables.Sum(t => t.Entries.Count)));
}

/// <summary>Ids handed out so far, kept across agent restarts so a new agent's state matches what the kernel holds.</summary>
public sealed class BpfPolicyIds
{
    public Dictionary<string, uint> Identities { get; set; } = new(StringComparer.Ordinal);
    public Dictionary<string, uint> Programs { get; set; } = new(StringComparer.Ordinal);
    public Dictionary<string, uint> Tokens { get; set; } = new(StringComparer.Ordinal);
    public uint NextIdentity { get; set; } = 3;
    public uint NextProgram { get; set; } = 1;
    public uint NextToken { get; set; } = 1;
    public uint NextTable { get; set; } = 1;
}

public sealed class BpfPolicyCompiler(BpfPolicyIds? ids = null)
{
    public const uint WorldV4 = 1, WorldV6 = 2;
    private static readonly Cidr AllV4 = Cidr.Parse("0.0.0.0/0"), AllV6 = Cidr.Parse("::/0");

    public BpfPolicyIds Ids { get; } = ids ?? new BpfPolicyIds();
    private Dictionary<uint, BpfProgram> _programs = [];
    private long _compiles;

    /// <summary>Whether the last compile handed out or forgot a number (the numbering needs saving).</summary>
    public bool IdsChanged { get; private set; }

    // Every number handed out bumps a Next*, every number forgotten shrinks a map: equal shapes mean equal numbering.
    private (uint, uint, uint, uint, int, int, int) IdsShape =>
        (Ids.NextIdentity, Ids.NextProgram, Ids.NextToken, Ids.NextTable, Ids.Programs.Count, Ids.Identities.Count, Ids.Tokens.Count);

    public BpfPolicyState Compile(PolicySet policies, PolicyWorld world, IReadOnlyList<EndpointInfo> local)
    {
        var before = IdsShape;
        try { return CompileState(policies, world, local); }
        finally { IdsChanged = IdsShape != before; }
    }

    private BpfPolicyState CompileState(PolicySet policies, PolicyWorld world, IReadOnlyList<EndpointInfo> local)
    {
        _compiles++;
        var evaluator = new PolicyEvaluator(policies, world);
        var (identities, ipcache, byAddress) = Identities(policies, world);

        // Programs per local endpoint and direction.
        var programs = new Dictionary<uint, BpfProgram>();
        var endpoints = new Dictionary<string, (uint, uint)>(StringComparer.Ordinal);
        // Which policies apply, and so the program, depends on the namespace, its labels, the endpoint's labels and
        // named ports, all in the identity key: endpoints alike share the answer.
        var programOf = new Dictionary<(string, Direction), uint>();
        foreach (var ep in local)
        {
            if (ep.HostInterface is null) continue;
            var localKey = string.Join(";", ep.Addresses.Select(a => byAddress.TryGetValue(a, out var id) ? identities[id].Key : a.ToString()));
            uint ProgramFor(Direction d)
            {
                if (localKey.Length > 0 && programOf.TryGetValue((localKey, d), out var known)) return known;
                var program = NewProgramFor(d);
                if (localKey.Length > 0) programOf[(localKey, d)] = program;
                return program;
            }
            uint NewProgramFor(Direction d)
            {
                var tiers = PolicyCalculator.Applicable(policies, world, ep, d);
                if (tiers.IsEmpty) return 0;
                // A policy's version is its datastore revision; one without (0: read from files) is never reused.
                var versions = tiers.Tiers.SelectMany(t => t.Policies).Select(p => p.Version == 0 ? "new" + _compiles : p.Version.ToString(CultureInfo.InvariantCulture));
                var key = $"{tiers.Key}|{string.Join(",", versions)}|{localKey}";
                if (!Ids.Programs.TryGetValue(key, out var id)) Ids.Programs[key] = id = Ids.NextProgram++;
                if (!programs.ContainsKey(id))
                    programs[id] = _programs.TryGetValue(id, out var existing) ? existing : new BpfProgram(id, key, d, tiers, ep) { Lineage = $"{tiers.Key}|{localKey}" };
                return id;
            }
            endpoints[ep.HostInterface] = (ProgramFor(Direction.Egress), ProgramFor(Direction.Ingress));
        }
        var referenced = programs.Keys.ToHashSet();
        // Programs being replaced stay in this round's state, filled for new identities too: the driver switches
        // endpoints to the new programs after the ipcache changes, and until then the old ones still decide.
        foreach (var old in _programs.Values)
            programs.TryAdd(old.Id, old);

        var index = new IdentityIndex(identities.Values);
        foreach (var program in programs.Values) Fill(program, identities, index, evaluator, world);
        _programs = programs.Where(p => referenced.Contains(p.Key)).ToDictionary();
        // Ids of what no longer exists are forgotten (what comes back later gets a new number).
        Ids.Programs = Ids.Programs.Where(kv => referenced.Contains(kv.Value)).ToDictionary(StringComparer.Ordinal);
        Ids.Identities = Ids.Identities.Where(kv => identities.ContainsKey(kv.Value)).ToDictionary(StringComparer.Ordinal);

        var tokens = Ids.Tokens.ToDictionary(kv => kv.Value, kv => kv.Key);
        return new BpfPolicyState { Ipcache = ipcache, Endpoints = endpoints, Programs = programs, Identities = identities, Tokens = tokens };
    }

    /// <summary>Identities of every address policy can tell apart, and the ipcache pointing addresses at them.</summary>
    private (Dictionary<uint, PeerIdentity>, Dictionary<Cidr, uint>, Dictionary<IPAddress, uint>) Identities(PolicySet policies, PolicyWorld world)
    {
        var identities = new Dictionary<uint, PeerIdentity>();
        var ipcache = new Dictionary<Cidr, uint>();
        var byAddress = new Dictionary<IPAddress, uint>();
        var regions = Regions(policies);
        foreach (var identity in regions.Identities)
        {
            identities[identity.Id] = identity;
            ipcache[identity.Region!.Value] = identity.Id;
        }
        var byLength = regions.ByLength;
        var namespaceKeys = new Dictionary<string, string>(StringComparer.Ordinal);
        var endpointKeys = new Dictionary<string, EndpointKeys>(StringComparer.Ordinal);
        foreach (var ep in world.Endpoints)
        {
            var labels = world.LabelsOf(ep);
            if (!namespaceKeys.TryGetValue(ep.Namespace, out var nsLabels))
                namespaceKeys[ep.Namespace] = nsLabels = LabelText(world.NamespaceLabels(ep.Namespace));
            // The keys of an endpoint unchanged since the last compile are reused: building them (sorted labels, ports,
            // the CIDRs holding each address) for every endpoint was a quarter of a one-policy change's compile.
            if (!_endpointKeys.TryGetValue(ep.Key, out var memo) || !memo.Holds(ep, labels, nsLabels, regions))
                memo = new EndpointKeys(labels.ToArray(), nsLabels, ep.Ports, ep.Addresses, regions, KeysOf(ep, labels, nsLabels, byLength));
            endpointKeys[ep.Key] = memo;
            for (var i = 0; i < ep.Addresses.Count; i++)
            {
                var a = ep.Addresses[i];
                var id = IdFor(memo.Keys[i]);
                identities.TryAdd(id, new PeerIdentity(id, memo.Keys[i], a.AddressFamily, a, ep, null));
                ipcache[Cidr.Host(a)] = id;
                byAddress[a] = id;
            }
        }
        _endpointKeys = endpointKeys;
        return (identities, ipcache, byAddress);
    }

    /// <summary>One endpoint's identity key per address, as of the inputs they were built from.</summary>
    private sealed record EndpointKeys(KeyValuePair<string, string>[] Labels, string NamespaceLabels, IReadOnlyList<NamedPort> Ports,
        IReadOnlyList<IPAddress> Addresses, RegionSet Regions, string[] Keys)
    {
        public bool Holds(EndpointInfo ep, IReadOnlyDictionary<string, string> labels, string nsLabels, RegionSet regions) =>
            ReferenceEquals(Regions, regions) && NamespaceLabels == nsLabels && Labels.Length == labels.Count &&
            Labels.All(l => labels.TryGetValue(l.Key, out var v) && v == l.Value) && Ports.SequenceEqual(ep.Ports) && Addresses.SequenceEqual(ep.Addresses);
    }

    private Dictionary<string, EndpointKeys> _endpointKeys = new(StringComparer.Ordinal);

    /// <summary>
    /// An endpoint address's identity: namespace, labels, the namespace's labels, named ports, and the policy CIDRs
    /// holding the address; endpoints alike in all of these share it.
    /// </summary>
    private static string[] KeysOf(EndpointInfo ep, IReadOnlyDictionary<string, string> labels, string nsLabels, Dictionary<(AddressFamily Family, int PrefixLength), HashSet<Cidr>> byLength)
    {
        var labelText = LabelText(labels);
        var ports = ep.Ports.Count == 0 ? "" : string.Join(",", ep.Ports.Select(p => $"{p.Name}/{p.Protocol}/{p.Port}").Order(StringComparer.Ordinal));
        var keys = new string[ep.Addresses.Count];
        for (var i = 0; i < keys.Length; i++)
        {
            var a = ep.Addresses[i];
            var host = Cidr.Host(a);
            var holding = byLength.Where(kv => kv.Key.Family == a.AddressFamily && kv.Value.Contains(host.Supernet(kv.Key.PrefixLength)))
                .Select(kv => host.Supernet(kv.Key.PrefixLength).ToString()).Order(StringComparer.Ordinal);
            keys[i] = $"ep|{(a.AddressFamily == AddressFamily.InterNetwork ? 4 : 6)}|{ep.Namespace}|{labelText}|{nsLabels}|{ports}|{string.Join(",", holding)}";
        }
        return keys;
    }

    /// <summary>Labels as key=value in key order: equal label sets, equal text.</summary>
    private static string LabelText(IEnumerable<KeyValuePair<string, string>> labels) =>
        string.Join(",", labels.OrderBy(l => l.Key, StringComparer.Ordinal).Select(l => l.Key + "=" + l.Value));

    private uint IdFor(string key)
    {
        if (!Ids.Identities.TryGetValue(key, out var id)) Ids.Identities[key] = id = Ids.NextIdentity++;
        return id;
    }

    private sealed record RegionSet(HashSet<Cidr> Prefixes, List<PeerIdentity> Identities, Dictionary<(AddressFamily Family, int PrefixLength), HashSet<Cidr>> ByLength);
    private RegionSet? _regions;

    /// <summary>
    /// The world's regions: one identity per policy CIDR that some address holds as its longest match (0/0 included).
    /// They depend on the set of policy CIDRs alone, which most changes leave as it was: then the last result stands
    /// (at 10k CIDRs the sort and the free-address search are most of a compile).
    /// </summary>
    /// <summary>Each policy's CIDRs as of its version: a change to one policy is checked against its own CIDRs only.</summary>
    private readonly Dictionary<string, (long Version, HashSet<Cidr> Prefixes)> _policyPrefixes = new(StringComparer.Ordinal);

    private RegionSet Regions(PolicySet policies)
    {
        var changed = _regions is null;
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var p in policies.Policies)
        {
            seen.Add(p.Id);
            var had = _policyPrefixes.TryGetValue(p.Id, out var last);
            if (had && p.Version != 0 && last.Version == p.Version) continue; // a version is its content
            var mine = new HashSet<Cidr>();
            foreach (var r in p.Ingress.Concat(p.Egress))
            {
                mine.UnionWith(r.Source.Nets);
                mine.UnionWith(r.Source.NotNets);
                mine.UnionWith(r.Destination.Nets);
                mine.UnionWith(r.Destination.NotNets);
            }
            changed |= !had || !last.Prefixes.SetEquals(mine);
            _policyPrefixes[p.Id] = (p.Version, mine);
        }
        foreach (var gone in _policyPrefixes.Keys.Where(id => !seen.Contains(id)).ToList())
        {
            changed |= _policyPrefixes[gone].Prefixes.Count > 0;
            _policyPrefixes.Remove(gone);
        }
        if (!changed) return _regions!;
        var prefixes = new HashSet<Cidr> { AllV4, AllV6 };
        foreach (var (_, mine) in _policyPrefixes.Values) prefixes.UnionWith(mine);
        if (_regions is { } previous && previous.Prefixes.SetEquals(prefixes)) return previous;
        Ids.Identities.TryAdd("world|" + AllV4, WorldV4);
        Ids.Identities.TryAdd("world|" + AllV6, WorldV6);
        var list = new List<PeerIdentity>();
        var sorted = prefixes.Order().ToList();
        for (var i = 0; i < sorted.Count; i++)
        {
            var region = sorted[i];
            var sample = FreeAddress(region, sorted, i);
            if (sample is null && region.PrefixLength > 0) continue; // entirely covered by longer prefixes
            var id = IdFor("world|" + region);
            list.Add(new PeerIdentity(id, "world|" + region, region.Family, sample ?? region.NetworkAddress, null, region));
        }
        // Lengths present per family: the CIDRs holding an address are found by masking, not by scanning them all.
        var byLength = prefixes.GroupBy(c => (c.Family, c.PrefixLength)).ToDictionary(g => g.Key, g => g.ToHashSet());
        return _regions = new RegionSet(prefixes, list, byLength);
    }

    /// <summary>An address of <paramref name="region"/> in no longer prefix of the set (sorted), or null.</summary>
    private static IPAddress? FreeAddress(Cidr region, List<Cidr> sorted, int at)
    {
        var candidate = region.Network;
        var last = region.Network + (region.Size - 1);
        for (var j = at + 1; j < sorted.Count; j++)
        {
            var q = sorted[j];
            if (q.Family != region.Family || q.Network > last) break;
            if (!region.Contains(q) || q.PrefixLength == region.PrefixLength) continue;
            if (q.Network > candidate) break;
            var qLast = q.Network + (q.Size - 1);
            if (qLast >= candidate)
            {
                if (qLast >= last) return null;
                candidate = qLast + 1;
            }
        }
        return Cidr.ToAddress(candidate, region.Family);
    }

    private sealed record RuleRef(int Tier, PolicyIr Policy, PolicyRule Rule, PeerMatch Peer);

    /// <summary>Decides every identity the program has not decided yet; forgets identities that are gone.</summary>
    private void Fill(BpfProgram program, Dictionary<uint, PeerIdentity> identities, IdentityIndex index, PolicyEvaluator evaluator, PolicyWorld world)
    {
        foreach (var gone in program.Decided.Where(id => !identities.ContainsKey(id)).ToList())
        {
            program.Decided.Remove(gone);
            program.Identities.Remove(gone);
            program.Decisions.Remove(gone);
        }
        var todo = identities.Keys.Where(id => !program.Decided.Contains(id)).ToList();
        if (todo.Count == 0) return;
        var rules = new List<RuleRef>();
        for (var t = 0; t < program.Tiers.Tiers.Count; t++)
            foreach (var p in program.Tiers.Tiers[t].Policies)
                foreach (var r in p.Rules(program.Direction))
                    rules.Add(new RuleRef(t, p, r, program.Direction == Direction.Ingress ? r.Source : r.Destination));
        // Rules every identity must be decided against, and rules only the identities they can match see.
        var peerDependent = rules.Any(r => r.Peer.NotNets.Count > 0 || r.Peer.NotSelector is not null || r.Peer.Ports.Concat(r.Peer.NotPorts).Any(p => p.IsNamed));
        var generic = new List<int>();
        var specific = new Dictionary<uint, List<int>>();
        var todoSet = todo.ToHashSet();
        todoSet.Add(WorldV4);
        todoSet.Add(WorldV6);
        for (var i = 0; i < rules.Count; i++)
        {
            var peer = rules[i].Peer;
            if (peer.Nets.Count == 0 && !peer.RequiresEndpoint) { generic.Add(i); continue; }
            foreach (var id in index.Matching(peer, world).Distinct())
            {
                if (!todoSet.Contains(id)) continue;
                if (!specific.TryGetValue(id, out var list)) specific[id] = list = [];
                list.Add(i);
            }
        }
        var worldSpecific = new Dictionary<AddressFamily, List<int>>
        {
            [AddressFamily.InterNetwork] = specific.GetValueOrDefault(WorldV4) ?? [],
            [AddressFamily.InterNetworkV6] = specific.GetValueOrDefault(WorldV6) ?? [],
        };
        // A changed policy makes a new program; its previous version decided the same identities from the same rules
        // except the changed ones, so an identity whose candidate rules read the same (and whose program reads the same
        // otherwise: its policies' headers, the rules every identity sees) keeps the entries decided then.
        program.Basis = Basis(program, generic.Select(i => rules[i]));
        var previous = _programs.Values.FirstOrDefault(p => !ReferenceEquals(p, program) && p.Lineage == program.Lineage && p.Direction == program.Direction &&
                                                            p.Basis is not null && p.Basis.SequenceEqual(program.Basis, StringComparer.Ordinal));
        foreach (var id in todo)
        {
            program.Decided.Add(id);
            var identity = identities[id];
            var own = specific.GetValueOrDefault(id) ?? [];
            var isWorld = id is WorldV4 or WorldV6;
            if (!isWorld && !peerDependent && own.SequenceEqual(worldSpecific[identity.Family])) continue; // decided as the world
            var ownText = own.Select(i => RuleText(rules[i])).ToList();
            // Source-port tables are numbered per decision and deleted with their program: those are decided afresh.
            var entries = previous is not null && previous.Decisions.TryGetValue(id, out var before) && before.Entries.SportTables.Count == 0 &&
                          before.Candidates.SequenceEqual(ownText, StringComparer.Ordinal)
                ? before.Entries
                : Decide(program, identity, generic.Concat(own).Order().Select(i => rules[i]).ToList(), evaluator);
            program.Identities[id] = entries;
            program.Decisions[id] = (ownText, entries);
        }
        // A lookup that misses is looked up again as the world: an identity-wide entry saying what the world's single
        // identity-wide entry says adds nothing (CIDR-heavy policies: half the entries, half the writes of a change).
        foreach (var id in todo)
        {
            if (id is WorldV4 or WorldV6 || !program.Identities.TryGetValue(id, out var mine)) continue;
            var worldId = identities[id].Family == AddressFamily.InterNetwork ? WorldV4 : WorldV6;
            if (!program.Identities.TryGetValue(worldId, out var worldEntries) || worldEntries.SportTables.Count > 0 || worldEntries.Entries is not [{ PortBits: -1 } worldWide]) continue;
            if (mine.Entries.FirstOrDefault(e => e.PortBits == -1) is { PortBits: -1 } wide && wide.Verdict == worldWide.Verdict)
                program.Identities[id] = mine with { Entries = mine.Entries.Where(e => e.PortBits != -1).ToList() };
        }
    }

    /// <summary>
    /// What a program's decisions rest on besides each identity's own candidates: its policies' headers in tier order
    /// (what they are and how they end a tier) and the rules every identity is decided against.
    /// </summary>
    private static List<string> Basis(BpfProgram program, IEnumerable<RuleRef> generic)
    {
        var basis = new List<string> { string.Join(",", program.Local.Addresses), string.Join(",", program.Local.Ports) };
        foreach (var (tier, policies) in program.Tiers.Tiers)
            foreach (var p in policies)
                basis.Add(FormattableString.Invariant($"{tier}|{p.Id}|{p.Dialect}|{p.Kind}|{p.Order}|{p.AppliesToIngress}|{p.AppliesToEgress}"));
        basis.AddRange(generic.Select(RuleText));
        return basis;
    }

    /// <summary>A rule as text: equal text, equal rule (wherever it sits: tier, policy and position are part of it).</summary>
    private static string RuleText(RuleRef r)
    {
        var x = r.Rule;
        return FormattableString.Invariant(
            $"{r.Tier}|{r.Policy.Id}|{x.Origin}|{x.Action}|{x.Protocol}|{x.NotProtocol}|{x.Icmp}|{x.NotIcmp}|{x.IpVersion}|{Peer(x.Source)}|{Peer(x.Destination)}");
        static string Peer(PeerMatch p) => $"{p}|{string.Join(",", p.NotPorts)}";
    }

    /// <summary>The verdict of every protocol, port and ICMP type for one identity, as trie entries.</summary>
    private IdentityEntries Decide(BpfProgram program, PeerIdentity identity, List<RuleRef> candidates, PolicyEvaluator evaluator)
    {
        var ingress = program.Direction == Direction.Ingress;
        var localAddress = program.Local.Addresses.FirstOrDefault(a => a.AddressFamily == identity.Family);
        if (localAddress is null) // the endpoint has no address of this family: nothing legitimate to decide
            return new IdentityEntries([new PolicyEntry(0, -1, 0, new BpfVerdict(BpfAction.Drop, 0))], []);
        // Only the candidates matter; each policy keeps just its candidate rules (in order: candidates are sorted by
        // rule position) and still applies as before. Built from the candidates, not by scanning every policy's rules.
        var kept = new Dictionary<PolicyIr, List<PolicyRule>>(ReferenceEqualityComparer.Instance);
        foreach (var c in candidates)
        {
            if (!kept.TryGetValue(c.Policy, out var list)) kept[c.Policy] = list = [];
            list.Add(c.Rule);
        }
        var tiers = new TieredPolicies(program.Direction, program.Tiers.Tiers.Select(t => (t.Tier,
            (IReadOnlyList<PolicyIr>)t.Policies.Select(p => kept.TryGetValue(p, out var rules) ? Filtered(p, program.Direction, rules) : Emptied(p)).ToList())).ToList());
        // Most policies have no candidate for a given identity: one copy without rules per policy serves them all.
        PolicyIr Emptied(PolicyIr p)
        {
            if (!program.Emptied.TryGetValue(p, out var e)) program.Emptied[p] = e = Filtered(p, program.Direction, []);
            return e;
        }
        var (src, dst) = ingress ? (identity.Endpoint, program.Local) : (program.Local, identity.Endpoint);
        var (srcAddr, dstAddr) = ingress ? (identity.Sample, localAddress) : (localAddress, identity.Sample);

        var v4 = identity.Family == AddressFamily.InterNetwork;
        var protocols = new SortedSet<int>();
        foreach (var c in candidates)
        {
            if (c.Rule.Protocol is { } p) protocols.Add(p);
            if (c.Rule.NotProtocol is { } np) protocols.Add(np);
            var ports = c.Rule.Source.Ports.Count + c.Rule.Source.NotPorts.Count + c.Rule.Destination.Ports.Count + c.Rule.Destination.NotPorts.Count > 0;
            if (ports && c.Rule.Protocol is null) protocols.UnionWith([Protocols.Tcp, Protocols.Udp, Protocols.Sctp, Protocols.UdpLite]);
            if ((c.Rule.Icmp ?? c.Rule.NotIcmp) is not null && c.Rule.Protocol is null) protocols.Add(v4 ? Protocols.Icmp : Protocols.Icmpv6);
        }
        protocols.RemoveWhere(p => p == (v4 ? Protocols.Icmpv6 : Protocols.Icmp) || p > 255);
        var other = Enumerable.Range(0, 256).Select(i => 253 - i).First(p => p >= 0 && !protocols.Contains(p));

        BpfVerdict Eval(int protocol, int? sport, int? dport, int? icmpType, int? icmpCode)
        {
            var c = new Connection(srcAddr, dstAddr, protocol, sport, dport, icmpType, icmpCode);
            return ToVerdict(evaluator.EvaluateDirection(tiers, program.Local, c, src, dst, trace: false));
        }

        var entries = new List<PolicyEntry>();
        var sportTables = new List<SportTable>();
        var otherVerdict = Eval(other, null, null, null, null);
        entries.Add(new PolicyEntry(0, -1, 0, otherVerdict));
        foreach (var proto in protocols)
        {
            List<(int From, int To, BpfVerdict V)> cells;
            if (Protocols.HasPorts(proto))
            {
                var dports = Boundaries(candidates, proto, destination: true, ingress, program.Local, identity.Endpoint);
                var sports = Boundaries(candidates, proto, destination: false, ingress, program.Local, identity.Endpoint);
                cells = [];
                for (var i = 0; i < dports.Count - 1; i++)
                {
                    var d = dports[i];
                    var bySport = new List<(int, int, BpfVerdict)>();
                    for (var j = 0; j < sports.Count - 1; j++) bySport.Add((sports[j], sports[j + 1] - 1, Eval(proto, sports[j], d, null, null)));
                    var merged = Merge(bySport);
                    if (merged.Count == 1) cells.Add((d, dports[i + 1] - 1, merged[0].V));
                    else
                    {
                        var table = new SportTable(Ids.NextTable++, Prefixes(merged).Select(e => new SportEntry(e.Bits, e.Port, e.V)).ToList());
                        sportTables.Add(table);
                        cells.Add((d, dports[i + 1] - 1, new BpfVerdict(BpfAction.Drop, 0, table.Id)));
                    }
                }
            }
            else if (proto is Protocols.Icmp or Protocols.Icmpv6)
            {
                var bounds = new SortedSet<int> { 0, 65536 };
                foreach (var c in candidates)
                    foreach (var m in new[] { c.Rule.Icmp, c.Rule.NotIcmp })
                        if (m is { Type: { } t })
                        {
                            if (m.Code is { } code) { bounds.Add(t << 8 | code); bounds.Add((t << 8 | code) + 1); }
                            else { bounds.Add(t << 8); bounds.Add((t + 1) << 8); }
                        }
                var b = bounds.ToList();
                cells = [];
                for (var i = 0; i < b.Count - 1; i++) cells.Add((b[i], b[i + 1] - 1, Eval(proto, null, null, b[i] >> 8, b[i] & 255)));
            }
            else cells = [(0, 65535, Eval(proto, null, null, null, null))];
            cells = Merge(cells);
            if (cells.All(c => c.V == otherVerdict)) continue;
            // The protocol's most common verdict covers it whole; the other cells are port prefixes on top.
            var baseVerdict = cells.GroupBy(c => c.V).OrderByDescending(g => g.Sum(c => (long)c.To - c.From + 1)).First().Key;
            if (baseVerdict != otherVerdict || !Protocols.HasPorts(proto) && proto is not (Protocols.Icmp or Protocols.Icmpv6))
                entries.Add(new PolicyEntry((byte)proto, 0, 0, baseVerdict));
            foreach (var e in Prefixes(cells.Where(c => c.V != baseVerdict).ToList())) entries.Add(new PolicyEntry((byte)proto, e.Bits, e.Port, e.V));
        }
        return new IdentityEntries(entries, sportTables);
    }

    private static PolicyIr Filtered(PolicyIr p, Direction d, List<PolicyRule> rules)
    {
        if (rules.Count == p.Rules(d).Count) return p;
        return d == Direction.Ingress ? p with { Ingress = rules } : p with { Egress = rules };
    }

    /// <summary>Cell starts over 0..65535 (with 65536 closing the last) from one side's port matches.</summary>
    private static List<int> Boundaries(List<RuleRef> rules, int proto, bool destination, bool ingress, EndpointInfo local, EndpointInfo? peer)
    {
        var bounds = new SortedSet<int> { 0, 65536 };
        // The destination's ports are the local endpoint's on ingress, the peer's on egress; the source's the other way.
        var owner = destination == ingress ? local : peer;
        foreach (var r in rules)
        {
            var side = destination ? r.Rule.Destination : r.Rule.Source;
            foreach (var m in side.Ports.Concat(side.NotPorts))
            {
                if (!m.IsNamed) { bounds.Add(m.From); bounds.Add(m.To + 1); }
                else if (owner?.ResolvePort(m.Name!, proto) is { } port) { bounds.Add(port); bounds.Add(port + 1); }
            }
        }
        bounds.RemoveWhere(b => b is < 0 or > 65536);
        return bounds.ToList();
    }

    private static List<(int From, int To, BpfVerdict V)> Merge(List<(int From, int To, BpfVerdict V)> cells)
    {
        var merged = new List<(int From, int To, BpfVerdict V)>();
        foreach (var c in cells)
            if (merged.Count > 0 && merged[^1].V == c.V && merged[^1].To + 1 == c.From && c.V.SportTable == 0) merged[^1] = (merged[^1].From, c.To, c.V);
            else merged.Add(c);
        return merged;
    }

    /// <summary>Port ranges as the fewest aligned prefixes (16-bit).</summary>
    private static IEnumerable<(int Bits, ushort Port, BpfVerdict V)> Prefixes(List<(int From, int To, BpfVerdict V)> cells)
    {
        foreach (var (from, to, v) in cells)
        {
            var start = from;
            while (start <= to)
            {
                var size = 1;
                while (size < 65536 && start % (size * 2) == 0 && start + size * 2 - 1 <= to) size *= 2;
                yield return (16 - (int)Math.Log2(size), (ushort)start, v);
                start += size;
            }
        }
    }

    private BpfVerdict ToVerdict(DirectionVerdict v)
    {
        var log = v.Logged is { } l ? Token($"{l.Policy.Id} {l.Rule.Origin}") : 0;
        if (v.Allowed) return v.Policy is null ? new BpfVerdict(BpfAction.Profile, 0, 0, log != 0, log) : new BpfVerdict(BpfAction.Allow, Token(v.Policy.Id), 0, log != 0, log);
        if (v.Rule is not null) return new BpfVerdict(BpfAction.Deny, Token(v.Policy!.Id), 0, log != 0, log);
        return new BpfVerdict(BpfAction.Drop, Token(string.Join(",", (v.TierPolicies ?? []).Select(p => p.Id))), 0, log != 0, log);
    }

    private uint Token(string meaning)
    {
        if (!Ids.Tokens.TryGetValue(meaning, out var t)) Ids.Tokens[meaning] = t = Ids.NextToken++;
        return t;
    }

    /// <summary>Which identities a peer's positive parts (nets, selectors) can match, without testing every identity.</summary>
    private sealed class IdentityIndex
    {
        private readonly List<PeerIdentity> _endpoints;
        private readonly List<PeerIdentity> _world; // sorted by (family, network)

        public IdentityIndex(IEnumerable<PeerIdentity> identities)
        {
            var all = identities.ToList();
            _endpoints = all.Where(i => i.Endpoint is not null).ToList();
            _world = all.Where(i => i.Region is not null).OrderBy(i => i.Region!.Value).ToList();
        }

        public IEnumerable<uint> Matching(PeerMatch peer, PolicyWorld world)
        {
            var positive = peer with { NotSelector = null };
            foreach (var e in _endpoints)
                if ((peer.Nets.Count == 0 || peer.Nets.Any(n => n.Contains(e.Sample))) && world.MatchesEndpointParts(positive, e.Endpoint))
                    yield return e.Id;
            if (peer.RequiresEndpoint) yield break;
            foreach (var net in peer.Nets)
            {
                var lo = LowerBound(net);
                for (var i = lo; i < _world.Count; i++)
                {
                    var r = _world[i].Region!.Value;
                    if (r.Family != net.Family || r.Network > net.Network + (net.Size - 1)) break;
                    if (net.Contains(r)) yield return _world[i].Id;
                }
            }
        }

        private int LowerBound(Cidr net)
        {
            int lo = 0, hi = _world.Count;
            while (lo < hi)
            {
                var mid = (lo + hi) / 2;
                var r = _world[mid].Region!.Value;
                if (r.Family < net.Family || r.Family == net.Family && r.Network < net.Network) lo = mid + 1;
                else hi = mid;
            }
            return lo;
        }
    }
}
