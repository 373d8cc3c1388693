using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json.Nodes;
using Weft.Model;
using Weft.Policy;
using Weft.Policy.Ir;

namespace Weft.Dataplane.Nftables;

// Design notes.
// - Per-packet cost must not grow with the number of endpoints or rules: traffic from or to a pod interface is
//   dispatched by address through verdict maps (egress4/6 keyed by source, ingress4/6 by destination) to the chain
//   of that endpoint; peers are matched through named address sets resolved from selectors in user space (as
//   Cilium resolves identities), named ports through address·port sets. Conntrack accepts established flows first.
// - Chains are shared: one chain per (policy, direction), one per distinct list of applicable policies (most
//   endpoints share a handful), so 1k endpoints do not mean 1k copies of every rule.
// - Verdicts across nested chains travel in the packet mark: a policy chain sets ALLOW or PASS and returns; the
//   tier chain returns on either; the endpoint chain turns ALLOW into accept (ingress) or EGRESS_OK (egress, so
//   ingress at the destination is still checked in the same pass), PASS into "next tier"; the end of a tier drops.
// - Fail closed: a packet from or to a pod interface whose address is not in the maps (an endpoint the agent has
//   not programmed yet) is dropped. Pod interfaces are recognised by name prefix; the node's own overlay device
//   shares the prefix and is excluded.

/// <summary>Compiles the policy IR for one node's endpoints into the desired content of the `inet weft-policy` table.</summary>
public sealed class NftPolicyCompiler(NftPolicyCompiler.Options options)
{
    /// <param name="FlowLogGroup">NFLOG group for verdicts on new connections (flows); 0 turns flow logging off</param>
    /// <param name="TunnelPort">The overlay's UDP port: beside the BPF dataplane its packets skip the no-route check (their inner packets come back through the tunnel device).</param>
    public sealed record Options(string PodInterfacePrefix = Ownership.PodInterfacePrefix, IReadOnlyList<string>? NotPodInterfaces = null, int LogGroup = 1, int FlowLogGroup = 2, int? TunnelPort = null)
    {
        public IReadOnlyList<string> Excluded => NotPodInterfaces ?? [Ownership.VxlanDevice];
    }

    public const string Table = Ownership.PolicyTable;
    public const uint MarkAllow = 0x10000, MarkPass = 0x20000, MarkEgressOk = 0x40000, MarkAll = MarkAllow | MarkPass | MarkEgressOk;

    private PolicyRuleset _out = new();
    private PolicyWorld _world = null!;
    private readonly Dictionary<string, string> _policyChains = new(StringComparer.Ordinal);

    /// <summary>
    /// A policy chain as compiled last time: its rules and merged sets depend only on the policy, so they are reused
    /// while the policy's version (its datastore revision) is unchanged; the selector and named-port sets it refers
    /// to depend on the cluster and are rebuilt from the recorded references on every compile.
    /// </summary>
    private sealed record CachedChain(long Version, NftChain Chain, List<NftSet> MergedSets, List<Action> Refs);

    private Dictionary<string, CachedChain> _cache = new(StringComparer.Ordinal);
    private Dictionary<string, CachedChain> _nextCache = new(StringComparer.Ordinal);
    private List<Action>? _recording;

    public PolicyRuleset Compile(PolicySet policies, PolicyWorld world, IReadOnlyList<EndpointInfo> local)
    {
        _out = new PolicyRuleset { Endpoints = local.Count };
        _world = world;
        _policyChains.Clear();
        _nextCache = new Dictionary<string, CachedChain>(StringComparer.Ordinal);
        foreach (var (name, type) in new[] { ("egress4", "ipv4_addr"), ("egress6", "ipv6_addr"), ("ingress4", "ipv4_addr"), ("ingress6", "ipv6_addr") })
            _out.Maps[name] = new NftVerdictMap(name, type, new SortedDictionary<string, string>(StringComparer.Ordinal));

        // Endpoints with no applicable policy share these two chains (the namespace profile: allow).
        AddChain("allow-egress", [Rule([.. FlowLogStatement('A', Direction.Egress, FlowLog.Profile), SetMark(MarkEgressOk), Verdict("return")])]);
        AddChain("allow-ingress", [Rule([.. FlowLogStatement('A', Direction.Ingress, FlowLog.Profile), Verdict("accept")])]);
        _out.LogMeanings[FlowLog.Profile] = "";
        _out.LogMeanings[FlowLog.Unprogrammed] = "";

        foreach (var ep in local)
            foreach (var direction in new[] { Direction.Egress, Direction.Ingress })
            {
                var chain = EndpointChain(policies, ep, direction);
                foreach (var addr in ep.Addresses)
                {
                    var map = (direction == Direction.Egress ? "egress" : "ingress") + (addr.AddressFamily == AddressFamily.InterNetwork ? "4" : "6");
                    _out.Maps[map].Elements[addr.ToString()] = chain;
                }
            }

        AddChain("from-pod",
        [
            Rule(Match("==", Meta("nfproto"), "ipv4"), new JsonObject { ["vmap"] = new JsonObject { ["key"] = Payload("ip", "saddr"), ["data"] = "@egress4" } }),
            Rule(Match("==", Meta("nfproto"), "ipv6"), new JsonObject { ["vmap"] = new JsonObject { ["key"] = Payload("ip6", "saddr"), ["data"] = "@egress6" } }),
            // Not programmed yet (or spoofed source): fail closed.
            Rule([Match("==", And(Meta("mark"), MarkEgressOk), 0), .. FlowLogStatement('D', Direction.Egress, FlowLog.Unprogrammed), Verdict("drop")]),
        ]);
        AddChain("to-pod",
        [
            Rule(Match("==", Meta("nfproto"), "ipv4"), new JsonObject { ["vmap"] = new JsonObject { ["key"] = Payload("ip", "daddr"), ["data"] = "@ingress4" } }),
            Rule(Match("==", Meta("nfproto"), "ipv6"), new JsonObject { ["vmap"] = new JsonObject { ["key"] = Payload("ip6", "daddr"), ["data"] = "@ingress6" } }),
            Rule([.. FlowLogStatement('D', Direction.Ingress, FlowLog.Unprogrammed), Verdict("drop")]),
        ]);
        var fromPod = new JsonArray(Match("==", Meta("iifname"), options.PodInterfacePrefix + "*"), Match("!=", Meta("iifname"), AnonSet(options.Excluded.Select(n => (JsonNode)n))));
        var toPod = new JsonArray(Match("==", Meta("oifname"), options.PodInterfacePrefix + "*"), Match("!=", Meta("oifname"), AnonSet(options.Excluded.Select(n => (JsonNode)n))));
        var established = Match("in", new JsonObject { ["ct"] = new JsonObject { ["key"] = "state" } }, new JsonArray("established", "related"));
        _out.Chains["forward"] = new NftChain("forward", Texts(
            Rule(new JsonObject { ["mangle"] = new JsonObject { ["key"] = Meta("mark"), ["value"] = new JsonObject { ["&"] = new JsonArray(Meta("mark"), ~MarkAll) } } }),
            Rule(established.DeepClone(), Verdict("accept")),
            Rule(Match("in", new JsonObject { ["ct"] = new JsonObject { ["key"] = "state" } }, new JsonArray("invalid")), Verdict("drop")),
            Rule([.. fromPod.Select(n => n!.DeepClone()), Jump("from-pod")]),
            Rule([.. toPod.Select(n => n!.DeepClone()), Jump("to-pod")])), "forward", 0);
        // Pod to node: egress policy applies too; neighbour discovery must always work.
        _out.Chains["input"] = new NftChain("input", Texts(
            Rule(established.DeepClone(), Verdict("accept")),
            Rule(Match("==", Payload("icmpv6", "type"), AnonSet([(JsonNode)"nd-router-solicit", "nd-neighbor-solicit", "nd-neighbor-advert"])), Verdict("accept")),
            Rule(new JsonObject { ["mangle"] = new JsonObject { ["key"] = Meta("mark"), ["value"] = new JsonObject { ["&"] = new JsonArray(Meta("mark"), ~MarkAll) } } }),
            Rule([.. fromPod.Select(n => n!.DeepClone()), Jump("from-pod")])), "input", 0);
        if (options.FlowLogGroup > 0)
        {
            _out.Chains["prerouting"] = NoRouteChain(tracked: true);
            _out.LogMeanings[FlowLog.NoRoute] = "";
        }
        _cache = _nextCache; // policies gone since the last compile drop out of the cache
        return _out;
    }

    /// <summary>
    /// The table beside the BPF policy dataplane where it has no tunnel device to put its report program on (host-gw):
    /// only the flow report of packets from other nodes that routing drops (with flows on). The programs decide
    /// everything else, report packets from pods themselves and fail closed by themselves. Empty with flows off.
    /// </summary>
    public PolicyRuleset CompileGuard()
    {
        _out = new PolicyRuleset();
        if (options.FlowLogGroup > 0)
        {
            _out.Chains["prerouting"] = NoRouteChain(tracked: false, fromPods: false);
            _out.LogMeanings[FlowLog.NoRoute] = "";
        }
        return _out;
    }

    private NftChain NoRouteChain(bool tracked, bool fromPods = true)
    {
        var fromPod = new JsonArray(Match("==", Meta("iifname"), options.PodInterfacePrefix + "*"), Match("!=", Meta("iifname"), AnonSet(options.Excluded.Select(n => (JsonNode)n))));
        // A new connection to an address the node routes nowhere (an address of this node's blocks with no pod:
        // the agent's blackhole) is dropped by the kernel's routing, which nftables never sees; say so here.
        // "oif missing": the route lookup fails (blackhole, unreachable, prohibit, or no route at all); `fib daddr
        // type` would only consult the local table. The node's own addresses also report no oif, and broadcast and
        // multicast have no unicast route by nature: those are excluded by address type.
        JsonNode[] NoRoute() =>
        [
            Match("==", new JsonObject { ["fib"] = new JsonObject { ["result"] = "oif", ["flags"] = new JsonArray("daddr") } }, false),
            Match("!=", new JsonObject { ["fib"] = new JsonObject { ["result"] = "type", ["flags"] = new JsonArray("daddr") } }, AnonSet([(JsonNode)"local", "broadcast", "anycast", "multicast"])),
        ];
        // Only new connections are reported where conntrack runs anyway (nftables enforcement); beside the BPF
        // dataplane, which needs no conntrack, a `ct` match would turn it on for every packet: each dropped packet is
        // reported instead (Cilium reports drops per packet too). Two cheap tests keep the route lookups off the bulk of
        // the traffic there: a TCP packet other than a bare SYN never starts a connection, and tunnel packets are
        // looked at once decapsulated.
        JsonNode[] IsNew() => tracked ? [Match("in", new JsonObject { ["ct"] = new JsonObject { ["key"] = "state" } }, new JsonArray("new"))] : [];
        var skip = new List<JsonArray>();
        if (!tracked)
        {
            skip.Add(Rule(Match("!=", new JsonObject { ["&"] = new JsonArray(new JsonObject { ["payload"] = new JsonObject { ["protocol"] = "tcp", ["field"] = "flags" } }, new JsonArray("syn", "ack")) }, "syn"), Verdict("return")));
            if (options.TunnelPort is { } port)
                skip.Add(Rule(Match("==", new JsonObject { ["payload"] = new JsonObject { ["protocol"] = "udp", ["field"] = "dport" } }, port), Verdict("return")));
        }
        return new NftChain("prerouting", Texts([
            .. skip,
            // accept only ends this chain; routing still drops the packet.
            fromPods
                ? Rule([.. IsNew(), .. fromPod.Select(n => n!.DeepClone()), .. NoRoute(), .. FlowLogStatement('D', Direction.Egress, FlowLog.NoRoute), Verdict("accept")])
                : Rule([.. fromPod.Select(n => n!.DeepClone()), Verdict("return")]),
            Rule([.. IsNew(), .. NoRoute(), .. FlowLogStatement('D', Direction.Ingress, FlowLog.NoRoute)])]),
            "prerouting", -150);
    }

    /// <summary>The chain deciding one direction for one endpoint, shared by every endpoint with the same applicable policies.</summary>
    private string EndpointChain(PolicySet policies, EndpointInfo ep, Direction direction)
    {
        var applicable = PolicyCalculator.Applicable(policies, _world, ep, direction);
        var tiers = applicable.Tiers;
        var egress = direction == Direction.Egress;
        if (applicable.IsEmpty) return egress ? "allow-egress" : "allow-ingress";
        var name = $"ep-{(egress ? "eg" : "in")}-{Hash(applicable.Key)}";
        if (_out.Chains.ContainsKey(name)) return name;
        JsonArray AllowVerdict() => egress ? Rule(SetMark(MarkEgressOk), Verdict("return")) : Rule(Verdict("accept"));
        JsonArray ProfileVerdict() => Rule([.. FlowLogStatement('A', direction, FlowLog.Profile), .. AllowVerdict().Select(n => n!.DeepClone())]);
        var rules = new List<string>();
        for (var t = 0; t < tiers.Count; t++)
        {
            var tierChain = $"{name}-t{t}";
            var tierRules = new List<string>();
            foreach (var p in tiers[t].Policies)
            {
                tierRules.Add(Rule(Jump(PolicyChain(p, direction))).ToJsonString());
                tierRules.Add(Rule(Match("!=", And(Meta("mark"), MarkAllow | MarkPass), 0), Verdict("return")).ToJsonString());
            }
            // End of tier: at least one policy applied and none decided.
            tierRules.Add(Rule([.. FlowLogStatement('D', direction, tierChain), Verdict("drop")]).ToJsonString());
            _out.LogMeanings[tierChain] = string.Join(",", tiers[t].Policies.Select(p => p.Id));
            _out.Chains[tierChain] = new NftChain(tierChain, tierRules);
            rules.Add(Rule(Jump(tierChain)).ToJsonString());
            var allow = AllowVerdict();
            allow.Insert(0, Match("!=", And(Meta("mark"), MarkAllow), 0));
            rules.Add(allow.ToJsonString());
            if (t < tiers.Count - 1)
                rules.Add(Rule(new JsonObject { ["mangle"] = new JsonObject { ["key"] = Meta("mark"), ["value"] = new JsonObject { ["&"] = new JsonArray(Meta("mark"), ~MarkPass) } } }).ToJsonString());
        }
        rules.Add(ProfileVerdict().ToJsonString()); // every tier passed: the profile allows
        _out.Chains[name] = new NftChain(name, rules);
        return name;
    }

    private string PolicyChain(PolicyIr p, Direction direction)
    {
        var key = p.Id + "|" + direction;
        if (_policyChains.TryGetValue(key, out var existing)) return existing;
        _out.LogMeanings[PolicyToken(p, direction)] = p.Id;
        var readable = p.Id.Replace('/', '.');
        var name = $"pol-{(readable.Length > 200 ? readable[..200] + "-" + Hash(p.Id) : readable)}-{(direction == Direction.Egress ? "eg" : "in")}";
        _policyChains[key] = name;
        if (p.Version != 0 && _cache.TryGetValue(key, out var cached) && cached.Version == p.Version)
        {
            _out.Chains[name] = cached.Chain;
            foreach (var set in cached.MergedSets) _out.Sets[set.Name] = set;
            foreach (var replay in cached.Refs) replay();
            _nextCache[key] = cached;
            return name;
        }
        var setsBefore = new HashSet<string>(_out.Sets.Keys, StringComparer.Ordinal);
        _recording = [];
        var rules = new List<string>();
        var list = p.Rules(direction);
        for (var i = 0; i < list.Count;)
        {
            // A run of address+port rules with one action becomes one lookup in an interval set (see MergedSet).
            if (Mergeable(list[i], direction))
            {
                var j = i;
                while (j < list.Count && list[j].Action == list[i].Action && Mergeable(list[j], direction)) j++;
                foreach (var family in new[] { 4, 6 }) rules.AddRange(MergedRun(p, direction, list, i, j, family));
                i = j;
                continue;
            }
            foreach (var family in new[] { 4, 6 })
                foreach (var exprs in RuleExpressions(list[i], family))
                {
                    exprs.AddRange(Action(list[i], p, direction));
                    rules.Add(new JsonArray([.. exprs]).ToJsonString());
                }
            i++;
        }
        _out.Chains[name] = new NftChain(name, rules);
        if (p.Version != 0)
            _nextCache[key] = new CachedChain(p.Version, _out.Chains[name],
                _out.Sets.Values.Where(x => x.Interval && !setsBefore.Contains(x.Name)).ToList(), _recording);
        _recording = null;
        return name;
    }

    /// <summary>
    /// A rule that only matches the peer's address (nets minus notNets), the protocol and numeric destination ports:
    /// what Kubernetes ipBlock/port rules and most Calico net rules are. Such rules with one action commute, so a
    /// run of them is one set of address·protocol·port boxes: per-packet cost no longer grows with the rule count,
    /// and changing one rule is a set-element diff, not a chain rewrite.
    /// </summary>
    private static bool Mergeable(PolicyRule r, Direction direction)
    {
        if (r.Action is not (RuleAction.Allow or RuleAction.Deny) || r.Icmp is not null || r.NotIcmp is not null || r.NotProtocol is not null) return false;
        var (addr, other) = direction == Direction.Ingress ? (r.Source, r.Destination) : (r.Destination, r.Source);
        if (addr.RequiresEndpoint || addr.NotSelector is not null || addr.NotPorts.Count > 0) return false;
        if (other.SelectsAddresses || other.NotPorts.Count > 0) return false;
        var ports = direction == Direction.Ingress ? other.Ports : addr.Ports;
        var strayPorts = direction == Direction.Ingress ? addr.Ports : other.Ports; // source ports: not merged
        return strayPorts.Count == 0 && ports.All(pm => !pm.IsNamed) && (ports.Count == 0 || r.Protocol is not null);
    }

    private readonly record struct Box(Cidr Prefix, int ProtoLo, int ProtoHi, int PortLo, int PortHi)
    {
        public bool Overlaps(in Box o) =>
            Prefix.Overlaps(o.Prefix) && ProtoLo <= o.ProtoHi && o.ProtoLo <= ProtoHi && PortLo <= o.PortHi && o.PortLo <= PortHi;
    }

    /// <summary>
    /// The boxes of one set, indexed so an overlap check costs O(prefix length + log n): two prefixes overlap only
    /// when one contains the other, so look up every supernet by (network, length) and every subnet in a sorted view.
    /// </summary>
    private sealed class BoxIndex
    {
        private readonly Dictionary<(UInt128, int), List<Box>> _byPrefix = [];
        private readonly SortedSet<(UInt128 Lo, int Len)> _sorted = [];

        public bool Overlaps(in Box b)
        {
            var p = b.Prefix;
            for (var len = 0; len <= p.PrefixLength; len++)
            {
                var super = p.Supernet(len);
                if (_byPrefix.TryGetValue((super.Network, len), out var list))
                    foreach (var o in list) if (o.Overlaps(b)) return true;
            }
            var hi = p.HostBits >= 128 ? UInt128.MaxValue : p.Network + (p.Size - 1);
            foreach (var (lo, len) in _sorted.GetViewBetween((p.Network, p.PrefixLength + 1), (hi, int.MaxValue)))
                foreach (var o in _byPrefix[(lo, len)]) if (o.Overlaps(b)) return true;
            return false;
        }

        public void Add(in Box b)
        {
            var key = (b.Prefix.Network, b.Prefix.PrefixLength);
            if (!_byPrefix.TryGetValue(key, out var list)) _byPrefix[key] = list = [];
            list.Add(b);
            _sorted.Add(key);
        }
    }

    /// <summary>Rules for rules[from..to) in one family: one set lookup, plus any rule whose boxes overlap the set's (the kernel refuses overlapping elements; order within the run does not matter).</summary>
    private List<string> MergedRun(PolicyIr p, Direction direction, IReadOnlyList<PolicyRule> rules, int from, int to, int family)
    {
        var fam = family == 4 ? AddressFamily.InterNetwork : AddressFamily.InterNetworkV6;
        var index = new BoxIndex();
        var elements = new SortedSet<string>(StringComparer.Ordinal);
        var leftovers = new List<PolicyRule>();
        var mine = new List<(Box Box, string Json)>();
        for (var k = from; k < to; k++)
        {
            var r = rules[k];
            if (r.IpVersion is { } v && v != family) continue;
            var addr = direction == Direction.Ingress ? r.Source : r.Destination;
            var ports = direction == Direction.Ingress ? r.Destination.Ports : addr.Ports;
            var nets = addr.Nets.Count == 0 ? [new Cidr(family == 4 ? IPAddress.Any : IPAddress.IPv6Any, 0)] : addr.Nets.Where(n => n.Family == fam).ToList();
            var (protoLo, protoHi) = r.Protocol is { } proto ? (proto, proto) : (0, 255);
            var protoJson = protoLo == protoHi ? Num(protoLo) : $"{{\"range\":[{Num(protoLo)},{Num(protoHi)}]}}";
            mine.Clear();
            foreach (var prefix in nets.SelectMany(n => addr.NotNets.Count == 0 ? [n] : n.Subtract(addr.NotNets)))
            {
                var address = AddressText(prefix);
                var prefixJson = prefix.PrefixLength == prefix.AddressBits
                    ? $"\"{address}\""
                    : $"{{\"prefix\":{{\"addr\":\"{address}\",\"len\":{Num(prefix.PrefixLength)}}}}}";
                if (ports.Count == 0) mine.Add((new Box(prefix, protoLo, protoHi, 0, 65535), $"{{\"concat\":[{prefixJson},{protoJson},{{\"range\":[0,65535]}}]}}"));
                else
                    foreach (var pm in ports)
                        mine.Add((new Box(prefix, protoLo, protoHi, pm.From, pm.To),
                            $"{{\"concat\":[{prefixJson},{protoJson},{(pm.From == pm.To ? Num(pm.From) : $"{{\"range\":[{Num(pm.From)},{Num(pm.To)}]}}")}]}}"));
            }
            // Exact duplicates are harmless; partial overlaps go to a plain rule after the set (same action, same result).
            var clash = false;
            for (var m = 0; m < mine.Count && !clash; m++)
            {
                if (!elements.Contains(mine[m].Json) && index.Overlaps(mine[m].Box)) clash = true;
                for (var o = m + 1; o < mine.Count && !clash; o++) clash = mine[m].Box.Overlaps(mine[o].Box);
            }
            if (clash)
            {
                leftovers.Add(r);
                continue;
            }
            foreach (var (box, json) in mine)
                if (elements.Add(json)) index.Add(box);
        }
        var result = new List<string>();
        var ipProto = family == 4 ? "ip" : "ip6";
        if (elements.Count > 0)
        {
            var setName = $"m-{Hash($"{p.Id}|{direction}|{from}")}-{family}";
            _out.Sets[setName] = new NftSet(setName, new JsonArray(family == 4 ? "ipv4_addr" : "ipv6_addr", "inet_proto", "inet_service"), elements) { Interval = true };
            var key = new JsonObject { ["concat"] = new JsonArray(Payload(ipProto, direction == Direction.Ingress ? "saddr" : "daddr"), Meta("l4proto"), Payload("th", "dport")) };
            result.Add(new JsonArray([Match("==", key, "@" + setName), .. Action(rules[from], p, direction)]).ToJsonString());
        }
        foreach (var r in leftovers)
            foreach (var exprs in RuleExpressions(r, family))
            {
                exprs.AddRange(Action(r, p, direction));
                result.Add(new JsonArray([.. exprs]).ToJsonString());
            }
        return result;
    }

    /// <summary>IPv4 dotted quads straight from the integer (10k elements per change make IPAddress objects show up).</summary>
    private static string AddressText(Cidr c)
    {
        if (!c.IsIPv4) return c.NetworkAddress.ToString();
        var v = (uint)c.Network;
        return string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{v >> 24}.{(v >> 16) & 255}.{(v >> 8) & 255}.{v & 255}");
    }

    private static string Num(int n) => n.ToString(System.Globalization.CultureInfo.InvariantCulture);

    private IEnumerable<JsonNode> Action(PolicyRule rule, PolicyIr p, Direction direction) => rule.Action switch
    {
        RuleAction.Allow => [.. FlowLogStatement('A', direction, PolicyToken(p, direction)), SetMark(MarkAllow), Verdict("return")],
        RuleAction.Deny => [.. FlowLogStatement('X', direction, PolicyToken(p, direction)), Verdict("drop")],
        RuleAction.Pass => [SetMark(MarkPass), Verdict("return")],
        _ => [new JsonObject { ["log"] = new JsonObject { ["group"] = options.LogGroup, ["prefix"] = Truncate($"weft {p.Id} {rule.Origin}", 127) } }],
    };

    /// <summary>The expression lists for one rule in one family (several when ports mix numbers and names); none when the rule cannot match in that family.</summary>
    private List<List<JsonNode>> RuleExpressions(PolicyRule rule, int family)
    {
        var none = new List<List<JsonNode>>();
        if (rule.IpVersion is { } v && v != family) return none;
        if (rule.Protocol == Protocols.Icmp && family == 6 || rule.Protocol == Protocols.Icmpv6 && family == 4) return none;
        var common = new List<JsonNode>();
        if (rule.Protocol is { } proto) common.Add(Match("==", Meta("l4proto"), proto));
        if (rule.NotProtocol is { } np) common.Add(Match("!=", Meta("l4proto"), np));
        var icmpProto = family == 4 ? "icmp" : "icmpv6";
        if (rule.Icmp is { } icmp)
        {
            if (icmp.Type is { } t) common.Add(Match("==", Payload(icmpProto, "type"), t));
            if (icmp.Code is { } c) common.Add(Match("==", Payload(icmpProto, "code"), c));
        }
        // The reader accepts notICMP with a type only, so "not this type" is one expression.
        if (rule.NotIcmp is { Type: { } nt }) common.Add(Match("!=", Payload(icmpProto, "type"), nt));
        var src = PeerAlternatives(rule.Source, family, "saddr", "sport", rule.Protocol);
        var dst = PeerAlternatives(rule.Destination, family, "daddr", "dport", rule.Protocol);
        if (src is null || dst is null) return none;
        var result = new List<List<JsonNode>>();
        foreach (var s in src)
            foreach (var d in dst)
                result.Add([.. common.Select(n => n.DeepClone()), .. s.Select(n => n.DeepClone()), .. d.Select(n => n.DeepClone())]);
        return result;
    }

    /// <summary>Alternatives (OR) of expression lists (AND) for one side; null when the side cannot match in this family.</summary>
    private List<List<JsonNode>>? PeerAlternatives(PeerMatch peer, int family, string addrField, string portField, int? protocol)
    {
        var ipProto = family == 4 ? "ip" : "ip6";
        var fam = family == 4 ? AddressFamily.InterNetwork : AddressFamily.InterNetworkV6;
        var exprs = new List<JsonNode>();
        if (peer.Nets.Count > 0)
        {
            var nets = peer.Nets.Where(n => n.Family == fam).ToList();
            if (nets.Count == 0) return null;
            exprs.Add(Match("==", Payload(ipProto, addrField), AnonSet(nets.Select(Prefix))));
        }
        var notNets = peer.NotNets.Where(n => n.Family == fam).ToList();
        if (notNets.Count > 0) exprs.Add(Match("!=", Payload(ipProto, addrField), AnonSet(notNets.Select(Prefix))));
        if (peer.RequiresEndpoint)
            exprs.Add(Match("==", Payload(ipProto, addrField), "@" + SelectorSet(peer, family, negated: false)));
        if (peer.NotSelector is not null)
            exprs.Add(Match("!=", Payload(ipProto, addrField), "@" + SelectorSet(peer, family, negated: true)));
        foreach (var np in peer.NotPorts)
            exprs.Add(np.IsNamed
                ? Match("!=", Concat(Payload(ipProto, addrField), Payload("th", portField)), "@" + NamedPortSet(np.Name!, protocol, family))
                : Match("!=", Payload("th", portField), PortValue(np)));
        if (peer.Ports.Count == 0) return [exprs];
        var alternatives = new List<List<JsonNode>>();
        var numeric = peer.Ports.Where(p => !p.IsNamed).ToList();
        if (numeric.Count > 0)
            alternatives.Add([.. exprs.Select(e => e.DeepClone()), Match("==", Payload("th", portField), AnonSet(numeric.Select(PortValue)))]);
        foreach (var named in peer.Ports.Where(p => p.IsNamed))
            alternatives.Add([.. exprs.Select(e => e.DeepClone()), Match("==", Concat(Payload(ipProto, addrField), Payload("th", portField)), "@" + NamedPortSet(named.Name!, protocol, family))]);
        return alternatives;
    }

    /// <summary>The set of the addresses the calculator resolves the peer's selector parts (or its notSelector) to.</summary>
    private string SelectorSet(PeerMatch peer, int family, bool negated)
    {
        _recording?.Add(() => SelectorSet(peer, family, negated));
        var key = negated ? "not|" + peer.NotSelector!.Text : $"{peer.Namespace}|{peer.NamespaceSelector?.Text}|{peer.Selector?.Text}";
        var name = $"sel-{Hash(key)}-{family}";
        if (_out.Sets.ContainsKey(name)) return name;
        var fam = family == 4 ? AddressFamily.InterNetwork : AddressFamily.InterNetworkV6;
        var elements = new SortedSet<string>(PolicyCalculator.SelectorAddresses(_world, peer, fam, negated).Select(a => JsonValue.Create(a.ToString()).ToJsonString()), StringComparer.Ordinal);
        _out.Sets[name] = new NftSet(name, JsonValue.Create(family == 4 ? "ipv4_addr" : "ipv6_addr"), elements);
        return name;
    }

    /// <summary>The set of the address·port pairs the calculator resolves a named port to.</summary>
    private string NamedPortSet(string portName, int? protocol, int family)
    {
        _recording?.Add(() => NamedPortSet(portName, protocol, family));
        var name = $"np-{portName}-{protocol?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "any"}-{family}";
        if (_out.Sets.ContainsKey(name)) return name;
        var fam = family == 4 ? AddressFamily.InterNetwork : AddressFamily.InterNetworkV6;
        var elements = new SortedSet<string>(PolicyCalculator.NamedPortAddresses(_world, portName, protocol, fam)
            .Select(p => new JsonObject { ["concat"] = new JsonArray(p.Address.ToString(), p.Port) }.ToJsonString()), StringComparer.Ordinal);
        _out.Sets[name] = new NftSet(name, new JsonArray(family == 4 ? "ipv4_addr" : "ipv6_addr", "inet_service"), elements);
        return name;
    }

    /// <summary>The flow log statement for a verdict (see <see cref="FlowLog"/>), or nothing when flow logging is off.</summary>
    private JsonObject[] FlowLogStatement(char verdict, Direction direction, string token) =>
        options.FlowLogGroup <= 0 ? [] : [new JsonObject { ["log"] = new JsonObject { ["group"] = options.FlowLogGroup, ["prefix"] = FlowLog.Prefix(verdict, direction, token) } }];

    private static string PolicyToken(PolicyIr p, Direction direction) => Hash(p.Id + "|" + direction);

    private static List<string> Texts(params JsonArray[] rules) => rules.Select(r => r.ToJsonString()).ToList();

    private void AddChain(string name, IEnumerable<JsonArray> rules) => _out.Chains[name] = new NftChain(name, rules.Select(r => r.ToJsonString()).ToList());

    // JSON helpers (libnftables' JSON schema).
    private static JsonArray Rule(params JsonNode[] exprs) => new(exprs);
    private static JsonObject Meta(string key) => new() { ["meta"] = new JsonObject { ["key"] = key } };
    private static JsonObject Payload(string protocol, string field) => new() { ["payload"] = new JsonObject { ["protocol"] = protocol, ["field"] = field } };
    private static JsonObject Concat(JsonNode a, JsonNode b) => new() { ["concat"] = new JsonArray(a, b) };
    private static JsonObject And(JsonNode a, uint mask) => new() { ["&"] = new JsonArray(a, mask) };
    private static JsonObject Match(string op, JsonNode left, JsonNode right) => new() { ["match"] = new JsonObject { ["op"] = op, ["left"] = left, ["right"] = right } };
    private static JsonObject Verdict(string v) => new() { [v] = null };
    private static JsonObject Jump(string chain) => new() { ["jump"] = new JsonObject { ["target"] = chain } };
    private static JsonObject SetMark(uint bits) => new() { ["mangle"] = new JsonObject { ["key"] = Meta("mark"), ["value"] = new JsonObject { ["|"] = new JsonArray(Meta("mark"), bits) } } };
    private static JsonObject AnonSet(IEnumerable<JsonNode> items) => new() { ["set"] = new JsonArray([.. items]) };
    private static JsonNode Prefix(Cidr c) => c.PrefixLength == c.AddressBits ? JsonValue.Create(c.NetworkAddress.ToString()) : new JsonObject { ["prefix"] = new JsonObject { ["addr"] = c.NetworkAddress.ToString(), ["len"] = c.PrefixLength } };
    private static JsonNode PortValue(PortMatch p) => p.From == p.To ? JsonValue.Create(p.From) : new JsonObject { ["range"] = new JsonArray(p.From, p.To) };
    private static string Truncate(string s, int max) => s.Length <= max ? s : s[..max];

    /// <summary>FNV-1a 64, 12 hex digits: stable names across runs so diffs stay small.</summary>
    internal static string Hash(string text)
    {
        var h = 14695981039346656037UL;
        foreach (var b in Encoding.UTF8.GetBytes(text)) { h ^= b; h *= 1099511628211UL; }
        return (h >> 16).ToString("x12", System.Globalization.CultureInfo.InvariantCulture);
    }
}
