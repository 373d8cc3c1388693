using System.Text.Json.Nodes;
using CsCheck;
using Weft.Ctl.Commands;
using Weft.Client.Documents;
using Weft.Policy;
using Weft.Policy.Ir;
using Weft.Resources;

namespace Weft.Tests.Policy;

/// <summary>
/// Hostile policy documents: every refusal is a <see cref="ResourceException"/> naming the document and the field,
/// and no input, however mangled, escapes as any other exception.
/// </summary>
public sealed class PolicyReaderBadInputTests
{
    private static string Indent(string spec) => string.Join("\n", spec.Split('\n').Select(l => "  " + l));

    private static string Knp(string spec) => $"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: x, namespace: prod}}\nspec:\n{Indent(spec)}\n";
    private static string Np(string spec) => $"apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {{name: x, namespace: prod}}\nspec:\n{Indent(spec)}\n";
    private static string Gnp(string spec) => $"apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: x}}\nspec:\n{Indent(spec)}\n";

    private const string KnpDoc = "bad.yaml, document 1 (NetworkPolicy prod/x)";
    private const string GnpDoc = "bad.yaml, document 1 (GlobalNetworkPolicy x)";

    /// <summary>(yaml, the document as named in the error, the field path and words the message must contain).</summary>
    public static TheoryData<string, string, string> Cases() => new()
    {
        // Kubernetes: unknown fields at every level
        { Knp("podSelector: {}\npodSelectr: {}"), KnpDoc, "unknown field spec.podSelectr" },
        { Knp("podSelector: {matchLabel: {app: x}}"), KnpDoc, "unknown field spec.podSelector.matchLabel" },
        { Knp("podSelector: {}\ningress:\n  - fromm: []"), KnpDoc, "unknown field spec.ingress[0].fromm" },
        { Knp("podSelector: {}\ningress:\n  - from: [{podSelectors: {}}]"), KnpDoc, "unknown field spec.ingress[0].from[0].podSelectors" },
        { Knp("podSelector: {}\ningress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/8, exept: []}}]"), KnpDoc, "unknown field spec.ingress[0].from[0].ipBlock.exept" },
        { Knp("podSelector: {}\ningress:\n  - ports: [{prot: TCP}]"), KnpDoc, "unknown field spec.ingress[0].ports[0].prot" },
        { Knp("podSelector: {}\negress:\n  - to: [{podSelector: {}}]\n    port: [80]"), KnpDoc, "unknown field spec.egress[0].port" },
        // Kubernetes: ports
        { Knp("podSelector: {}\ningress:\n  - ports: [{port: 0}]"), KnpDoc, "spec.ingress[0].ports[0].port: 0 is out of range" },
        { Knp("podSelector: {}\ningress:\n  - ports: [{port: 70000}]"), KnpDoc, "spec.ingress[0].ports[0].port: 70000 is out of range" },
        { Knp("podSelector: {}\ningress:\n  - ports: [{port: '70000'}]"), KnpDoc, "spec.ingress[0].ports[0].port: 70000 is out of range" },
        { Knp("podSelector: {}\ningress:\n  - ports: [{port: 80.5}]"), KnpDoc, "spec.ingress[0].ports[0].port: must be an integer" },
        { Knp("podSelector: {}\ningress:\n  - ports: [{port: 90, endPort: 80}]"), KnpDoc, "spec.ingress[0].ports[0].endPort: 80 is below port 90" },
        { Knp("podSelector: {}\ningress:\n  - ports: [{port: 90, endPort: 70000}]"), KnpDoc, "spec.ingress[0].ports[0].endPort: 70000 is out of range" },
        { Knp("podSelector: {}\ningress:\n  - ports: [{port: http, endPort: 90}]"), KnpDoc, "spec.ingress[0].ports[0].endPort: cannot be used with a named port" },
        { Knp("podSelector: {}\ningress:\n  - ports: [{endPort: 90}]"), KnpDoc, "spec.ingress[0].ports[0].endPort: needs a numeric port" },
        { Knp("podSelector: {}\ningress:\n  - ports: [{port: HTTP_1}]"), KnpDoc, "spec.ingress[0].ports[0].port: 'HTTP_1' is not a valid port name" },
        { Knp("podSelector: {}\negress:\n  - ports: [{protocol: ICMP, port: 80}]"), KnpDoc, "spec.egress[0].ports[0].protocol: 'ICMP' is not TCP, UDP or SCTP" },
        { Knp("podSelector: {}\ningress:\n  - ports: 80"), KnpDoc, "spec.ingress[0].ports: must be a list" },
        // Kubernetes: peers
        { Knp("podSelector: {}\ningress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]"), KnpDoc, "spec.ingress[0].from[0]: ipBlock cannot be combined with podSelector" },
        { Knp("podSelector: {}\ningress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.1.0.0/24]}}]"), KnpDoc, "spec.ingress[0].from[0].ipBlock.except[0]: 10.1.0.0/24 must be a strict subset of cidr 10.0.0.0/16" },
        { Knp("podSelector: {}\ningress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.0.0/16]}}]"), KnpDoc, "spec.ingress[0].from[0].ipBlock.except[0]" },
        { Knp("podSelector: {}\ningress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/16, except: ['fd00::/64']}}]"), KnpDoc, "spec.ingress[0].from[0].ipBlock.except[0]" },
        { Knp("podSelector: {}\negress:\n  - to: [{ipBlock: {cidr: 10.0.0.0/33}}]"), KnpDoc, "spec.egress[0].to[0].ipBlock.cidr" },
        { Knp("podSelector: {}\negress:\n  - to: [{ipBlock: {}}]"), KnpDoc, "spec.egress[0].to[0].ipBlock.cidr: is required" },
        { Knp("podSelector: {}\ningress:\n  - from: [{}]"), KnpDoc, "spec.ingress[0].from[0]: a peer needs podSelector, namespaceSelector or ipBlock" },
        { Knp("podSelector: {}\ningress: [5]"), KnpDoc, "spec.ingress[0]: must be a mapping" },
        // Kubernetes: selectors and types
        { Knp("podSelector: {matchLabels: {'bad key': x}}"), KnpDoc, "spec.podSelector.matchLabels: 'bad key' is not a valid label key" },
        { Knp("podSelector: {matchExpressions: [{key: app, operator: Is, values: [x]}]}"), KnpDoc, "spec.podSelector.matchExpressions[0].operator: 'Is'" },
        { Knp("podSelector: {matchExpressions: [{key: app, operator: In}]}"), KnpDoc, "spec.podSelector.matchExpressions[0].values: must not be empty" },
        { Knp("podSelector: {matchExpressions: [{key: app, operator: Exists, values: [x]}]}"), KnpDoc, "spec.podSelector.matchExpressions[0].values: must be empty" },
        { Knp("podSelector: {}\ningress:\n  - from: [{namespaceSelector: {matchLabels: {env: [a]}}}]"), KnpDoc, "spec.ingress[0].from[0].namespaceSelector.matchLabels.env: must be a string" },
        { Knp("podSelector: {}\npolicyTypes: [Both]"), KnpDoc, "spec.policyTypes[0]: 'Both' is not Ingress or Egress" },
        { Knp("policyTypes: [Ingress]"), KnpDoc, "spec.podSelector: is required" },
        // Calico: selectors
        { Gnp("selector: app = 'x'"), GnpDoc, "spec.selector: invalid selector 'app = 'x''" },
        { Gnp("namespaceSelector: has(env"), GnpDoc, "spec.namespaceSelector: invalid selector" },
        { Gnp("ingress:\n  - action: Allow\n    source: {selector: \"app == 'x' &&\"}"), GnpDoc, "spec.ingress[0].source.selector: invalid selector" },
        { Gnp("egress:\n  - action: Allow\n    destination: {notSelector: \"app in {'a' 'b'}\"}"), GnpDoc, "spec.egress[0].destination.notSelector: invalid selector" },
        { Gnp("ingress:\n  - action: Allow\n    source: {namespaceSelector: \"(env == 'x'\"}"), GnpDoc, "spec.ingress[0].source.namespaceSelector: invalid selector" },
        { Gnp("selector: 5"), GnpDoc, "spec.selector: must be a string" },
        // Calico: unknown fields at every level
        { Gnp("selectr: all()"), GnpDoc, "unknown field spec.selectr" },
        { Np("namespaceSelector: all()"), KnpDoc, "unknown field spec.namespaceSelector" },
        { Gnp("ingress:\n  - actoin: Allow"), GnpDoc, "unknown field spec.ingress[0].actoin" },
        { Gnp("ingress:\n  - action: Allow\n    source: {nots: []}"), GnpDoc, "unknown field spec.ingress[0].source.nots" },
        { Gnp("ingress:\n  - action: Allow\n    protocol: ICMP\n    icmp: {typ: 8}"), GnpDoc, "unknown field spec.ingress[0].icmp.typ" },
        // Calico: ports
        { Gnp("ingress:\n  - action: Allow\n    destination: {ports: [80]}"), GnpDoc, "spec.ingress[0].destination.ports: rules with ports must set protocol" },
        { Gnp("ingress:\n  - action: Allow\n    source: {notPorts: [80]}"), GnpDoc, "spec.ingress[0].source.notPorts: rules with ports must set protocol" },
        { Gnp("ingress:\n  - action: Allow\n    protocol: ICMP\n    destination: {ports: [80]}"), GnpDoc, "spec.ingress[0].destination.ports: rules with ports must set protocol" },
        { Gnp("ingress:\n  - action: Allow\n    protocol: TCP\n    destination: {ports: [70000]}"), GnpDoc, "spec.ingress[0].destination.ports[0]: 70000 is out of range" },
        { Gnp("ingress:\n  - action: Allow\n    protocol: TCP\n    destination: {ports: ['80:70000']}"), GnpDoc, "spec.ingress[0].destination.ports[0]: 70000 is out of range" },
        { Gnp("ingress:\n  - action: Allow\n    protocol: TCP\n    destination: {ports: ['90:80']}"), GnpDoc, "spec.ingress[0].destination.ports[0]: range 90:80 ends before it starts" },
        { Gnp("ingress:\n  - action: Allow\n    protocol: TCP\n    destination: {ports: ['80 to 90']}"), GnpDoc, "spec.ingress[0].destination.ports[0]: '80 to 90' is not a port" },
        { Gnp("ingress:\n  - action: Allow\n    protocol: TCP\n    destination: {ports: ['0:1023']}"), GnpDoc, "spec.ingress[0].destination.ports[0]: 0 is out of range (1-65535)" },
        { Gnp("ingress:\n  - action: Allow\n    protocol: TCP\n    destination: {ports: [-1]}"), GnpDoc, "spec.ingress[0].destination.ports[0]: -1 is out of range" },
        { Gnp("ingress:\n  - action: Allow\n    protocol: TCP\n    destination: {ports: [[80]]}"), GnpDoc, "spec.ingress[0].destination.ports[0]: must be a port number" },
        { Gnp("ingress:\n  - action: Allow\n    protocol: TCP\n    destination: {ports: 80}"), GnpDoc, "spec.ingress[0].destination.ports: must be a list" },
        // Calico: protocol and ICMP
        { Gnp("ingress:\n  - action: Allow\n    protocol: TCPX"), GnpDoc, "spec.ingress[0].protocol: '\"TCPX\"' is not TCP" },
        { Gnp("ingress:\n  - action: Allow\n    protocol: 256"), GnpDoc, "spec.ingress[0].protocol: '256' is not TCP" },
        { Gnp("ingress:\n  - action: Allow\n    notProtocol: 0"), GnpDoc, "spec.ingress[0].notProtocol: '0' is not TCP" },
        { Gnp("ingress:\n  - action: Allow\n    protocol: TCP\n    icmp: {type: 8}"), GnpDoc, "spec.ingress[0].icmp: needs protocol ICMP or ICMPv6" },
        { Gnp("ingress:\n  - action: Allow\n    notICMP: {type: 8}"), GnpDoc, "spec.ingress[0].notICMP: needs protocol ICMP or ICMPv6" },
        { Gnp("ingress:\n  - action: Allow\n    protocol: ICMP\n    icmp: {type: 255}"), GnpDoc, "spec.ingress[0].icmp.type: 255 is out of range" },
        { Gnp("ingress:\n  - action: Allow\n    protocol: ICMP\n    icmp: {code: 1}"), GnpDoc, "spec.ingress[0].icmp.code: needs a type" },
        { Gnp("ingress:\n  - action: Allow\n    protocol: ICMP\n    icmp: 8"), GnpDoc, "spec.ingress[0].icmp: must be a mapping" },
        // Calico: actions, types, nets, ipVersion, order
        { Gnp("ingress:\n  - action: Accept"), GnpDoc, "spec.ingress[0].action: 'Accept' is not Allow, Deny, Log or Pass" },
        { Gnp("ingress:\n  - action: allow"), GnpDoc, "spec.ingress[0].action: 'allow'" },
        { Gnp("egress:\n  - protocol: TCP"), GnpDoc, "spec.egress[0].action: is required" },
        { Gnp("types: [Egress]\ningress: [{action: Allow}]"), GnpDoc, "spec.ingress: has rules but types does not include Ingress" },
        { Gnp("types: [Ingress]\negress: [{action: Allow}]"), GnpDoc, "spec.egress: has rules but types does not include Egress" },
        { Gnp("types: [Ingress, Forward]"), GnpDoc, "spec.types[1]: 'Forward' is not Ingress or Egress" },
        { Gnp("egress: {action: Deny}"), GnpDoc, "spec.egress: must be a list" },
        { Gnp("ingress:\n  - action: Allow\n    source: {nets: [10.0.0.0/33]}"), GnpDoc, "spec.ingress[0].source.nets[0]" },
        { Gnp("ingress:\n  - action: Allow\n    destination: {notNets: 10.0.0.0/8}"), GnpDoc, "spec.ingress[0].destination.notNets: must be a list of strings" },
        { Gnp("ingress:\n  - action: Allow\n    ipVersion: 5"), GnpDoc, "spec.ingress[0].ipVersion: 5 is not 4 or 6" },
        { Gnp("ingress:\n  - action: Allow\n    ipVersion: 6\n    source: {nets: [10.0.0.0/8]}"), GnpDoc, "spec.ingress[0].ipVersion: 6 conflicts with net 10.0.0.0/8" },
        { Gnp("order: -1"), GnpDoc, "spec.order: -1 must not be negative" },
        { Gnp("order: first"), GnpDoc, "spec.order: must be a number" },
        { Gnp("ingress:\n  - action: Allow\n    http: {methods: [GET]}"), GnpDoc, "spec.ingress[0].http" },
        { Gnp("ingress:\n  - action: Allow\n    source: {serviceAccounts: {names: [a]}}"), GnpDoc, "spec.ingress[0].source.serviceAccounts" },
        { Gnp("serviceAccountSelector: role == 'x'"), GnpDoc, "spec.serviceAccountSelector" },
        { Gnp("doNotTrack: true"), GnpDoc, "spec.doNotTrack" },
        { Gnp("preDNAT: yes"), GnpDoc, "spec.preDNAT: must be true or false" },
        // Documents
        { "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: x, namespace: prod}\nspec: {}\n", "bad.yaml, document 1 (GlobalNetworkPolicy prod/x)", "metadata.namespace: GlobalNetworkPolicy is not namespaced" },
        { "apiVersion: projectcalico.org/v2\nkind: NetworkPolicy\nmetadata: {name: x, namespace: prod}\nspec: {}\n", KnpDoc, "apiVersion 'projectcalico.org/v2' is not supported for NetworkPolicy" },
        { "apiVersion: networking.k8s.io/v1\nkind: GlobalNetworkPolicy\nmetadata: {name: x}\nspec: {}\n", GnpDoc, "apiVersion 'networking.k8s.io/v1' is not supported for GlobalNetworkPolicy" },
        { "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: Bad_Name}\nspec: {}\n", "bad.yaml, document 1 (GlobalNetworkPolicy Bad_Name)", "metadata.name 'Bad_Name' is invalid" },
        { "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: x, namespace: Prod_1}\nspec: {}\n", "bad.yaml, document 1 (NetworkPolicy Prod_1/x)", "'Prod_1' is invalid" },
        { "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: x}\nspecs: {}\n", GnpDoc, "unknown top-level field 'specs'" },
        { "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: x}\n", GnpDoc, "spec is missing" },
        { "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: x}\nspec: [1]\n", GnpDoc, "spec is missing or not a mapping" },
        { "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: security}\nspec: {}\n", "bad.yaml, document 1 (Tier security)", "spec.order: is required" },
        { "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: security}\nspec: {order: 1, defaultAction: Pass}\n", "bad.yaml, document 1 (Tier security)", "spec.defaultAction" },
        { "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: prod}\nspec: {containers: [{name: c, ports: [{containerPort: 0}]}]}\n", "bad.yaml, document 1 (Pod prod/p)", "spec.containers[0].ports[0].containerPort: 0 is out of range" },
        { "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: prod}\nstatus: {podIP: 10.0.0.1/24}\n", "bad.yaml, document 1 (Pod prod/p)", "status.podIP: '10.0.0.1/24' is not an IP address" },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void Refusal_names_the_document_and_the_field(string yaml, string document, string expected)
    {
        var docs = YamlDocuments.Load(yaml, "bad.yaml");
        var e = Assert.Throws<ResourceException>(() => docs.Select(d => ResourceReader.Read(d.Doc, d.Source)).ToList());
        Assert.StartsWith(document + ":", e.Message, StringComparison.Ordinal);
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Refusal_in_a_later_document_names_that_document()
    {
        var yaml = Gnp("selector: all()") + "---\n" + Gnp("ingress:\n  - action: Allow\n    protocol: TCP\n    destination: {ports: [70000]}").Replace("name: x", "name: y", StringComparison.Ordinal);
        var docs = YamlDocuments.Load(yaml, "bad.yaml");
        var e = Assert.Throws<ResourceException>(() => docs.Select(d => ResourceReader.Read(d.Doc, d.Source)).ToList());
        Assert.StartsWith("bad.yaml, document 2 (GlobalNetworkPolicy y): spec.ingress[0].destination.ports[0]", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void The_valid_bases_of_the_property_test_are_accepted()
    {
        foreach (var b in Bases) Assert.NotNull(ResourceReader.Read((JsonObject)b.DeepClone(), new DocumentSource("base.yaml", 1)));
    }

    // ---- Property: mangled documents are refused with ResourceException, or read and evaluated without failure ----

    private static readonly JsonObject[] Bases = YamlDocuments.Load("""
        apiVersion: projectcalico.org/v3
        kind: GlobalNetworkPolicy
        metadata: {name: everything}
        spec:
          order: 10
          tier: default
          selector: app == 'database' && !has(legacy)
          namespaceSelector: env in {'prod', 'dev'}
          types: [Ingress, Egress]
          ingress:
            - action: Log
            - action: Deny
              protocol: TCP
              source: {selector: "app == 'web'", namespaceSelector: all(), ports: ["1:1023"]}
              destination: {notPorts: [22, pg]}
            - action: Allow
              protocol: ICMP
              icmp: {type: 8, code: 0}
              notICMP: {type: 3}
            - action: Pass
              ipVersion: 4
              notProtocol: UDP
              source: {nets: [10.0.0.0/8], notNets: [10.9.0.0/16], notSelector: has(quarantine)}
          egress:
            - action: Allow
              protocol: UDP
              destination: {ports: [53, "8000:8080"], nets: ["fd00::/64"]}
        ---
        apiVersion: projectcalico.org/v3
        kind: NetworkPolicy
        metadata: {name: ns-policy, namespace: prod}
        spec:
          selector: all()
          ingress:
            - action: Allow
              protocol: 6
              source: {selector: "tier in {\"a\", 'b'}"}
              destination: {ports: [http]}
        ---
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: k8s, namespace: prod}
        spec:
          podSelector:
            matchLabels: {app: database}
            matchExpressions: [{key: tier, operator: NotIn, values: [a, b]}, {key: legacy, operator: DoesNotExist}]
          policyTypes: [Ingress, Egress]
          ingress:
            - from:
                - podSelector: {matchLabels: {app: web}}
                  namespaceSelector: {matchExpressions: [{key: env, operator: In, values: [prod]}]}
                - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}
              ports: [{port: 5432}, {port: http, protocol: TCP}, {port: 8000, endPort: 8080, protocol: UDP}, {protocol: SCTP}]
          egress:
            - to: [{namespaceSelector: {}}]
            - ports: [{port: 53, protocol: UDP}]
        ---
        apiVersion: projectcalico.org/v3
        kind: Tier
        metadata: {name: security}
        spec: {order: 100}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: extra, namespace: prod, labels: {app: database}}
        spec: {containers: [{name: c, ports: [{name: pg, containerPort: 5432}, {containerPort: 53, protocol: UDP}]}]}
        status: {podIP: 10.1.9.9, podIPs: [{ip: 10.1.9.9}, {ip: "fd00::9"}]}
        ---
        apiVersion: v1
        kind: Namespace
        metadata: {name: qa, labels: {env: qa}}
        """, "bases.yaml").Select(d => d.Doc).ToArray();

    private static readonly Func<string, JsonNode?>[] Garbage =
    [
        _ => null, _ => 0, _ => -1, _ => 65536, _ => 70000, _ => 1.5, _ => 1e300, _ => long.MaxValue, _ => true, _ => false,
        _ => "", _ => "80:90", _ => "90:80", _ => "0:65535", _ => ":", _ => "all()", _ => "global()", _ => "app ==", _ => "has(",
        _ => "10.0.0.0/33", _ => "10.0.0.1", _ => "::/0", _ => "TCP", _ => "ICMP", _ => "UDPLite", _ => "Deny", _ => "Pass", _ => "Egress",
        _ => new JsonObject(), _ => new JsonArray(), _ => new JsonArray(1, "x", null), _ => new JsonObject { ["x"] = 1 },
        _ => new JsonObject { ["type"] = 8, ["code"] = 300 }, _ => new JsonArray(new JsonObject { ["action"] = "Allow" }),
        _ => new JsonObject { ["cidr"] = "10.0.0.0/8", ["except"] = new JsonArray("10.0.0.0/8") }, s => s, s => new JsonArray(s),
    ];

    private readonly record struct Mutation(int Op, int Slot, int Garbage, string Text, int Other);

    private static List<(JsonNode Parent, string? Key, int Index)> Slots(JsonNode root)
    {
        var slots = new List<(JsonNode, string?, int)>();
        void Walk(JsonNode n)
        {
            if (n is JsonObject o)
                foreach (var (k, v) in o.ToList())
                {
                    slots.Add((o, k, -1));
                    if (v is not null) Walk(v);
                }
            else if (n is JsonArray a)
                for (var i = 0; i < a.Count; i++)
                {
                    slots.Add((a, null, i));
                    if (a[i] is { } c) Walk(c);
                }
        }
        Walk(root);
        return slots;
    }

    private static JsonNode? ValueAt((JsonNode Parent, string? Key, int Index) s) => s.Key is null ? ((JsonArray)s.Parent)[s.Index] : ((JsonObject)s.Parent)[s.Key];

    private static void Set((JsonNode Parent, string? Key, int Index) s, JsonNode? value)
    {
        if (s.Key is null) ((JsonArray)s.Parent)[s.Index] = value;
        else ((JsonObject)s.Parent)[s.Key] = value;
    }

    private static void Apply(JsonObject doc, Mutation m)
    {
        var slots = Slots(doc);
        if (slots.Count == 0) return;
        var s = slots[m.Slot % slots.Count];
        switch (m.Op)
        {
            case 0: Set(s, Garbage[m.Garbage % Garbage.Length](m.Text)); break;
            case 1:
                if (s.Key is null) ((JsonArray)s.Parent).RemoveAt(s.Index);
                else ((JsonObject)s.Parent).Remove(s.Key);
                break;
            case 2:
                if (s.Parent is JsonArray arr) arr.Add(Garbage[m.Garbage % Garbage.Length](m.Text));
                else ((JsonObject)s.Parent)[m.Text.Length == 0 ? "extra" : m.Text] = Garbage[m.Garbage % Garbage.Length](m.Text);
                break;
            default:
                // Move a copy of another subtree here: right shapes in the wrong places.
                var other = ValueAt(slots[m.Other % slots.Count]);
                if (!ReferenceEquals(other, s.Parent)) Set(s, other?.DeepClone());
                break;
        }
    }

    private static readonly IReadOnlyList<Resource> ClusterResources = PolicyWorlds.Read(PolicyWorlds.Cluster, "cluster.yaml");

    /// <returns>True when the document was accepted (and then evaluated).</returns>
    private static bool ReadAndEvaluate(JsonObject doc)
    {
        try
        {
            var r = ResourceReader.Read(doc, new DocumentSource("fuzz.yaml", 1));
            var scenario = PolicyScenario.FromResources(ClusterResources.Append(r));
            PolicyCommands.Matrix(scenario, 80, Protocols.Tcp);
            PolicyCommands.Matrix(scenario, 53, Protocols.Udp);
            var e = new PolicyEvaluator(scenario.Policies, scenario.World);
            var a = scenario.Pods[0].Addresses[0];
            e.Evaluate(new Connection(a, scenario.Pods[^1].Addresses[0], Protocols.Icmp, null, null, 8, 0));
            e.Evaluate(new Connection(System.Net.IPAddress.Parse("10.9.0.1"), a, Protocols.Sctp, 1, 2));
            return true;
        }
        catch (ResourceException)
        {
            return false;
        }
        catch (Exception ex)
        {
            throw new InvalidOperationException($"{ex.GetType().Name} ({ex.Message}) for {doc.ToJsonString()}", ex);
        }
    }

    [Fact]
    public void Mutated_documents_throw_nothing_but_ResourceException()
    {
        var mutation = Gen.Select(Gen.Int[0, 3], Gen.Int[0, 10_000], Gen.Int[0, 1000], Gen.OneOf(Gen.String[0, 12], Gen.OneOfConst("80", "pg", "ingress", "selector", "app == 'x'", "10.0.0.0/8")), Gen.Int[0, 10_000])
            .Select((op, slot, g, text, other) => new Mutation(op, slot, g, text, other));
        var accepted = 0;
        Gen.Select(Gen.Int[0, Bases.Length - 1], mutation.Array[1, 6]).Sample((b, mutations) =>
        {
            var doc = (JsonObject)Bases[b].DeepClone();
            foreach (var m in mutations) Apply(doc, m);
            if (ReadAndEvaluate(doc)) Interlocked.Increment(ref accepted);
        }, iter: 4000);
        // Some mutants must survive the reader, or the evaluator half of the property is never exercised.
        Assert.InRange(accepted, 200, 3800);
    }

    [Fact]
    public void Garbage_text_as_YAML_throws_nothing_but_ResourceException()
    {
        var valid = string.Join("---\n", Bases.Select(b => b.ToJsonString()));
        var mangled = Gen.Select(Gen.Int[0, valid.Length - 1], Gen.Int[0, 40], Gen.String[0, 8]).Select((at, cut, insert) =>
            valid[..at] + insert + valid[Math.Min(valid.Length, at + cut)..]);
        Gen.OneOf(Gen.String, mangled, Gen.OneOfConst("*a", "&a [*a]", "- [", "{a: b", "!!binary x", "key: !!int x", ": :", "---\n---\n...", "a: &x 1\nb: *y"))
            .Sample(text =>
            {
                try
                {
                    foreach (var (doc, source) in YamlDocuments.Load(text, "fuzz.yaml"))
                        ReadAndEvaluate(doc);
                }
                catch (ResourceException)
                {
                }
            }, iter: 2000);
    }
}
