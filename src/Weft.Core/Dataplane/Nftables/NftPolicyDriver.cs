using System.Text.Json.Nodes;
using Weft.Nftables;

namespace Weft.Dataplane.Nftables;

/// <summary>What one apply did.</summary>
public sealed record NftApplyResult(bool Full, int Commands, TimeSpan Elapsed);

/// <summary>Runs one nftables transaction (so the driver can be exercised without a kernel).</summary>
public interface INftTransport
{
    void Run(JsonObject commands);
}

public sealed class LibNftTransport : INftTransport, IDisposable
{
    private readonly Nft _nft = new();
    public void Run(JsonObject commands) => _nft.Run(commands);
    public void Dispose() => _nft.Dispose();
}

/// <summary>
/// Applies a <see cref="PolicyRuleset"/> to the kernel in one transaction. The first apply (and any apply after a
/// failure) replaces the whole table, which is how a restarted agent adopts what it finds: old and new content
/// swap atomically, conntrack keeps established flows. Later applies send only the difference: new sets and
/// chains, element adds and deletes, changed chains flushed and refilled, stale chains and sets removed last,
/// once nothing refers to them.
/// </summary>
public sealed class NftPolicyDriver(INftTransport transport)
{
    public const string Family = "inet";
    private PolicyRuleset? _applied;

    public PolicyRuleset? Applied => _applied;

    public NftApplyResult Apply(PolicyRuleset desired)
    {
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var full = _applied is null;
        var cmds = full ? FullReplace(desired) : Diff(_applied!, desired);
        if (cmds.Count > 0)
        {
            try { transport.Run(new JsonObject { ["nftables"] = cmds }); }
            catch
            {
                _applied = null; // unknown kernel state: the next apply replaces everything
                throw;
            }
        }
        _applied = desired;
        return new NftApplyResult(full, cmds.Count, sw.Elapsed);
    }

    /// <summary>Removes the table (enforcement off).</summary>
    public void Remove()
    {
        transport.Run(new JsonObject { ["nftables"] = new JsonArray(Add("table", Table()), Del("table", Table())) });
        _applied = null;
    }

    private static JsonArray FullReplace(PolicyRuleset d)
    {
        var c = new JsonArray(Add("table", Table()), Del("table", Table()), Add("table", Table()));
        foreach (var set in d.Sets.Values) c.Add(Add("set", SetDecl(set)));
        foreach (var map in d.Maps.Values) c.Add(Add("map", MapDecl(map)));
        var regular = d.Chains.Values.Where(ch => ch.Hook is null).ToList();
        foreach (var ch in regular) c.Add(Add("chain", ChainDecl(ch)));
        foreach (var ch in regular) AddRules(c, ch);
        foreach (var set in d.Sets.Values) AddElements(c, set.Name, set.Elements);
        foreach (var map in d.Maps.Values) AddMapElements(c, map.Name, map.Elements);
        // Hooks last: by then everything they jump to exists (it is one transaction either way).
        foreach (var ch in d.Chains.Values.Where(ch => ch.Hook is not null))
        {
            c.Add(Add("chain", ChainDecl(ch)));
            AddRules(c, ch);
        }
        return c;
    }

    private static JsonArray Diff(PolicyRuleset a, PolicyRuleset d)
    {
        var c = new JsonArray();
        foreach (var set in d.Sets.Values)
            if (!a.Sets.TryGetValue(set.Name, out var old) || old.TypeText != set.TypeText)
            {
                if (old is not null) throw new InvalidOperationException($"set {set.Name} changed type"); // names encode the type
                c.Add(Add("set", SetDecl(set)));
            }
        foreach (var map in d.Maps.Values)
            if (!a.Maps.ContainsKey(map.Name)) c.Add(Add("map", MapDecl(map)));
        var added = d.Chains.Values.Where(ch => !a.Chains.ContainsKey(ch.Name)).ToList();
        foreach (var ch in added) c.Add(Add("chain", ChainDecl(ch)));
        // Set contents before the rules that use them change, so a new rule never sees a half-filled set.
        foreach (var set in d.Sets.Values)
        {
            if (a.Sets.TryGetValue(set.Name, out var same) && ReferenceEquals(same, set)) continue; // reused by the compiler: unchanged
            var old = a.Sets.GetValueOrDefault(set.Name)?.Elements ?? [];
            AddElements(c, set.Name, set.Elements.Where(e => !old.Contains(e)).ToList());
            DeleteElements(c, set.Name, old.Where(e => !set.Elements.Contains(e)).ToList());
        }
        foreach (var ch in added) AddRules(c, ch);
        foreach (var ch in d.Chains.Values)
            if (a.Chains.TryGetValue(ch.Name, out var old) && !ReferenceEquals(old, ch) && !old.SameAs(ch))
            {
                c.Add(Flush("chain", ChainRef(ch.Name)));
                AddRules(c, ch);
            }
        foreach (var map in d.Maps.Values)
        {
            var old = a.Maps.GetValueOrDefault(map.Name)?.Elements ?? new SortedDictionary<string, string>(StringComparer.Ordinal);
            var changed = map.Elements.Where(kv => old.TryGetValue(kv.Key, out var v) && v != kv.Value).Select(kv => kv.Key).ToList();
            var gone = old.Keys.Where(k => !map.Elements.ContainsKey(k)).ToList();
            if (gone.Count + changed.Count > 0)
                c.Add(Del("element", new JsonObject
                {
                    ["family"] = Family, ["table"] = NftPolicyCompiler.Table, ["name"] = map.Name,
                    ["elem"] = new JsonArray([.. gone.Concat(changed).Select(k => (JsonNode)JsonValue.Create(k))]),
                }));
            AddMapElements(c, map.Name, new SortedDictionary<string, string>(
                map.Elements.Where(kv => !old.ContainsKey(kv.Key) || changed.Contains(kv.Key)).ToDictionary(kv => kv.Key, kv => kv.Value), StringComparer.Ordinal));
        }
        var stale = a.Chains.Values.Where(ch => !d.Chains.ContainsKey(ch.Name)).ToList();
        foreach (var ch in stale) c.Add(Flush("chain", ChainRef(ch.Name)));
        foreach (var ch in stale) c.Add(Del("chain", ChainRef(ch.Name)));
        foreach (var set in a.Sets.Values.Where(s => !d.Sets.ContainsKey(s.Name)))
            c.Add(Del("set", new JsonObject { ["family"] = Family, ["table"] = NftPolicyCompiler.Table, ["name"] = set.Name }));
        return c;
    }

    private static JsonObject Table() => new() { ["family"] = Family, ["name"] = NftPolicyCompiler.Table };
    private static JsonNode Add(string what, JsonObject body) => new JsonObject { ["add"] = new JsonObject { [what] = body } };
    private static JsonNode Del(string what, JsonObject body) => new JsonObject { ["delete"] = new JsonObject { [what] = body } };
    private static JsonNode Flush(string what, JsonObject body) => new JsonObject { ["flush"] = new JsonObject { [what] = body } };
    private static JsonObject ChainRef(string name) => new() { ["family"] = Family, ["table"] = NftPolicyCompiler.Table, ["name"] = name };

    private static JsonObject SetDecl(NftSet s)
    {
        var o = new JsonObject { ["family"] = Family, ["table"] = NftPolicyCompiler.Table, ["name"] = s.Name, ["type"] = s.Type.DeepClone() };
        if (s.Interval) o["flags"] = new JsonArray("interval");
        return o;
    }
    private static JsonObject MapDecl(NftVerdictMap m) => new() { ["family"] = Family, ["table"] = NftPolicyCompiler.Table, ["name"] = m.Name, ["type"] = m.KeyType, ["map"] = "verdict" };

    private static JsonObject ChainDecl(NftChain ch)
    {
        var o = ChainRef(ch.Name);
        if (ch.Hook is not null)
        {
            o["type"] = "filter";
            o["hook"] = ch.Hook;
            o["prio"] = ch.Priority;
            o["policy"] = "accept";
        }
        return o;
    }

    private static void AddRules(JsonArray c, NftChain ch)
    {
        foreach (var r in ch.Rules)
            c.Add(Add("rule", new JsonObject { ["family"] = Family, ["table"] = NftPolicyCompiler.Table, ["chain"] = ch.Name, ["expr"] = JsonNode.Parse(r) }));
    }

    private static void AddElements(JsonArray c, string set, IReadOnlyCollection<string> elements)
    {
        if (elements.Count == 0) return;
        c.Add(Add("element", new JsonObject
        {
            ["family"] = Family, ["table"] = NftPolicyCompiler.Table, ["name"] = set, ["elem"] = new JsonArray([.. elements.Select(e => JsonNode.Parse(e)!)]),
        }));
    }

    private static void DeleteElements(JsonArray c, string set, IReadOnlyCollection<string> elements)
    {
        if (elements.Count == 0) return;
        c.Add(Del("element", new JsonObject
        {
            ["family"] = Family, ["table"] = NftPolicyCompiler.Table, ["name"] = set, ["elem"] = new JsonArray([.. elements.Select(e => JsonNode.Parse(e)!)]),
        }));
    }

    private static void AddMapElements(JsonArray c, string map, SortedDictionary<string, string> elements)
    {
        if (elements.Count == 0) return;
        c.Add(Add("element", new JsonObject
        {
            ["family"] = Family, ["table"] = NftPolicyCompiler.Table, ["name"] = map,
            ["elem"] = new JsonArray([.. elements.Select(kv => (JsonNode)new JsonArray(kv.Key, new JsonObject { ["jump"] = new JsonObject { ["target"] = kv.Value } }))]),
        }));
    }
}
