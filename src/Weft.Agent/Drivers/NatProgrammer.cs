using System.Text.Json.Nodes;
using Weft.Agent.Calculators;
using Weft.Model;
using Weft.Nftables;

namespace Weft.Agent.Drivers;

/// <summary>
/// natOutgoing: traffic from pools marked natOutgoing to anything outside every pool is masqueraded to the node's
/// address. The whole table is rebuilt in one nftables transaction (add, delete, re-add), so there is never a
/// moment with neither the old nor the new rules; it is only rewritten when the pool set changes. With the BPF
/// masquerade (<paramref name="masquerade"/> false) the table keeps only what connection tracking for policy needs
/// (the nftables policy dataplane), and nothing at all with policy off or the BPF policy dataplane: a node without
/// conntrack users pays no netfilter cost per packet.
/// </summary>
public sealed class NatProgrammer(int? tunnelPort = null, bool masquerade = true) : INatDriver
{
    public string Mode => "nftables";

    public const string Table = Ownership.NatTable;
    private string? _applied;

    public bool Apply(NatPools pools)
    {
        if (!masquerade) pools = pools with { Masquerading = [] };
        var (masq, cluster, key) = (pools.Masquerading, pools.Cluster, pools.Key);
        if (key == _applied) return false;
        using var nft = new Nft();
        // Connection tracking runs only for policy or for masquerading; untracking only pays where it runs.
        var tracked = pools.PolicyConntrack || masq.Count > 0;
        nft.Run(Build(masq, cluster, untrackPodToPod: !pools.PolicyConntrack, tunnelPort: tracked ? tunnelPort : null));
        _applied = key;
        return true;
    }

    /// <param name="untrackPodToPod">
    /// Only where policy does not use conntrack (off, or the BPF dataplane): pod-to-pod traffic then needs no connection tracking, so it is marked
    /// untracked and only flows that may be masqueraded pay for conntrack (measured: tracking every packet cost ~10-15%
    /// of VXLAN throughput here). With policy on, replies must be tracked (established) and this stays off.
    /// </param>
    /// <param name="tunnelPort">
    /// The VXLAN UDP port: the encapsulated packets between nodes are never tracked (only the inner packets are what
    /// policy and NAT look at), so they skip conntrack on the way out (output) and in (prerouting), as on a bare host.
    /// </param>
    internal static JsonObject Build(IReadOnlyList<Cidr> masq, IReadOnlyList<Cidr> cluster, bool untrackPodToPod = false, int? tunnelPort = null)
    {
        JsonObject T() => new() { ["family"] = "ip", ["name"] = Table };
        var cmds = new JsonArray(
            new JsonObject { ["add"] = new JsonObject { ["table"] = T() } },
            new JsonObject { ["delete"] = new JsonObject { ["table"] = T() } });
        untrackPodToPod &= masq.Count > 0 && cluster.Count > 0;
        if (masq.Count > 0 || tunnelPort is not null)
        {
            cmds.Add((JsonNode)new JsonObject { ["add"] = new JsonObject { ["table"] = T() } });
            foreach (var (name, members) in masq.Count > 0 ? new[] { ("masq-sources", masq), ("cluster", cluster) } : [])
            {
                cmds.Add((JsonNode)new JsonObject { ["add"] = new JsonObject { ["set"] = new JsonObject
                {
                    ["family"] = "ip", ["table"] = Table, ["name"] = name, ["type"] = "ipv4_addr", ["flags"] = new JsonArray("interval"),
                } } });
                cmds.Add((JsonNode)new JsonObject { ["add"] = new JsonObject { ["element"] = new JsonObject
                {
                    ["family"] = "ip", ["table"] = Table, ["name"] = name,
                    ["elem"] = new JsonArray(members.Select(c => (JsonNode?)new JsonObject { ["prefix"] = new JsonObject { ["addr"] = c.NetworkAddress.ToString(), ["len"] = c.PrefixLength } }).ToArray()),
                } } });
            }
            if (masq.Count > 0)
                cmds.Add((JsonNode)new JsonObject { ["add"] = new JsonObject { ["chain"] = new JsonObject
                {
                    ["family"] = "ip", ["table"] = Table, ["name"] = "postrouting", ["type"] = "nat", ["hook"] = "postrouting", ["prio"] = 100, ["policy"] = "accept",
                } } });
            if (untrackPodToPod || tunnelPort is not null)
                cmds.Add((JsonNode)new JsonObject { ["add"] = new JsonObject { ["chain"] = new JsonObject
                {
                    ["family"] = "ip", ["table"] = Table, ["name"] = "prerouting", ["type"] = "filter", ["hook"] = "prerouting", ["prio"] = -300, ["policy"] = "accept",
                } } });
            if (tunnelPort is not null)
                cmds.Add((JsonNode)new JsonObject { ["add"] = new JsonObject { ["chain"] = new JsonObject
                {
                    ["family"] = "ip", ["table"] = Table, ["name"] = "output", ["type"] = "filter", ["hook"] = "output", ["prio"] = -300, ["policy"] = "accept",
                } } });
            JsonObject Match(string op, string field, string set) => new()
            {
                ["match"] = new JsonObject { ["op"] = op, ["left"] = new JsonObject { ["payload"] = new JsonObject { ["protocol"] = "ip", ["field"] = field } }, ["right"] = "@" + set },
            };
            // One prefix: a mask and compare per packet, cheaper than an interval-set lookup.
            JsonObject InCluster(string field) => cluster.Count == 1
                ? new JsonObject
                {
                    ["match"] = new JsonObject
                    {
                        ["op"] = "==", ["left"] = new JsonObject { ["payload"] = new JsonObject { ["protocol"] = "ip", ["field"] = field } },
                        ["right"] = new JsonObject { ["prefix"] = new JsonObject { ["addr"] = cluster[0].NetworkAddress.ToString(), ["len"] = cluster[0].PrefixLength } },
                    },
                }
                : Match("==", field, "cluster");
            JsonObject UntrackTunnel(string chain) => new()
            {
                ["add"] = new JsonObject { ["rule"] = new JsonObject
                {
                    ["family"] = "ip", ["table"] = Table, ["chain"] = chain, ["comment"] = "weft vxlan between nodes untracked",
                    ["expr"] = new JsonArray(
                        new JsonObject { ["match"] = new JsonObject { ["op"] = "==", ["left"] = new JsonObject { ["payload"] = new JsonObject { ["protocol"] = "udp", ["field"] = "dport" } }, ["right"] = tunnelPort } },
                        new JsonObject { ["notrack"] = null }),
                } },
            };
            if (tunnelPort is not null)
            {
                cmds.Add((JsonNode)UntrackTunnel("prerouting"));
                cmds.Add((JsonNode)UntrackTunnel("output"));
            }
            if (masq.Count > 0)
                cmds.Add((JsonNode)new JsonObject { ["add"] = new JsonObject { ["rule"] = new JsonObject
            {
                ["family"] = "ip", ["table"] = Table, ["chain"] = "postrouting", ["comment"] = "weft natOutgoing",
                ["expr"] = new JsonArray(Match("==", "saddr", "masq-sources"), Match("!=", "daddr", "cluster"), new JsonObject { ["masquerade"] = null }),
            } } });
            if (untrackPodToPod)
                cmds.Add((JsonNode)new JsonObject { ["add"] = new JsonObject { ["rule"] = new JsonObject
                {
                    ["family"] = "ip", ["table"] = Table, ["chain"] = "prerouting", ["comment"] = "weft pod-to-pod untracked (policy off)",
                    ["expr"] = new JsonArray(InCluster("saddr"), InCluster("daddr"), new JsonObject { ["notrack"] = null }),
                } } });
        }
        return new JsonObject { ["nftables"] = cmds };
    }
}
