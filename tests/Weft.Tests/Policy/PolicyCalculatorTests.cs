using System.Net.Sockets;
using Weft.Policy;
using Weft.Ctl.Commands;
using Weft.Model.Selectors;
using Weft.Policy.Ir;

namespace Weft.Tests.Policy;

/// <summary>
/// The policy calculator as Felix's calculation graph is tested: the same cluster state reached by updates in any
/// order, with updates delivered twice and the whole stream replayed (an agent restarting mid-way), gives the same
/// desired state: per endpoint and direction the tiers and policies in order, and every rule's peers resolved to
/// address sets and named ports to address·port pairs.
/// </summary>
public sealed class PolicyCalculatorTests
{
    public static TheoryData<string> Cases() => new(CalicoDialectTests.Cases.Keys);

    [Theory]
    [MemberData(nameof(Cases))]
    public void Updates_reordered_duplicated_and_replayed_give_the_same_desired_state(string name)
    {
        var documents = PolicyWorlds.Read(PolicyWorlds.Cluster, "cluster.yaml").Concat(PolicyWorlds.Read(CalicoDialectTests.Cases[name].Policies)).ToList();
        var expected = Desired(PolicyScenario.FromResources(documents));
        var random = new Random(name.GetHashCode(StringComparison.Ordinal));
        for (var round = 0; round < 5; round++)
        {
            var stream = documents.OrderBy(_ => random.Next()).ToList();
            // Some updates arrive twice, and after a "restart" the whole stream is delivered again in another order.
            stream.AddRange(stream.Where(_ => random.Next(3) == 0).ToList());
            stream.AddRange(documents.OrderBy(_ => random.Next()));
            Assert.Equal(expected, Desired(PolicyScenario.FromResources(stream)));
        }
    }

    [Fact]
    public void A_peer_resolves_to_the_addresses_its_selectors_pick_and_a_named_port_to_its_pairs()
    {
        var s = PolicyWorlds.Scenario("");
        var web = new PeerMatch { Selector = Selector.Parse("app == 'web'"), Namespace = "prod" };
        Assert.Equal(["10.1.1.2"], PolicyCalculator.SelectorAddresses(s.World, web, AddressFamily.InterNetwork).Select(a => a.ToString()));
        // notSelector: every endpoint it picks, in any namespace.
        var notWeb = new PeerMatch { NotSelector = Selector.Parse("app == 'web'") };
        Assert.Equal(["10.1.1.2", "10.1.2.2"], PolicyCalculator.SelectorAddresses(s.World, notWeb, AddressFamily.InterNetwork, negated: true).Select(a => a.ToString()));
        Assert.Equal([("10.1.1.1", 5432), ("10.1.2.1", 5433)], PolicyCalculator.NamedPortAddresses(s.World, "pg", Protocols.Tcp, AddressFamily.InterNetwork).Select(p => (p.Address.ToString(), p.Port)));
        Assert.Empty(PolicyCalculator.NamedPortAddresses(s.World, "pg", Protocols.Udp, AddressFamily.InterNetwork));
        Assert.Empty(PolicyCalculator.SelectorAddresses(s.World, web, AddressFamily.InterNetworkV6));
    }

    /// <summary>The calculator's answer for a whole cluster, as text to compare.</summary>
    private static List<string> Desired(PolicyScenario s)
    {
        var lines = new List<string>();
        foreach (var ep in s.Pods.OrderBy(p => p.Key, StringComparer.Ordinal))
            foreach (var direction in new[] { Direction.Ingress, Direction.Egress })
            {
                var tiers = PolicyCalculator.Applicable(s.Policies, s.World, ep, direction);
                lines.Add($"{ep.Key} {tiers.Key}");
                foreach (var p in tiers.Tiers.SelectMany(t => t.Policies))
                    foreach (var r in p.Rules(direction))
                        foreach (var peer in new[] { r.Source, r.Destination })
                        {
                            var family = AddressFamily.InterNetwork;
                            lines.Add($"  {p.Id} peers {string.Join(",", PolicyCalculator.SelectorAddresses(s.World, peer, family))}" +
                                      (peer.NotSelector is null ? "" : $" not {string.Join(",", PolicyCalculator.SelectorAddresses(s.World, peer, family, negated: true))}"));
                            foreach (var named in peer.Ports.Where(x => x.IsNamed))
                                lines.Add($"  {p.Id} {named.Name} {string.Join(",", PolicyCalculator.NamedPortAddresses(s.World, named.Name!, r.Protocol, family))}");
                        }
            }
        return lines;
    }
}
