using System.Net;
using System.Text.Json;
using Weft.Policy;
using Weft.Policy.Ir;
using Weft.Tests.Support;
using static Weft.Tests.Policy.PolicyWorlds;

namespace Weft.Tests.Policy;

/// <summary>
/// Calico-dialect semantics, table-driven: each case is policy YAML applied to <see cref="PolicyWorlds.Cluster"/>
/// and the reachability matrices it must give. Expectations follow Calico's documented model: tiers in tier order,
/// policies by (order, name) with nil order last, first matching rule decides, Pass jumps to the next tier, Log goes
/// on, a tier whose applicable policies decide nothing drops, namespaced rule selectors stay in their namespace.
/// Matrix rows are "from", columns are "to", in the order prod/db prod/web prod/bare | dev/db dev/web | ops/tool.
/// </summary>
public sealed class CalicoDialectTests
{
    public sealed record Probe(int Port, string Protocol, string[] Expected);

    public sealed record Case(string Policies, params Probe[] Probes);

    private static Probe Tcp(int port, params string[] rows) => new(port, "TCP", rows);
    private static Probe Udp(int port, params string[] rows) => new(port, "UDP", rows);

    private static readonly string[] OnlyToolReachesWeb = ["x.x x. x", "xxx x. x", "x.x x. x", "x.x x. x", "x.x xx x", "xxx xx x"];
    private static readonly string[] ToolCannotReachWeb = ["xxx xx x", "xxx xx x", "xxx xx x", "xxx xx x", "xxx xx x", "x.x x. x"];
    private static readonly string[] DatabasesRefuseWeb = ["xxx xx x", ".xx .x x", "xxx xx x", "xxx xx x", ".xx .x x", "xxx xx x"];
    private static readonly string[] DatabasesOnlyFromProd = ["xxx xx x", "xxx xx x", "xxx xx x", ".xx xx x", ".xx .x x", ".xx .x x"];

    private const string SecurityTier = """
        apiVersion: projectcalico.org/v3
        kind: Tier
        metadata: {name: security}
        spec: {order: 100}
        ---

        """;

    public static readonly Dictionary<string, Case> Cases = new()
    {
        ["seed: deny-all-egress (examples/policies)"] = new(
            File.ReadAllText(Path.Combine(TestEnv.RepoRoot, "examples", "policies", "deny-all-egress.yaml")),
            Tcp(80, "x.. .. .", "xxx xx x", "xxx xx x", "... x. .", "xxx xx x", "xxx xx x"),
            Tcp(5432, "x.. .. .", "xxx xx x", "xxx xx x", "... x. .", "xxx xx x", "xxx xx x"),
            Udp(53, "x.. .. .", "xxx xx x", "xxx xx x", "... x. .", "xxx xx x", "xxx xx x")),

        ["order: Deny at 10 beats Allow at 20"] = new("""
            apiVersion: projectcalico.org/v3
            kind: GlobalNetworkPolicy
            metadata: {name: z-deny-tool}
            spec:
              order: 10
              selector: app == 'web'
              ingress:
                - action: Deny
                  source: {selector: "app == 'tool'"}
            ---
            apiVersion: projectcalico.org/v3
            kind: GlobalNetworkPolicy
            metadata: {name: a-allow-all}
            spec:
              order: 20
              selector: app == 'web'
              ingress: [{action: Allow}]
            """, Tcp(80, ToolCannotReachWeb)),

        ["order: Allow at 10 beats Deny at 20"] = new("""
            apiVersion: projectcalico.org/v3
            kind: GlobalNetworkPolicy
            metadata: {name: z-allow-tool}
            spec:
              order: 10
              selector: app == 'web'
              ingress:
                - action: Allow
                  source: {selector: "app == 'tool'"}
            ---
            apiVersion: projectcalico.org/v3
            kind: GlobalNetworkPolicy
            metadata: {name: a-deny-all}
            spec:
              order: 20
              selector: app == 'web'
              ingress: [{action: Deny}]
            """, Tcp(80, OnlyToolReachesWeb)),

        ["order: a policy without order runs after every ordered one, whatever its name"] = new("""
            apiVersion: projectcalico.org/v3
            kind: GlobalNetworkPolicy
            metadata: {name: a-deny-all}
            spec:
              selector: app == 'web'
              ingress: [{action: Deny}]
            ---
            apiVersion: projectcalico.org/v3
            kind: GlobalNetworkPolicy
            metadata: {name: z-allow-tool}
            spec:
              order: 500
              selector: app == 'web'
              ingress:
                - action: Allow
                  source: {selector: "app == 'tool'"}
            """, Tcp(80, OnlyToolReachesWeb)),

        ["order: equal orders run by name"] = new("""
            apiVersion: projectcalico.org/v3
            kind: GlobalNetworkPolicy
            metadata: {name: b-deny-all}
            spec:
              order: 5
              selector: app == 'web'
              ingress: [{action: Deny}]
            ---
            apiVersion: projectcalico.org/v3
            kind: GlobalNetworkPolicy
            metadata: {name: a-allow-tool}
            spec:
              order: 5
              selector: app == 'web'
              ingress:
                - action: Allow
                  source: {selector: "app == 'tool'"}
            """, Tcp(80, OnlyToolReachesWeb)),

        ["rules: Deny before Allow in one policy"] = new("""
            apiVersion: projectcalico.org/v3
            kind: GlobalNetworkPolicy
            metadata: {name: db}
            spec:
              selector: app == 'database'
              ingress:
                - action: Deny
                  source: {selector: app == 'web'}
                - action: Allow
            """, Tcp(80, DatabasesRefuseWeb)),

        ["rules: Allow before Deny in one policy"] = new("""
            apiVersion: projectcalico.org/v3
            kind: GlobalNetworkPolicy
            metadata: {name: db}
            spec:
              selector: app == 'database'
              ingress:
                - action: Allow
                - action: Deny
                  source: {selector: app == 'web'}
            """, Tcp(80, AllAllowed)),

        ["Log records and goes on to the next rule"] = new("""
            apiVersion: projectcalico.org/v3
            kind: GlobalNetworkPolicy
            metadata: {name: db}
            spec:
              selector: app == 'database'
              ingress:
                - action: Log
                - action: Deny
                  source: {selector: app == 'web'}
                - action: Log
                  source: {selector: app == 'tool'}
                - action: Allow
            """, Tcp(80, DatabasesRefuseWeb)),

        ["Log alone decides nothing: the end-of-tier drop"] = new("""
            apiVersion: projectcalico.org/v3
            kind: GlobalNetworkPolicy
            metadata: {name: db}
            spec:
              selector: app == 'database'
              ingress: [{action: Log}]
            """, Tcp(80, DatabasesIsolated)),

        ["types: Ingress with no rules isolates"] = new("""
            apiVersion: projectcalico.org/v3
            kind: GlobalNetworkPolicy
            metadata: {name: db}
            spec:
              selector: app == 'database'
              types: [Ingress]
            """, Tcp(80, DatabasesIsolated)),

        ["tiers: Pass skips to the next tier, where a Kubernetes policy decides"] = new(SecurityTier + """
            apiVersion: projectcalico.org/v3
            kind: GlobalNetworkPolicy
            metadata: {name: security.db-gate}
            spec:
              tier: security
              selector: app == 'database'
              ingress:
                - action: Pass
                  source: {selector: app == 'web'}
                - action: Deny
            ---
            apiVersion: networking.k8s.io/v1
            kind: NetworkPolicy
            metadata: {name: db-same-namespace, namespace: prod}
            spec:
              podSelector: {matchLabels: {app: database}}
              ingress: [{from: [{podSelector: {}}]}]
            """,
            // prod/web passes and the Kubernetes policy allows it; dev/web passes and is dropped at the end of the
            // default tier for prod/db, but nothing in the default tier selects dev/db, so the profile allows it.
            Tcp(80, "xxx .x x", "xxx xx x", ".xx .x x", ".xx xx x", ".xx xx x", ".xx .x x")),

        ["tiers: a tier whose policies match nothing drops before later tiers run"] = new(SecurityTier + """
            apiVersion: projectcalico.org/v3
            kind: GlobalNetworkPolicy
            metadata: {name: security.db-gate}
            spec:
              tier: security
              selector: app == 'database'
              ingress:
                - action: Allow
                  source: {selector: app == 'tool'}
            ---
            apiVersion: networking.k8s.io/v1
            kind: NetworkPolicy
            metadata: {name: allow-all, namespace: prod}
            spec:
              podSelector: {}
              ingress: [{}]
            """, Tcp(80, "xxx .x x", ".xx .x x", ".xx .x x", ".xx xx x", ".xx .x x", "xxx xx x")),

        ["tiers: Pass reaches a Kubernetes default-deny in the default tier"] = new(SecurityTier + """
            apiVersion: projectcalico.org/v3
            kind: GlobalNetworkPolicy
            metadata: {name: security.pass-all}
            spec:
              tier: security
              ingress: [{action: Pass}]
            ---
            apiVersion: networking.k8s.io/v1
            kind: NetworkPolicy
            metadata: {name: default-deny, namespace: prod}
            spec:
              podSelector: {}
              policyTypes: [Ingress]
            """, Tcp(80, "x.. xx x", ".x. xx x", "..x xx x", "... xx x", "... xx x", "... xx x")),

        ["tiers: Pass with no later tier falls through to the profile, which allows"] = new(SecurityTier + """
            apiVersion: projectcalico.org/v3
            kind: GlobalNetworkPolicy
            metadata: {name: security.pass-all}
            spec:
              tier: security
              selector: all()
              ingress: [{action: Pass}]
              egress: [{action: Pass}]
            """, Tcp(80, AllAllowed)),

        ["tiers: tier order beats policy order"] = new("""
            apiVersion: projectcalico.org/v3
            kind: Tier
            metadata: {name: early}
            spec: {order: 100}
            ---
            apiVersion: projectcalico.org/v3
            kind: Tier
            metadata: {name: late}
            spec: {order: 200}
            ---
            apiVersion: projectcalico.org/v3
            kind: GlobalNetworkPolicy
            metadata: {name: late.deny}
            spec:
              tier: late
              order: 1
              selector: app == 'database'
              ingress: [{action: Deny}]
            ---
            apiVersion: projectcalico.org/v3
            kind: GlobalNetworkPolicy
            metadata: {name: early.web}
            spec:
              tier: early
              order: 999
              selector: app == 'database'
              ingress:
                - action: Allow
                  source: {selector: app == 'web'}
                - action: Pass
            """, Tcp(80, "xxx .x x", "xxx xx x", ".xx .x x", ".xx xx x", "xxx xx x", ".xx .x x")),

        ["tiers: reordering the tiers puts the Deny first"] = new("""
            apiVersion: projectcalico.org/v3
            kind: Tier
            metadata: {name: early}
            spec: {order: 300}
            ---
            apiVersion: projectcalico.org/v3
            kind: Tier
            metadata: {name: late}
            spec: {order: 200}
            ---
            apiVersion: projectcalico.org/v3
            kind: GlobalNetworkPolicy
            metadata: {name: late.deny}
            spec:
              tier: late
              order: 1
              selector: app == 'database'
              ingress: [{action: Deny}]
            ---
            apiVersion: projectcalico.org/v3
            kind: GlobalNetworkPolicy
            metadata: {name: early.web}
            spec:
              tier: early
              order: 999
              selector: app == 'database'
              ingress:
                - action: Allow
                  source: {selector: app == 'web'}
                - action: Pass
            """, Tcp(80, DatabasesIsolated)),

        ["tiers: a tier with only egress policies does not drop ingress"] = new(SecurityTier + """
            apiVersion: projectcalico.org/v3
            kind: GlobalNetworkPolicy
            metadata: {name: security.egress-only}
            spec:
              tier: security
              selector: app == 'database'
              types: [Egress]
              egress: [{action: Allow}]
            """, Tcp(80, AllAllowed)),

        ["GlobalNetworkPolicy selects pods in every namespace"] = new("""
            apiVersion: projectcalico.org/v3
            kind: GlobalNetworkPolicy
            metadata: {name: web}
            spec:
              selector: app == 'web'
              types: [Ingress]
            """, Tcp(80, "x.x x. x", "xxx x. x", "x.x x. x", "x.x x. x", "x.x xx x", "x.x x. x")),

        ["GlobalNetworkPolicy namespaceSelector limits the pods it applies to"] = new("""
            apiVersion: projectcalico.org/v3
            kind: GlobalNetworkPolicy
            metadata: {name: web}
            spec:
              selector: app == 'web'
              namespaceSelector: env == 'dev'
              types: [Ingress]
            """, Tcp(80, "xxx x. x", "xxx x. x", "xxx x. x", "xxx x. x", "xxx xx x", "xxx x. x")),

        ["GlobalNetworkPolicy rule selector spans namespaces"] = new("""
            apiVersion: projectcalico.org/v3
            kind: GlobalNetworkPolicy
            metadata: {name: db}
            spec:
              selector: app == 'database'
              ingress:
                - action: Allow
                  source: {selector: app == 'web'}
            """, Tcp(80, "xxx .x x", "xxx xx x", ".xx .x x", ".xx xx x", "xxx xx x", ".xx .x x")),

        ["GlobalNetworkPolicy rule namespaceSelector"] = new("""
            apiVersion: projectcalico.org/v3
            kind: GlobalNetworkPolicy
            metadata: {name: db}
            spec:
              selector: app == 'database'
              ingress:
                - action: Allow
                  source: {namespaceSelector: env == 'prod'}
            """, Tcp(80, DatabasesOnlyFromProd)),

        ["NetworkPolicy selector applies only in its own namespace"] = new("""
            apiVersion: projectcalico.org/v3
            kind: NetworkPolicy
            metadata: {name: isolate, namespace: dev}
            spec:
              selector: all()
              types: [Ingress]
            """, Tcp(80, "xxx .. x", "xxx .. x", "xxx .. x", "xxx x. x", "xxx .x x", "xxx .. x")),

        ["NetworkPolicy rule selector stays in the policy's namespace"] = new("""
            apiVersion: projectcalico.org/v3
            kind: NetworkPolicy
            metadata: {name: db, namespace: prod}
            spec:
              selector: app == 'database'
              ingress:
                - action: Allow
                  source: {selector: app == 'web'}
            """, Tcp(80, "xxx xx x", "xxx xx x", ".xx xx x", ".xx xx x", ".xx xx x", ".xx xx x")),

        ["NetworkPolicy rule selector with namespaceSelector all() reaches every namespace"] = new("""
            apiVersion: projectcalico.org/v3
            kind: NetworkPolicy
            metadata: {name: db, namespace: prod}
            spec:
              selector: app == 'database'
              ingress:
                - action: Allow
                  source: {selector: app == 'web', namespaceSelector: all()}
            """, Tcp(80, "xxx xx x", "xxx xx x", ".xx xx x", ".xx xx x", "xxx xx x", ".xx xx x")),

        ["NetworkPolicy rule selector with a namespaceSelector for another namespace"] = new("""
            apiVersion: projectcalico.org/v3
            kind: NetworkPolicy
            metadata: {name: db, namespace: prod}
            spec:
              selector: app == 'database'
              ingress:
                - action: Allow
                  source: {selector: app == 'web', namespaceSelector: env == 'dev'}
            """, Tcp(80, "xxx xx x", ".xx xx x", ".xx xx x", ".xx xx x", "xxx xx x", ".xx xx x")),

        // libcalico-go (updateprocessors/rules.go, getEndpointSelector): a namespaced policy's rule is limited to its
        // namespace "as soon as any of the selector fields are used, including NotSelector".
        ["NetworkPolicy rule notSelector also stays in the policy's namespace"] = new("""
            apiVersion: projectcalico.org/v3
            kind: NetworkPolicy
            metadata: {name: db, namespace: prod}
            spec:
              selector: app == 'database'
              ingress:
                - action: Allow
                  source: {notSelector: app == 'web'}
            """, Tcp(80, "xxx xx x", ".xx xx x", "xxx xx x", ".xx xx x", ".xx xx x", ".xx xx x")),

        ["NetworkPolicy rule nets are not limited to the namespace"] = new("""
            apiVersion: projectcalico.org/v3
            kind: NetworkPolicy
            metadata: {name: db, namespace: prod}
            spec:
              selector: app == 'database'
              ingress:
                - action: Allow
                  source: {nets: [10.1.0.0/16]}
            """, Tcp(80, AllAllowed)),

        ["nets"] = new("""
            apiVersion: projectcalico.org/v3
            kind: GlobalNetworkPolicy
            metadata: {name: db}
            spec:
              selector: app == 'database'
              ingress:
                - action: Allow
                  source: {nets: [10.1.1.0/24]}
            """, Tcp(80, DatabasesOnlyFromProd)),

        ["notNets"] = new("""
            apiVersion: projectcalico.org/v3
            kind: GlobalNetworkPolicy
            metadata: {name: db}
            spec:
              selector: app == 'database'
              ingress:
                - action: Allow
                  source: {notNets: [10.1.1.0/24]}
            """, Tcp(80, "xxx .x x", ".xx .x x", ".xx .x x", "xxx xx x", "xxx xx x", "xxx xx x")),

        ["nets and notNets together"] = new("""
            apiVersion: projectcalico.org/v3
            kind: GlobalNetworkPolicy
            metadata: {name: db}
            spec:
              selector: app == 'database'
              ingress:
                - action: Allow
                  source: {nets: [10.1.0.0/16], notNets: [10.1.2.0/24]}
            """, Tcp(80, "xxx xx x", "xxx xx x", "xxx xx x", ".xx xx x", ".xx .x x", "xxx xx x")),

        ["egress to destination nets"] = new("""
            apiVersion: projectcalico.org/v3
            kind: GlobalNetworkPolicy
            metadata: {name: web-out}
            spec:
              selector: app == 'web'
              types: [Egress]
              egress:
                - action: Allow
                  destination: {nets: [10.1.1.1/32]}
            """, Tcp(80, "xxx xx x", "xx. .. .", "xxx xx x", "xxx xx x", "x.. .x .", "xxx xx x")),

        ["ports: one port, only for its protocol"] = new("""
            apiVersion: projectcalico.org/v3
            kind: GlobalNetworkPolicy
            metadata: {name: db}
            spec:
              selector: app == 'database'
              ingress:
                - action: Allow
                  protocol: TCP
                  destination: {ports: [80]}
            """, Tcp(80, AllAllowed), Tcp(81, DatabasesIsolated), Udp(80, DatabasesIsolated)),

        ["ports: a range 80:90 includes both ends"] = new("""
            apiVersion: projectcalico.org/v3
            kind: GlobalNetworkPolicy
            metadata: {name: db}
            spec:
              selector: app == 'database'
              ingress:
                - action: Allow
                  protocol: TCP
                  destination: {ports: ["80:90", 443]}
            """, Tcp(80, AllAllowed), Tcp(85, AllAllowed), Tcp(90, AllAllowed), Tcp(443, AllAllowed),
            Tcp(79, DatabasesIsolated), Tcp(91, DatabasesIsolated)),

        ["notPorts"] = new("""
            apiVersion: projectcalico.org/v3
            kind: GlobalNetworkPolicy
            metadata: {name: db}
            spec:
              selector: app == 'database'
              ingress:
                - action: Allow
                  protocol: TCP
                  destination: {notPorts: ["80:81"]}
            """, Tcp(80, DatabasesIsolated), Tcp(81, DatabasesIsolated), Tcp(82, AllAllowed)),

        ["source ports"] = new("""
            apiVersion: projectcalico.org/v3
            kind: GlobalNetworkPolicy
            metadata: {name: db}
            spec:
              selector: app == 'database'
              ingress:
                - action: Allow
                  protocol: TCP
                  source: {ports: ["32768:60999"]}
                - action: Deny
                  protocol: TCP
                  source: {ports: ["1:1023"]}
            """, Tcp(80, AllAllowed)),

        ["ports: a named port resolves on each destination pod"] = new("""
            apiVersion: projectcalico.org/v3
            kind: GlobalNetworkPolicy
            metadata: {name: pg}
            spec:
              selector: has(app)
              ingress:
                - action: Allow
                  protocol: TCP
                  destination: {ports: [pg]}
            """,
            // prod/db's pg is 5432, dev/db's is 5433; prod/bare has no app label, so nothing selects it.
            Tcp(5432, "x.x .. .", "xxx .. .", "x.x .. .", "x.x x. .", "x.x .x .", "x.x .. x"),
            Tcp(5433, "x.x x. .", ".xx x. .", "..x x. .", "..x x. .", "..x xx .", "..x x. x")),

        ["ports: a named port only matches its own protocol"] = new("""
            apiVersion: projectcalico.org/v3
            kind: GlobalNetworkPolicy
            metadata: {name: dns}
            spec:
              selector: app == 'web'
              ingress:
                - action: Allow
                  protocol: UDP
                  destination: {ports: [dns]}
            """,
            // dev/web declares no ports at all, so the rule cannot match there.
            Udp(53, "xxx x. x", "xxx x. x", "xxx x. x", "xxx x. x", "xxx xx x", "xxx x. x"), Tcp(53, "x.x x. x", "xxx x. x", "x.x x. x", "x.x x. x", "x.x xx x", "x.x x. x")),

        ["protocol"] = new("""
            apiVersion: projectcalico.org/v3
            kind: GlobalNetworkPolicy
            metadata: {name: db}
            spec:
              selector: app == 'database'
              ingress: [{action: Allow, protocol: UDP}]
            """, Tcp(80, DatabasesIsolated), Udp(80, AllAllowed)),

        ["protocol as a number"] = new("""
            apiVersion: projectcalico.org/v3
            kind: GlobalNetworkPolicy
            metadata: {name: db}
            spec:
              selector: app == 'database'
              ingress: [{action: Allow, protocol: 6}]
            """, Tcp(80, AllAllowed), Udp(80, DatabasesIsolated)),

        ["notProtocol"] = new("""
            apiVersion: projectcalico.org/v3
            kind: GlobalNetworkPolicy
            metadata: {name: db}
            spec:
              selector: app == 'database'
              ingress: [{action: Allow, notProtocol: UDP}]
            """, Tcp(80, AllAllowed), Udp(80, DatabasesIsolated)),

        ["Kubernetes and Calico: Calico order 100 Deny runs before the Kubernetes allow (order 1000)"] = new("""
            apiVersion: projectcalico.org/v3
            kind: NetworkPolicy
            metadata: {name: deny-web, namespace: prod}
            spec:
              order: 100
              selector: app == 'database'
              ingress:
                - action: Deny
                  source: {selector: app == 'web'}
            ---
            apiVersion: networking.k8s.io/v1
            kind: NetworkPolicy
            metadata: {name: db-from-anywhere, namespace: prod}
            spec:
              podSelector: {matchLabels: {app: database}}
              ingress: [{from: [{namespaceSelector: {}}]}]
            """,
            // The Calico rule's selector stays in prod, so dev/web falls through to the Kubernetes allow.
            Tcp(80, "xxx xx x", ".xx xx x", "xxx xx x", "xxx xx x", "xxx xx x", "xxx xx x")),

        ["Kubernetes and Calico: Calico order 2000 Deny runs after the Kubernetes allow"] = new("""
            apiVersion: projectcalico.org/v3
            kind: NetworkPolicy
            metadata: {name: deny-all, namespace: prod}
            spec:
              order: 2000
              selector: app == 'database'
              ingress: [{action: Deny}]
            ---
            apiVersion: networking.k8s.io/v1
            kind: NetworkPolicy
            metadata: {name: db-from-prod, namespace: prod}
            spec:
              podSelector: {matchLabels: {app: database}}
              ingress: [{from: [{podSelector: {}}]}]
            """, Tcp(80, "xxx xx x", "xxx xx x", "xxx xx x", ".xx xx x", ".xx xx x", ".xx xx x")),
    };

    public static TheoryData<string> CaseNames() => new(Cases.Keys);

    [Theory]
    [MemberData(nameof(CaseNames))]
    public void Scenario_gives_the_expected_matrices(string name)
    {
        var c = Cases[name];
        var scenario = Scenario(c.Policies);
        foreach (var probe in c.Probes)
            AssertMatrix(probe.Expected, Matrix(scenario, probe.Port, probe.Protocol), $"{name}: {probe.Protocol}/{probe.Port}");
    }

    // ---- ICMP: not a port protocol, so probed through the evaluator directly ----

    private static readonly IPAddress ProdWeb = IPAddress.Parse("10.1.1.2"), ProdDb = IPAddress.Parse("10.1.1.1");

    private static bool Icmp(PolicyEvaluator e, int? type, int? code) =>
        e.Evaluate(new Connection(ProdWeb, ProdDb, Protocols.Icmp, null, null, type, code)).Allowed;

    [Fact]
    public void Icmp_type_and_code_match()
    {
        var s = Scenario("""
            apiVersion: projectcalico.org/v3
            kind: GlobalNetworkPolicy
            metadata: {name: ping}
            spec:
              selector: app == 'database'
              ingress:
                - action: Allow
                  protocol: ICMP
                  icmp: {type: 8}
                - action: Allow
                  protocol: ICMP
                  icmp: {type: 3, code: 4}
            """);
        var e = new PolicyEvaluator(s.Policies, s.World);
        Assert.True(Icmp(e, 8, 0));
        Assert.True(Icmp(e, 3, 4));
        Assert.False(Icmp(e, 3, 1));
        Assert.False(Icmp(e, 0, 0));
        Assert.False(e.Evaluate(new Connection(ProdWeb, ProdDb, Protocols.Tcp, 40000, 8)).Allowed);
    }

    [Fact]
    public void NotICMP_excludes_one_type()
    {
        var s = Scenario("""
            apiVersion: projectcalico.org/v3
            kind: GlobalNetworkPolicy
            metadata: {name: ping}
            spec:
              selector: app == 'database'
              ingress:
                - action: Allow
                  protocol: ICMP
                  notICMP: {type: 8}
            """);
        var e = new PolicyEvaluator(s.Policies, s.World);
        Assert.False(Icmp(e, 8, 0));
        Assert.True(Icmp(e, 0, 0));
        Assert.True(Icmp(e, 3, 1));
    }

    [Fact]
    public void Traffic_from_outside_the_cluster_meets_only_the_destination_policy()
    {
        var s = Scenario("""
            apiVersion: projectcalico.org/v3
            kind: GlobalNetworkPolicy
            metadata: {name: db}
            spec:
              selector: app == 'database'
              ingress:
                - action: Allow
                  source: {nets: [192.0.2.0/24]}
                - action: Deny
                  source: {selector: all()}
                - action: Allow
            """);
        var e = new PolicyEvaluator(s.Policies, s.World);
        var allowed = e.Evaluate(new Connection(IPAddress.Parse("192.0.2.7"), ProdDb, Protocols.Tcp, 40000, 80));
        Assert.True(allowed.Allowed);
        Assert.Null(allowed.Egress);
        // selector all() needs an endpoint: an outside address skips that Deny and reaches the final Allow.
        Assert.True(e.Evaluate(new Connection(IPAddress.Parse("198.51.100.1"), ProdDb, Protocols.Tcp, 40000, 80)).Allowed);
        Assert.False(e.Evaluate(new Connection(ProdWeb, ProdDb, Protocols.Tcp, 40000, 80)).Allowed);
    }

    [Fact]
    public void Trace_names_the_deciding_policy_rule_and_the_Log_and_Pass_steps()
    {
        var s = Scenario(SecurityTier + """
            apiVersion: projectcalico.org/v3
            kind: GlobalNetworkPolicy
            metadata: {name: security.gate}
            spec:
              tier: security
              selector: app == 'database'
              ingress:
                - action: Log
                - action: Pass
            ---
            apiVersion: projectcalico.org/v3
            kind: NetworkPolicy
            metadata: {name: db, namespace: prod}
            spec:
              selector: app == 'database'
              ingress:
                - action: Deny
                  source: {selector: app == 'web'}
            """);
        var v = new PolicyEvaluator(s.Policies, s.World).Evaluate(new Connection(ProdWeb, ProdDb, Protocols.Tcp, 40000, 80));
        Assert.False(v.Allowed);
        var d = v.Deciding!;
        Assert.Equal(Direction.Ingress, d.Direction);
        Assert.Equal("NetworkPolicy prod/db", d.Policy!.Display);
        Assert.Equal("ingress[0]", d.Rule!.Origin);
        Assert.Contains(d.Steps, st => st.Contains("GlobalNetworkPolicy security.gate rule ingress[0]: Log", StringComparison.Ordinal));
        Assert.Contains(d.Steps, st => st.Contains("GlobalNetworkPolicy security.gate rule ingress[1]: Pass", StringComparison.Ordinal));
    }

    // ---- Selector grammar, through a policy's selector and through a rule's selector ----

    public static TheoryData<string, string> Selectors() => new()
    {
        { "app in {'web', 'tool'}", "prod/web dev/web ops/tool" },
        { "app not in {'web', 'tool'}", "prod/db prod/bare dev/db" },
        { "has(tier)", "prod/db prod/web dev/db" },
        { "!has(tier)", "prod/bare dev/web ops/tool" },
        { "all()", "prod/db prod/web prod/bare dev/db dev/web ops/tool" },
        { "app == 'database' && tier == 'backend'", "prod/db dev/db" },
        { "app == 'web' || role == 'admin'", "prod/web dev/web ops/tool" },
        { "!(app == 'web')", "prod/db prod/bare dev/db ops/tool" },
        { "app != 'web'", "prod/db prod/bare dev/db ops/tool" },
        { "!app == 'web'", "prod/db prod/bare dev/db ops/tool" },
        { "(app == 'web' || app == 'tool') && !has(tier)", "dev/web ops/tool" },
        { "app == \"web\" && tier == 'frontend'", "prod/web" },
        { "app in {\"database\", 'tool'} && !has(version)", "prod/db ops/tool" },
        // && binds tighter than ||: tool, or (web and frontend). Left-to-right would give prod/web only.
        { "app == 'tool' || app == 'web' && tier == 'frontend'", "prod/web ops/tool" },
        { "(app == 'tool' || app == 'web') && tier == 'frontend'", "prod/web" },
        { "app == 'web' && tier == 'frontend' || app == 'tool'", "prod/web ops/tool" },
        { "!has(app) || app == 'tool'", "prod/bare ops/tool" },
        { "!!has(role)", "ops/tool" },
        { "  app   ==   'web'  ", "prod/web dev/web" },
        { "projectcalico.org/namespace == 'dev'", "dev/db dev/web" },
        { "version starts with 'v' || app contains 'oo'", "dev/db ops/tool" },
    };

    private static IEnumerable<int> Expected(string pods) => pods.Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(p => Array.IndexOf(PolicyWorlds.Pods, p));

    [Theory]
    [MemberData(nameof(Selectors))]
    public void Policy_selector_picks_the_pods_it_isolates(string selector, string expectedPods)
    {
        var m = Matrix(Scenario($$"""
            apiVersion: projectcalico.org/v3
            kind: GlobalNetworkPolicy
            metadata: {name: isolate}
            spec:
              selector: {{JsonSerializer.Serialize(selector)}}
              types: [Ingress]
            """), 80, "TCP");
        var isolated = Enumerable.Range(0, PolicyWorlds.Pods.Length).Where(j => Enumerable.Range(0, PolicyWorlds.Pods.Length).Any(i => !m[i][j]));
        Assert.Equal(Expected(expectedPods), isolated);
    }

    [Theory]
    [MemberData(nameof(Selectors))]
    public void Rule_selector_picks_the_pods_it_allows(string selector, string expectedPods)
    {
        var m = Matrix(Scenario($$"""
            apiVersion: projectcalico.org/v3
            kind: GlobalNetworkPolicy
            metadata: {name: only}
            spec:
              ingress:
                - action: Allow
                  source: {selector: {{JsonSerializer.Serialize(selector)}}}
            """), 80, "TCP");
        var n = PolicyWorlds.Pods.Length;
        for (var i = 0; i < n; i++)
            Assert.True(Enumerable.Range(0, n).Where(j => j != i).All(j => m[i][j]) || Enumerable.Range(0, n).Where(j => j != i).All(j => !m[i][j]),
                $"{PolicyWorlds.Pods[i]} reaches some pods but not others");
        var allowed = Enumerable.Range(0, n).Where(i => m[i][(i + 1) % n]);
        Assert.Equal(Expected(expectedPods), allowed);
    }

    public static TheoryData<string, string> NamespaceSelectors() => new()
    {
        { "env in {'dev', 'ops'}", "dev/db dev/web ops/tool" },
        { "env not in {'prod'}", "dev/db dev/web ops/tool" },
        { "has(team)", "ops/tool" },
        { "!has(team)", "prod/db prod/web prod/bare dev/db dev/web" },
        { "kubernetes.io/metadata.name == 'ops' || projectcalico.org/name == \"dev\"", "dev/db dev/web ops/tool" },
        { "all()", "prod/db prod/web prod/bare dev/db dev/web ops/tool" },
    };

    [Theory]
    [MemberData(nameof(NamespaceSelectors))]
    public void GlobalNetworkPolicy_namespaceSelector_picks_the_namespaces(string selector, string expectedPods)
    {
        var m = Matrix(Scenario($$"""
            apiVersion: projectcalico.org/v3
            kind: GlobalNetworkPolicy
            metadata: {name: isolate}
            spec:
              namespaceSelector: {{JsonSerializer.Serialize(selector)}}
              types: [Ingress]
            """), 80, "TCP");
        var isolated = Enumerable.Range(0, PolicyWorlds.Pods.Length).Where(j => Enumerable.Range(0, PolicyWorlds.Pods.Length).Any(i => !m[i][j]));
        Assert.Equal(Expected(expectedPods), isolated);
    }
}
