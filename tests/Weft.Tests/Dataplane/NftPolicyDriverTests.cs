using System.Net;
using Weft.Dataplane.Nftables;
using Weft.Model.Selectors;
using Weft.Netlink;
using Weft.Policy;
using Weft.Policy.Ir;
using Weft.Tests.Support;

namespace Weft.Tests.Dataplane;

/// <summary>
/// The policy driver against a real kernel: a sequence of incremental applies (policies, labels and endpoints
/// coming and going) must leave exactly the table a fresh full apply of the last state builds; the kernel accepts
/// every transaction; a refused transaction leaves the previous table in place.
/// </summary>
public sealed class NftPolicyDriverTests
{
    private static readonly string[] Apps = ["web", "db", "cache"];

    private static (PolicySet, PolicyWorld, List<EndpointInfo>) RandomState(Random rng, int step)
    {
        var endpoints = new List<EndpointInfo>();
        var count = rng.Next(1, 12);
        for (var i = 0; i < count; i++)
        {
            var ns = rng.Next(2) == 0 ? "a" : "b";
            var labels = new Dictionary<string, string> { ["app"] = Apps[rng.Next(Apps.Length)] };
            if (rng.Next(3) == 0) labels["tier"] = "gold";
            var addrs = new List<IPAddress> { IPAddress.Parse($"10.244.{rng.Next(0, 3)}.{i + 10}") };
            if (rng.Next(2) == 0) addrs.Add(IPAddress.Parse($"fd00::{i + 10:x}"));
            var ports = new List<NamedPort> { new("http", rng.Next(2) == 0 ? 80 : 8080, Protocols.Tcp), new("dns", 53, Protocols.Udp) };
            // Half the endpoints are on this node (they get chains), half elsewhere (they feed selector sets).
            endpoints.Add(new EndpointInfo(ns, $"p{i}", labels, addrs, ports, i % 2 == 0 ? "here" : "there", $"weft{i:x11}"));
        }
        var policies = new List<PolicyIr>();
        var n = rng.Next(0, 6);
        for (var i = 0; i < n; i++)
        {
            var app = Apps[rng.Next(Apps.Length)];
            var action = (RuleAction)rng.Next(0, 4);
            policies.Add(new PolicyIr
            {
                Id = $"np/a/p{i}", Dialect = "calico", Kind = "NetworkPolicy", Namespace = rng.Next(2) == 0 ? "a" : null, Name = $"p{i}",
                Tier = rng.Next(3) == 0 ? "security" : PolicySet.DefaultTier, Order = rng.Next(3) == 0 ? null : rng.Next(1, 100),
                Selector = Selector.Parse($"app == '{app}'"), AppliesToIngress = true, AppliesToEgress = rng.Next(2) == 0,
                Ingress =
                [
                    new PolicyRule { Action = action, Protocol = Protocols.Tcp, Source = new PeerMatch { Selector = Selector.Parse("has(tier)"), Namespace = "a" }, Destination = new PeerMatch { Ports = [PortMatch.Named("http"), PortMatch.Single(443)] }, Origin = "ingress[0]" },
                    new PolicyRule { Action = RuleAction.Allow, Source = new PeerMatch { Nets = [Weft.Model.Cidr.Parse("10.244.0.0/16"), Weft.Model.Cidr.Parse("fd00::/64")], NotNets = [Weft.Model.Cidr.Parse("10.244.2.0/24")] }, Origin = "ingress[1]" },
                ],
                Egress = [new PolicyRule { Action = RuleAction.Deny, Protocol = Protocols.Udp, Destination = new PeerMatch { NotSelector = Selector.Parse("app == 'db'"), Ports = [PortMatch.Range(1000, 2000)] }, Origin = "egress[0]" }],
            });
        }
        var world = new PolicyWorld([new NamespaceInfo("a", new Dictionary<string, string> { ["env"] = "prod" })], endpoints);
        return (new PolicySet(policies, new Dictionary<string, double> { ["security"] = 10 }), world, endpoints.Where(e => e.Node == "here").ToList());
    }

    /// <summary>The table as text, its sets, maps and chains sorted by name (listing order follows creation order; rule order is kept).</summary>
    private static string ListTable(string netns)
    {
        var text = TestEnv.Sh($"ip netns exec {netns} nft list table inet {NftPolicyCompiler.Table}");
        var blocks = new List<string>();
        var current = new System.Text.StringBuilder();
        foreach (var line in text.Split('\n'))
        {
            if (line.StartsWith("\tset ", StringComparison.Ordinal) || line.StartsWith("\tmap ", StringComparison.Ordinal) || line.StartsWith("\tchain ", StringComparison.Ordinal))
                current.Clear();
            current.Append(line).Append('\n');
            if (line == "\t}") blocks.Add(current.ToString());
        }
        Assert.NotEmpty(blocks);
        return string.Join("", blocks.Order(StringComparer.Ordinal));
    }

    [Fact]
    public void Incremental_applies_end_in_the_same_table_as_a_fresh_full_apply()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces");
        using var ns = new Netns("nftdiff", withUnderlay: false);
        var incremental = ns.Create("inc");
        var fresh = ns.Create("full");
        var rng = new Random(20261125);
        using var transport = NetNs.Run("/var/run/netns/" + incremental, () => new LibNftTransport());
        var driver = new NftPolicyDriver(transport);
        var compiler = new NftPolicyCompiler(new NftPolicyCompiler.Options());
        for (var step = 0; step < 25; step++)
        {
            var (policies, world, local) = RandomState(rng, step);
            var ruleset = compiler.Compile(policies, world, local);
            var result = driver.Apply(ruleset);
            Assert.Equal(step == 0, result.Full);
            using (var freshTransport = NetNs.Run("/var/run/netns/" + fresh, () => new LibNftTransport()))
                new NftPolicyDriver(freshTransport).Apply(ruleset);
            Assert.Equal(ListTable(fresh), ListTable(incremental));
        }
    }

    [Fact]
    public void A_refused_transaction_leaves_the_previous_table_and_the_next_apply_replaces_it_whole()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for network namespaces");
        using var ns = new Netns("nftfail", withUnderlay: false);
        var node = ns.Create("n");
        using var transport = NetNs.Run("/var/run/netns/" + node, () => new LibNftTransport());
        var driver = new NftPolicyDriver(transport);
        var compiler = new NftPolicyCompiler(new NftPolicyCompiler.Options());
        var (policies, world, local) = RandomState(new Random(7), 0);
        driver.Apply(compiler.Compile(policies, world, local));
        var before = ListTable(node);
        var broken = compiler.Compile(policies, world, local);
        broken.Chains["from-pod"] = broken.Chains["from-pod"] with { Rules = [.. broken.Chains["from-pod"].Rules, """[{"jump":{"target":"no-such-chain"}}]"""] };
        Assert.Throws<Weft.Nftables.NftException>(() => driver.Apply(broken));
        Assert.Equal(before, ListTable(node));
        Assert.Null(driver.Applied);
        var again = driver.Apply(compiler.Compile(policies, world, local));
        Assert.True(again.Full);
        Assert.Equal(before, ListTable(node));
    }

    [Fact]
    public void Ten_thousand_rules_over_a_thousand_endpoints_compile_to_shared_chains()
    {
        // Shape, not speed (bench/ measures speed): chains grow with distinct policy sets, not with endpoints.
        var endpoints = Enumerable.Range(0, 1000).Select(i => new EndpointInfo("a", $"p{i}",
            new Dictionary<string, string> { ["app"] = $"app{i % 10}" }, [IPAddress.Parse($"10.{i / 250}.{i % 250}.1")], [], "here", $"weft{i:x11}")).ToList();
        var policies = Enumerable.Range(0, 10).Select(p => new PolicyIr
        {
            Id = $"knp/a/p{p}", Dialect = "kubernetes", Kind = "NetworkPolicy", Namespace = "a", Name = $"p{p}", Order = 1000,
            Selector = Selector.Parse($"app == 'app{p}'"), AppliesToIngress = true,
            Ingress = Enumerable.Range(0, 1000).Select(r => new PolicyRule
            {
                Protocol = Protocols.Tcp, Source = new PeerMatch { Nets = [Weft.Model.Cidr.Parse($"172.{16 + r / 250}.{r % 250}.0/24")] },
                Destination = new PeerMatch { Ports = [PortMatch.Single(1000 + r)] }, Origin = $"ingress[{r}]",
            }).ToList(),
        }).ToList();
        var ruleset = new NftPolicyCompiler(new NftPolicyCompiler.Options()).Compile(new PolicySet(policies), new PolicyWorld([], endpoints), endpoints);
        Assert.True(ruleset.RuleCount >= 10_000);
        Assert.True(ruleset.Chains.Count < 50, $"{ruleset.Chains.Count} chains");
        Assert.Equal(1000, ruleset.Maps["ingress4"].Elements.Count);
    }
}
