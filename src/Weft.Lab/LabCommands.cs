using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using System.Text.Json.Nodes;
using Weft.Client;
using Weft.Client.Output;
using Weft.Resources;

namespace Weft.Lab;

public sealed record LabUpOptions(string Name, int Nodes, int PodsPerNode, string Backend, string Mode, string Datastore, string? TopologyFile, string Policy = "on", string Flows = "on", string Masquerade = "auto",
    string? PoolFile = null, string? NetConfFile = null, string? Dataplane = null, int NodeReleaseGrace = 60);

/// <summary>
/// `weftctl lab`: a real multi-node cluster on one machine. An underlay namespace with a bridge joins one
/// namespace per node (each running a real weft-agent); pods are namespaces built by the real weft plugin, exec'd
/// inside their node's namespace exactly as a runtime calls it. Nothing is created in the root namespace.
/// </summary>
public static class LabCommands
{
    private const string UnderlayPrefix = "198.51.100.";

    public static async Task<int> UpAsync(Terminal ctx, LabUpOptions o, CancellationToken ct)
    {
        ValidateName(o.Name);
        if (o.Nodes is < 1 or > 200) throw new ArgumentException($"--nodes {o.Nodes}: use 1 to 200");
        if (o.PodsPerNode is < 0 or > 50) throw new ArgumentException($"--pods-per-node {o.PodsPerNode}: use 0 to 50");
        if (o.Backend is not ("vxlan" or "host-gw")) throw new ArgumentException($"--backend {o.Backend}: use vxlan or host-gw");
        if (o.Mode is not ("routed" or "bridge")) throw new ArgumentException($"--mode {o.Mode}: use routed or bridge");
        if (o.Policy is not ("on" or "off")) throw new ArgumentException($"--policy {o.Policy}: use on or off");
        if (o.Flows is not ("on" or "off")) throw new ArgumentException($"--flows {o.Flows}: use on or off");
        if (o.Dataplane is not (null or "nftables" or "bpf")) throw new ArgumentException($"--dataplane {o.Dataplane}: use nftables or bpf");
        if (o.Masquerade is not ("auto" or "bpf" or "nftables")) throw new ArgumentException($"--masquerade {o.Masquerade}: use auto, bpf or nftables");
        if (o.NodeReleaseGrace < 0) throw new ArgumentException($"--node-release-grace {o.NodeReleaseGrace}: use 0 or more seconds");
        if (o.Datastore is not ("sqlite" or "etcd" or "kubernetes"))
            throw new ArgumentException($"--datastore {o.Datastore}: the lab runs sqlite, etcd (a 3-member cluster) or kubernetes (its own API server)");
        if (LabState.Load(o.Name) is not null || Shell.Run("ip", "netns", "list").Split('\n').Any(l => l.StartsWith(o.Name + "-", StringComparison.Ordinal)))
            throw new ArgumentException($"lab '{o.Name}' already exists; remove it with `weftctl lab down --name {o.Name}`");
        var dist = DistDir();
        var dir = LabState.DirFor(o.Name);
        // Flannel's net-conf.json picks the backend, as it does for flanneld; the agents read the file as written.
        var backendType = o.NetConfFile is null ? o.Backend : NetConfBackend(o.NetConfFile);
        var poolDocs = o.PoolFile is null ? null : Weft.Client.Documents.YamlDocuments.Resources(File.ReadAllText(o.PoolFile), o.PoolFile);
        if (poolDocs is not null && (poolDocs.Count == 0 || poolDocs.Any(r => r is not IPPoolResource)))
            throw new ArgumentException($"--pool {o.PoolFile}: give only projectcalico.org/v3 IPPool documents");
        var state = new LabState
        {
            Name = o.Name, Dir = dir, Backend = backendType, Mode = o.Mode, Policy = o.Policy, Flows = o.Flows, Masquerade = o.Masquerade, Dataplane = o.Dataplane,
            Datastore = o.Datastore switch
            {
                "etcd" => "etcd://" + string.Join(",", EtcdIps.Select(ip => ip + ":2379")),
                "kubernetes" => "kubernetes://" + Path.Combine(dir, "agent-kubeconfig"),
                _ => "sqlite://" + Path.Combine(dir, "weft.db"),
            },
            ControlPlane = o.Datastore is "etcd" or "kubernetes" ? o.Name + "-cp" : null,
            AdminDatastore = o.Datastore == "kubernetes" ? "kubernetes://" + Path.Combine(dir, "kubeconfig") : null,
            PodMtu = backendType == "vxlan" ? 1450 : 1500, Underlay = o.Name + "-ul", Gateway = o.Name + "-gw",
            NodeReleaseGrace = o.NodeReleaseGrace,
        };
        var total = Stopwatch.StartNew();
        try
        {
            state.Save();
            Step(ctx, $"underlay {state.Underlay} (bridge br0, {UnderlayPrefix}0/24) and gateway {state.Gateway} (fake internet 203.0.113.1)");
            AddNetns(state, state.Underlay);
            Shell.Ip("-n", state.Underlay, "link", "add", "br0", "type", "bridge");
            Shell.Ip("-n", state.Underlay, "link", "set", "br0", "up");
            AddNetns(state, state.Gateway);
            Shell.Ip("-n", state.Gateway, "link", "add", "eth0", "type", "veth", "peer", "name", "gw0", "netns", state.Underlay);
            Shell.Ip("-n", state.Underlay, "link", "set", "gw0", "master", "br0", "up");
            Shell.Ip("-n", state.Gateway, "addr", "add", UnderlayPrefix + "1/24", "dev", "eth0");
            Shell.Ip("-n", state.Gateway, "link", "set", "eth0", "up");
            Shell.Ip("-n", state.Gateway, "addr", "add", "203.0.113.1/32", "dev", "lo");

            if (o.Datastore == "etcd") await StartEtcdAsync(ctx, state, ct).ConfigureAwait(false);
            if (o.Datastore == "kubernetes") await StartApiServerAsync(ctx, state, dist, ct).ConfigureAwait(false);
            Step(ctx, "datastore " + state.Datastore);
            if (o.NetConfFile is not null)
            {
                state.NetConf = Path.Combine(dir, "net-conf.json");
                File.Copy(o.NetConfFile, state.NetConf, overwrite: true);
            }
            var pool = $"apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {{name: lab-ipv4}}\nspec: {{cidr: 10.244.0.0/16, blockSize: 26, natOutgoing: true, vxlanMode: {(backendType == "vxlan" ? "Always" : "Never")}}}\n";
            // With a net-conf.json and no --pool, the agents create the pool from its Network, as Weft does for Flannel users.
            if (poolDocs is not null || o.NetConfFile is null)
                using (var store = Weft.Datastore.DatastoreFactory.Open(state.CtlDatastore))
                    await new ResourceService(store).ApplyAsync(poolDocs ?? Weft.Client.Documents.YamlDocuments.Resources(pool, "lab pool"), ct).ConfigureAwait(false);

            for (var i = 1; i <= o.Nodes; i++)
            {
                var node = new LabNode { Name = $"node-{i}", Netns = $"{o.Name}-node-{i}", UnderlayIp = UnderlayPrefix + (10 + i), Socket = Path.Combine(dir, $"node-{i}.sock") };
                AddNetns(state, node.Netns);
                Shell.Ip("-n", state.Underlay, "link", "add", $"n{i}", "type", "veth", "peer", "name", "eth0", "netns", node.Netns);
                Shell.Ip("-n", state.Underlay, "link", "set", $"n{i}", "master", "br0", "up");
                Shell.Ip("-n", node.Netns, "addr", "add", node.UnderlayIp + "/24", "dev", "eth0");
                Shell.Ip("-n", node.Netns, "link", "set", "eth0", "up");
                Shell.Ip("-n", node.Netns, "route", "add", "default", "via", UnderlayPrefix + "1");
                state.Nodes.Add(node);
                state.Save();
            }
            if (state.AdminDatastore is not null) await RegisterKubeNodesAsync(state, ct).ConfigureAwait(false);
            Step(ctx, $"{o.Nodes} node(s); starting weft-agent ({backendType}{(o.NetConfFile is null ? "" : ", from net-conf.json")}) in each");
            // A private bpffs instance: the agents' pinned BPF state belongs to this lab and goes with `lab down`.
            try { Weft.Bpf.BpfFs.Mount(state.BpfDir); }
            catch (Weft.Bpf.BpfException e) { ctx.Err.WriteLine($"warning: {e.Message}; agents fall back to nftables masquerade"); }
            foreach (var node in state.Nodes)
            {
                node.AgentPid = StartAgent(state, node, dist);
                state.Save();
            }
            await Task.WhenAll(state.Nodes.Select(n => WaitHealthyAsync(state, n, TimeSpan.FromSeconds(60), ct))).ConfigureAwait(false);

            var (namespaces, pods) = o.TopologyFile is null ? Topology.Default(o.Name, state.Nodes, o.PodsPerNode) : Topology.Load(o.Name, o.TopologyFile, state.Nodes);
            state.K8sNamespaces.AddRange(namespaces);
            // Labels and named ports reach the agents as v1 Namespace and Pod documents, before any pod exists, so a
            // new pod is never enforced without its labels (the kubelet/API server ordering in a real cluster).
            using (var store = Weft.Datastore.DatastoreFactory.Open(state.CtlDatastore))
                await new ResourceService(store).ApplyAsync(
                    namespaces.Select((n, i) => (Resource)new NamespaceResource(new Weft.Policy.NamespaceInfo(n.Name, n.Labels), NamespaceDocument(n), new DocumentSource("lab topology", i + 1)))
                        .Concat(pods.Select((p, i) => (Resource)new PodResource(PodDocument(p), PodJson(p), new DocumentSource("lab topology", namespaces.Count + i + 1)))).ToList(), ct).ConfigureAwait(false);
            Step(ctx, $"{pods.Count} pod(s) through the weft CNI plugin ({o.Mode} mode, MTU {state.PodMtu})");
            foreach (var pod in pods)
            {
                state.Pods.Add(pod);
                await AddPodAsync(state, pod, dist, ct).ConfigureAwait(false);
                state.Save();
            }
            await WaitPolicySyncedAsync(state, TimeSpan.FromSeconds(30), ct).ConfigureAwait(false);
            Step(ctx, $"lab '{o.Name}' is up in {total.Elapsed.TotalSeconds:0.0} s");
            Status(ctx, state, "table");
            return 0;
        }
        catch
        {
            await ctx.Err.WriteLineAsync($"lab up failed; removing everything of lab '{o.Name}'").ConfigureAwait(false);
            Remove(state);
            throw;
        }
    }

    private static readonly string[] EtcdIps = [UnderlayPrefix + "2", UnderlayPrefix + "3", UnderlayPrefix + "4"];
    private const int ApiServerPort = 6443;

    /// <summary>The control-plane namespace `&lt;lab&gt;-cp` on the underlay bridge, holding <paramref name="ips"/>.</summary>
    private static void AddControlPlane(LabState state, IEnumerable<string> ips)
    {
        var cp = state.ControlPlane!;
        AddNetns(state, cp);
        Shell.Ip("-n", cp, "link", "set", "lo", "up");
        Shell.Ip("-n", state.Underlay, "link", "add", "cp0", "type", "veth", "peer", "name", "eth0", "netns", cp);
        Shell.Ip("-n", state.Underlay, "link", "set", "cp0", "master", "br0", "up");
        foreach (var ip in ips) Shell.Ip("-n", cp, "addr", "add", ip + "/24", "dev", "eth0");
        Shell.Ip("-n", cp, "link", "set", "eth0", "up");
    }

    /// <summary>
    /// The kubernetes datastore's control plane: the lab's API server (LabApiServer, run as `weftctl lab apiserver`) in
    /// `&lt;lab&gt;-cp` at 198.51.100.2:6443, a kubeconfig with its token in the lab's directory (what agents, the plugin
    /// and weftctl use), and Weft's CRDs created through it first, as `kubectl apply -f deploy/weft.yaml` does.
    /// </summary>
    private static async Task StartApiServerAsync(Terminal ctx, LabState state, string dist, CancellationToken ct)
    {
        var cp = state.ControlPlane!;
        var ip = EtcdIps[0];
        Step(ctx, $"API server in {cp} (https://{ip}:{ApiServerPort})");
        AddControlPlane(state, [ip]);
        var kubeconfig = Path.Combine(state.Dir, "kubeconfig");
        var agentKubeconfig = Path.Combine(state.Dir, "agent-kubeconfig");
        var caPem = LabCertificates.Write(state.Dir, ip);
        // Two users: the lab's admin (weftctl, kubectl) and the weft-agent service account (agents, the plugin),
        // which the server limits to deploy/weft.yaml's ClusterRole: a call the role lacks fails the lab.
        foreach (var (file, user) in new[] { (kubeconfig, "admin"), (agentKubeconfig, "weft-agent") })
        {
            var token = Convert.ToHexString(System.Security.Cryptography.RandomNumberGenerator.GetBytes(16)).ToLowerInvariant();
            File.WriteAllText(file, $"apiVersion: v1\nkind: Config\nclusters:\n- name: {state.Name}\n" +
                                    $"  cluster: {{server: \"https://{ip}:{ApiServerPort}\", certificate-authority-data: {Convert.ToBase64String(System.Text.Encoding.ASCII.GetBytes(caPem))}}}\n" +
                                    $"users:\n- name: {user}\n  user: {{token: \"{token}\"}}\ncontexts:\n- name: {user}@{state.Name}\n  context: {{cluster: {state.Name}, user: {user}}}\n" +
                                    $"current-context: {user}@{state.Name}\n");
        }
        state.ApiServerPid = Shell.StartDetached(cp, Path.Combine(state.Dir, "apiserver.log"), Path.Combine(dist, "weftctl"),
            "lab", "apiserver", "--listen", $"{ip}:{ApiServerPort}", "--token-file", kubeconfig, "--agent-token-file", agentKubeconfig);
        state.Save();
        using var connection = Weft.Kubernetes.KubeConnection.Open(state.CtlDatastore);
        var sw = Stopwatch.StartNew();
        var last = "no answer";
        while (true)
        {
            if (!Shell.IsRunning(state.ApiServerPid, "weftctl"))
                throw new LabException("the lab's API server exited: " + string.Join("\n", File.ReadLines(Path.Combine(state.Dir, "apiserver.log")).TakeLast(5)));
            if (sw.Elapsed > TimeSpan.FromSeconds(30)) throw new LabException($"the lab's API server in {cp} not ready after 30 s: {last}");
            try
            {
                using var request = new HttpRequestMessage(HttpMethod.Get, new Uri(connection.Server, "/api"));
                await connection.AuthorizeAsync(request, ct).ConfigureAwait(false);
                using var response = await connection.Http.SendAsync(request, ct).ConfigureAwait(false);
                if (response.IsSuccessStatusCode) break;
                last = $"{(int)response.StatusCode} {response.ReasonPhrase}";
            }
            catch (HttpRequestException e) { last = e.Message; }
            await Task.Delay(50, ct).ConfigureAwait(false);
        }
        foreach (var crd in LabApiServer.WeftCrds())
        {
            using var request = new HttpRequestMessage(HttpMethod.Post, new Uri(connection.Server, "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"))
            {
                Content = new StringContent(crd.ToJsonString(), System.Text.Encoding.UTF8, "application/json"),
            };
            await connection.AuthorizeAsync(request, ct).ConfigureAwait(false);
            using var response = await connection.Http.SendAsync(request, ct).ConfigureAwait(false);
            if (!response.IsSuccessStatusCode)
                throw new LabException($"creating CRD {crd["metadata"]?["name"]}: {(int)response.StatusCode} {await response.Content.ReadAsStringAsync(ct).ConfigureAwait(false)}");
        }
        Step(ctx, $"API server ready with Weft's CRDs in {sw.Elapsed.TotalSeconds:0.0} s; kubeconfig {kubeconfig}");
    }

    /// <summary>
    /// `weftctl lab apiserver` (in the control-plane namespace): serves until stopped. The admin kubeconfig's token may
    /// do anything; the agent kubeconfig's only what deploy/weft.yaml's weft-agent ClusterRole allows.
    /// </summary>
    public static async Task<int> ApiServerAsync(string listen, string kubeconfig, string? agentKubeconfig, CancellationToken ct)
    {
        static string TokenOf(string file) => File.ReadLines(file).Select(l => l.Trim()).Where(l => l.StartsWith("user: {token:", StringComparison.Ordinal))
            .Select(l => l.Split('"')[1]).FirstOrDefault() ?? throw new ArgumentException($"{file} has no token");
        var dir = Path.GetDirectoryName(kubeconfig)!;
        using var certificate = LabCertificates.Server(dir);
        await using var server = new LabApiServer(listen: System.Net.IPEndPoint.Parse(listen), certificate: certificate) { RequiredToken = TokenOf(kubeconfig) };
        if (agentKubeconfig is not null) server.Bind(TokenOf(agentKubeconfig), "system:serviceaccount:weft-system:weft-agent", LabApiServer.WeftAgentRole());
        server.OnForbidden = m => Console.Error.WriteLine("403 " + m);
        try { await Task.Delay(Timeout.Infinite, ct).ConfigureAwait(false); }
        catch (OperationCanceledException) { }
        return 0;
    }

    /// <summary>
    /// A 3-member etcd in the control-plane namespace `&lt;lab&gt;-cp`, one address each on its leg into the underlay
    /// bridge, so agents and the plugin reach it from the node namespaces exactly as they would a real cluster's.
    /// </summary>
    private static async Task StartEtcdAsync(Terminal ctx, LabState state, CancellationToken ct)
    {
        const string etcd = "/usr/bin/etcd";
        if (!File.Exists(etcd)) throw new LabException($"{etcd} is missing: run scripts/install-deps.sh (Debian package etcd-server)");
        var cp = state.ControlPlane!;
        Step(ctx, $"etcd: 3 members in {cp} ({string.Join(", ", EtcdIps)})");
        AddControlPlane(state, EtcdIps);
        var cluster = string.Join(",", EtcdIps.Select((ip, i) => $"etcd-{i + 1}=http://{ip}:2380"));
        for (var i = 0; i < EtcdIps.Length; i++)
        {
            var (name, ip) = ($"etcd-{i + 1}", EtcdIps[i]);
            var member = new LabEtcdMember { Name = name, Ip = ip, DataDir = Path.Combine(state.Dir, name) };
            state.Etcd.Add(member);
            member.Pid = Shell.StartDetached(cp, Path.Combine(state.Dir, name + ".log"), etcd,
                "--name", name, "--data-dir", member.DataDir,
                "--listen-client-urls", $"http://{ip}:2379", "--advertise-client-urls", $"http://{ip}:2379",
                "--listen-peer-urls", $"http://{ip}:2380", "--initial-advertise-peer-urls", $"http://{ip}:2380",
                "--initial-cluster", cluster, "--initial-cluster-state", "new", "--initial-cluster-token", "weft-lab-" + state.Name,
                "--max-txn-ops", "4096", // one `weftctl apply` is one transaction, and a lab topology can hold hundreds of documents
                "--logger", "zap", "--log-outputs", "stderr");
            state.Save();
        }
        var sw = Stopwatch.StartNew();
        using var store = Weft.Datastore.DatastoreFactory.Open(state.CtlDatastore + "&timeout=1");
        string last = "no answer";
        while (sw.Elapsed < TimeSpan.FromSeconds(30))
        {
            foreach (var m in state.Etcd)
                if (!Shell.IsRunning(m.Pid, "etcd"))
                {
                    var log = Path.Combine(state.Dir, m.Name + ".log");
                    throw new LabException($"etcd member {m.Name} exited: {(File.Exists(log) ? string.Join("\n", File.ReadLines(log).TakeLast(5)) : "no log")}");
                }
            try
            {
                await store.RevisionAsync(ct).ConfigureAwait(false);
                Step(ctx, $"etcd ready in {sw.Elapsed.TotalSeconds:0.0} s");
                return;
            }
            catch (Weft.Datastore.DatastoreUnavailableException e) { last = e.Message; }
            await Task.Delay(50, ct).ConfigureAwait(false);
        }
        throw new LabException($"etcd in {cp} not ready after 30 s: {last}");
    }

    private static async Task AddPodAsync(LabState state, LabPod pod, string dist, CancellationToken ct)
    {
        AddNetns(state, pod.Netns);
        Shell.Ip("-n", pod.Netns, "link", "set", "lo", "up");
        var node = state.Nodes.First(n => n.Name == pod.Node);
        Topology.PinnedAddresses(pod); // a malformed pin is the lab's error, named before any ADD
        // What kubelet passes: the pod's name. A pinned address (Calico's ipAddrs annotation) the plugin reads from the
        // Pod document, applied before any ADD, as Calico's plugin reads it from the API.
        var args = $"IgnoreUnknown=1;K8S_POD_NAMESPACE={pod.Namespace};K8S_POD_NAME={pod.Name};K8S_POD_INFRA_CONTAINER_ID={pod.ContainerId}";
        var result = Cni(state, node, "ADD", pod, args, dist);
        pod.AddReturnedAt = Stopwatch.GetTimestamp();
        var doc = JsonNode.Parse(result)!;
        foreach (var ip in doc["ips"]!.AsArray())
        {
            var addr = ip!["address"]!.GetValue<string>().Split('/')[0];
            if (addr.Contains(':', StringComparison.Ordinal)) pod.Ip6 = addr; else pod.Ip = addr;
        }
        var tcp = pod.Ports.Where(p => p.Protocol == "TCP").Select(p => p.ContainerPort.ToString(System.Globalization.CultureInfo.InvariantCulture)).ToList();
        var udp = pod.Ports.Where(p => p.Protocol == "UDP").Select(p => p.ContainerPort.ToString(System.Globalization.CultureInfo.InvariantCulture)).ToList();
        if (tcp.Count + udp.Count > 0)
            pod.ServerPid = Shell.StartDetached(pod.Netns, Path.Combine(state.Dir, $"pod-{pod.Namespace}-{pod.Name}.log"), Path.Combine(dist, "weftctl"),
                "lab", "serve", "--tcp", string.Join(",", tcp.DefaultIfEmpty("0")), "--udp", string.Join(",", udp.DefaultIfEmpty("0")));
        await Task.CompletedTask.ConfigureAwait(false);
    }

    private static string Cni(LabState state, LabNode node, string command, LabPod pod, string args, string dist)
    {
        var conf = $$$"""{"cniVersion":"1.1.0","name":"weftlab","type":"weft","datastore":"{{{state.Datastore}}}","nodename":"{{{node.Name}}}","mode":"{{{state.Mode}}}","mtu":{{{state.PodMtu}}},"bpfPinDir":"{{{state.BpfPinDir(node.Name)}}}","ipam":{"type":"weft-ipam"}}""";
        var env = new Dictionary<string, string>
        {
            ["CNI_COMMAND"] = command, ["CNI_CONTAINERID"] = pod.ContainerId!, ["CNI_NETNS"] = "/var/run/netns/" + pod.Netns,
            ["CNI_IFNAME"] = "eth0", ["CNI_PATH"] = dist + ":/usr/lib/cni", ["CNI_ARGS"] = args,
        };
        var (code, stdout, stderr) = Shell.TryRun("ip", ["netns", "exec", node.Netns, Path.Combine(dist, "weft")], conf, env);
        if (code != 0) throw new LabException($"CNI {command} for pod {pod.Key} on {node.Name} failed: {stdout}{stderr}".Trim());
        return stdout;
    }

    public static async Task WaitHealthyAsync(LabState state, LabNode node, TimeSpan timeout, CancellationToken ct)
    {
        var deadline = Stopwatch.StartNew();
        string last = "no answer";
        while (deadline.Elapsed < timeout)
        {
            if (!Shell.IsRunning(node.AgentPid, "weft-agent") && !await StillRunningAfterAsync(node.AgentPid, ct).ConfigureAwait(false))
            {
                var log = Path.Combine(state.Dir, node.Name + ".log");
                throw new LabException($"weft-agent on {node.Name} exited: {(File.Exists(log) ? File.ReadAllText(log).Trim() : "no log")}");
            }
            (var healthy, last) = await HealthAsync(node, ct).ConfigureAwait(false);
            if (healthy) return;
            await Task.Delay(100, ct).ConfigureAwait(false);
        }
        throw new LabException($"weft-agent on {node.Name} not healthy after {timeout.TotalSeconds:0} s: {last}");
    }

    /// <summary>
    /// Adds one pod to a running lab exactly as a runtime would after the scheduler placed it: its Pod document
    /// first (labels, ports), then CNI ADD inside the node's namespace. Prints how long ADD took.
    /// </summary>
    public static async Task<int> AddPodAsync(Terminal ctx, string name, string key, string nodeName, IReadOnlyList<string> labels, IReadOnlyList<string> ports, CancellationToken ct)
    {
        var pod = await AddPodAsync(LabState.LoadOrThrow(name), key, nodeName, labels, ports, ct).ConfigureAwait(false);
        var took = Stopwatch.GetElapsedTime(pod.AddReturnedAt);
        // Return once the pod's first TCP port answers: its server starts detached and a probe right after would race it.
        var tcp = pod.Ports.FirstOrDefault(p => p.Protocol == "TCP");
        for (var wait = Stopwatch.StartNew(); tcp is not null && pod.Ip is { } ip && wait.Elapsed < TimeSpan.FromSeconds(5)
             && !await Probe.ReachableAsync(pod.Netns, IPAddress.Parse(ip), tcp.ContainerPort, "TCP", TimeSpan.FromMilliseconds(200)).ConfigureAwait(false);)
            await Task.Delay(50, ct).ConfigureAwait(false);
        ctx.Out.WriteLine($"pod {pod.Key} on {pod.Node}: {pod.Ip} (ready {took.TotalMilliseconds:0} ms after CNI ADD returned)");
        return 0;
    }

    public static async Task<LabPod> AddPodAsync(LabState state, string key, string nodeName, IReadOnlyList<string> labels, IReadOnlyList<string> ports, CancellationToken ct)
    {
        var name = state.Name;
        var parts = key.Split('/');
        if (parts.Length != 2 || parts.Any(p => p.Length == 0)) throw new ArgumentException($"pod '{key}': write it as NAMESPACE/NAME");
        if (state.Pods.Any(p => p.Key == key)) throw new ArgumentException($"pod {key} already exists in lab {name}");
        if (state.Nodes.All(n => n.Name != nodeName)) throw new ArgumentException($"no node '{nodeName}' in lab {name}");
        var labelMap = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var l in labels)
        {
            var kv = l.Split('=', 2);
            if (kv.Length != 2 || kv[0].Length == 0) throw new ArgumentException($"--label {l}: use key=value");
            labelMap[kv[0]] = kv[1];
        }
        var portList = new List<LabPort>();
        foreach (var spec in ports.DefaultIfEmpty("80/TCP").SelectMany(p => p.Split(',', StringSplitOptions.RemoveEmptyEntries)))
        {
            var pp = spec.Split('/');
            if (!int.TryParse(pp[0], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var number) || number is < 1 or > 65535 ||
                pp.Length > 2 || pp.Length == 2 && pp[1].ToUpperInvariant() is not ("TCP" or "UDP"))
                throw new ArgumentException($"--port {spec}: use PORT or PORT/TCP|UDP");
            var proto = pp.Length == 2 ? pp[1].ToUpperInvariant() : "TCP";
            portList.Add(new LabPort { Name = $"serve-{number}-{proto.ToLowerInvariant()}", ContainerPort = number, Protocol = proto });
        }
        var pod = Topology.NewPod(name, parts[0], parts[1], nodeName, labelMap, [], portList);
        var resources = new List<Resource>();
        if (state.K8sNamespaces.All(n => n.Name != pod.Namespace))
        {
            var ns = new LabNamespace { Name = pod.Namespace, Labels = new() { ["kubernetes.io/metadata.name"] = pod.Namespace } };
            state.K8sNamespaces.Add(ns);
            resources.Add(new NamespaceResource(new Weft.Policy.NamespaceInfo(ns.Name, ns.Labels), NamespaceDocument(ns), new DocumentSource("lab add-pod", 1)));
        }
        resources.Add(new PodResource(PodDocument(pod), PodJson(pod), new DocumentSource("lab add-pod", 2)));
        using (var store = Weft.Datastore.DatastoreFactory.Open(state.CtlDatastore))
            await new ResourceService(store).ApplyAsync(resources, ct).ConfigureAwait(false);
        state.Pods.Add(pod);
        state.Save();
        try { await AddPodAsync(state, pod, DistDir(), ct).ConfigureAwait(false); }
        catch
        {
            state.Pods.Remove(pod);
            if (state.Namespaces.Remove(pod.Netns)) Shell.TryRun("ip", ["netns", "delete", pod.Netns]);
            state.Save();
            throw;
        }
        state.Save();
        return pod;
    }

    /// <summary>Removes one pod: CNI DEL in its node, its server, its namespace and its Pod document.</summary>
    public static async Task<int> DeletePodAsync(Terminal ctx, string name, string key, CancellationToken ct)
    {
        var state = LabState.LoadOrThrow(name);
        var pod = state.FindPod(key);
        var node = state.Nodes.First(n => n.Name == pod.Node);
        var args = $"IgnoreUnknown=1;K8S_POD_NAMESPACE={pod.Namespace};K8S_POD_NAME={pod.Name};K8S_POD_INFRA_CONTAINER_ID={pod.ContainerId}";
        Cni(state, node, "DEL", pod, args, DistDir());
        Shell.Stop(pod.ServerPid, "weftctl", pod.Netns);
        if (state.Namespaces.Remove(pod.Netns)) Shell.TryRun("ip", ["netns", "delete", pod.Netns]);
        state.Pods.Remove(pod);
        state.Save();
        using (var store = Weft.Datastore.DatastoreFactory.Open(state.CtlDatastore))
            await new ResourceService(store).DeleteAsync("Pod", pod.Key, false, ct).ConfigureAwait(false);
        ctx.Out.WriteLine($"pod {pod.Key} deleted");
        return 0;
    }

    public static JsonObject NamespaceDocument(LabNamespace n) => new()
    {
        ["apiVersion"] = "v1", ["kind"] = "Namespace",
        ["metadata"] = new JsonObject { ["name"] = n.Name, ["labels"] = new JsonObject(n.Labels.Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)kv.Value))) },
    };

    public static JsonObject PodJson(LabPod p) => new()
    {
        ["apiVersion"] = "v1", ["kind"] = "Pod",
        ["metadata"] = new JsonObject
        {
            ["name"] = p.Name, ["namespace"] = p.Namespace,
            ["labels"] = new JsonObject(p.Labels.Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)kv.Value))),
            ["annotations"] = new JsonObject(p.Annotations.Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)kv.Value))),
        },
        ["spec"] = new JsonObject
        {
            ["nodeName"] = p.Node,
            ["containers"] = new JsonArray(new JsonObject
            {
                ["name"] = "serve",
                ["ports"] = new JsonArray(p.Ports.Select(port => (JsonNode?)new JsonObject
                {
                    ["name"] = port.Name, ["containerPort"] = port.ContainerPort, ["protocol"] = port.Protocol,
                }).ToArray()),
            }),
        },
    };

    private static Weft.Policy.Dialects.PodDocument PodDocument(LabPod p) => Weft.Policy.Dialects.PolicyDocuments.ReadPod(PodJson(p), $"lab pod {p.Key}");

    /// <summary>
    /// Waits until every node's agent enforces the datastore's current revision (policies, pods, endpoints; agents
    /// with policy off count as done), so what a probe sees next is the programmed state. Returns how long that took.
    /// </summary>
    public static async Task<TimeSpan> WaitPolicySyncedAsync(LabState state, TimeSpan timeout, CancellationToken ct)
    {
        using var store = Weft.Datastore.DatastoreFactory.Open(state.CtlDatastore);
        var target = await store.RevisionAsync(ct).ConfigureAwait(false);
        var agents = state.AgentEndpoints();
        try { return await AgentWait.WaitAsync(agents, target, "policy", timeout, ct).ConfigureAwait(false); }
        catch (ResourceException e) { throw new LabException(e.Message); }
    }

    public static async Task<int> SyncAsync(Terminal ctx, string name, int timeoutMs, CancellationToken ct)
    {
        var state = LabState.LoadOrThrow(name);
        var took = await WaitPolicySyncedAsync(state, TimeSpan.FromMilliseconds(timeoutMs), ct).ConfigureAwait(false);
        ctx.Out.WriteLine($"every agent enforces the current datastore revision ({took.TotalMilliseconds:0.0} ms)");
        return 0;
    }

    /// <summary>A second look before declaring an agent dead: a process caught mid-exec reads as gone for a moment.</summary>
    private static async Task<bool> StillRunningAfterAsync(int pid, CancellationToken ct)
    {
        await Task.Delay(300, ct).ConfigureAwait(false);
        return Shell.IsRunning(pid, "weft-agent");
    }

    public static async Task<(bool Healthy, string Detail)> HealthAsync(LabNode node, CancellationToken ct)
    {
        try
        {
            using var http = AgentClient(node.Socket);
            using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
            cts.CancelAfter(TimeSpan.FromSeconds(2));
            using var r = await http.GetAsync(new Uri("http://agent/healthz"), cts.Token).ConfigureAwait(false);
            return (r.IsSuccessStatusCode, (await r.Content.ReadAsStringAsync(cts.Token).ConfigureAwait(false)).Trim());
        }
        catch (Exception e) when (e is HttpRequestException or OperationCanceledException or SocketException)
        {
            return (false, e.Message);
        }
    }

    /// <summary>The agent's socket speaks HTTP/2 only (it also carries the gRPC flow API).</summary>
    public static HttpClient AgentClient(string socket) => AgentEndpoint.UnixClient(socket);

    /// <summary>
    /// What kubelet does when a node joins: a v1 Node with its hostname label and addresses. With a net-conf.json, each
    /// also gets a `spec.podCIDR` from its Network in SubnetLen pieces, as kube-controller-manager's
    /// --allocate-node-cidrs gives them to clusters that run Flannel.
    /// </summary>
    private static async Task RegisterKubeNodesAsync(LabState state, CancellationToken ct)
    {
        using var api = Weft.Datastore.DatastoreFactory.Open(state.CtlDatastore);
        Weft.Model.Cidr? network = null;
        var subnetLen = 24;
        if (state.NetConf is not null && JsonNode.Parse(File.ReadAllText(state.NetConf)) is JsonObject netConf)
        {
            network = Weft.Model.Cidr.Parse(netConf["Network"]!.GetValue<string>());
            if (netConf["SubnetLen"] is { } len) subnetLen = len.GetValue<int>();
        }
        for (var i = 0; i < state.Nodes.Count; i++)
        {
            var node = state.Nodes[i];
            var doc = new JsonObject
            {
                ["apiVersion"] = "v1", ["kind"] = "Node",
                ["metadata"] = new JsonObject { ["name"] = node.Name, ["labels"] = new JsonObject { ["kubernetes.io/hostname"] = node.Name, ["kubernetes.io/os"] = "linux" } },
                ["status"] = new JsonObject
                {
                    ["addresses"] = new JsonArray(new JsonObject { ["type"] = "InternalIP", ["address"] = node.UnderlayIp }, new JsonObject { ["type"] = "Hostname", ["address"] = node.Name }),
                },
            };
            if (network is { } net)
            {
                var podCidr = net.Subnet(subnetLen, (UInt128)i).ToString();
                doc["spec"] = new JsonObject { ["podCIDR"] = podCidr, ["podCIDRs"] = new JsonArray(podCidr) };
            }
            await Weft.Datastore.DatastoreExtensions.PutAsync(api, Weft.Model.Keys.K8sNode(node.Name), System.Text.Encoding.UTF8.GetBytes(doc.ToJsonString()), 0, ct).ConfigureAwait(false);
        }
    }

    private static int StartAgent(LabState state, LabNode node, string dist) =>
        Shell.StartDetached(node.Netns, Path.Combine(state.Dir, node.Name + ".log"), Path.Combine(dist, "weft-agent"),
        [
            "--nodename", node.Name, "--datastore", state.Datastore,
            .. state.NetConf is null ? ["--backend", state.Backend] : new[] { "--net-conf", state.NetConf },
            "--underlay-interface", "eth0", "--socket", node.Socket,
            "--policy", state.Policy, "--flows", state.Flows, "--masquerade", state.Masquerade, "--bpf-pin-dir", state.BpfPinDir(node.Name),
            .. state.Dataplane is null ? Array.Empty<string>() : ["--dataplane", state.Dataplane],
            "--node-release-grace", state.NodeReleaseGrace.ToString(System.Globalization.CultureInfo.InvariantCulture),
        ]);

    /// <summary>Backend.Type of a Flannel net-conf.json (vxlan when absent, as flanneld defaults); the agent validates the rest.</summary>
    private static string NetConfBackend(string path)
    {
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(path));
            var type = doc.RootElement.TryGetProperty("Backend", out var b) && b.ValueKind == JsonValueKind.Object && b.TryGetProperty("Type", out var t) && t.ValueKind == JsonValueKind.String
                ? t.GetString()! : "vxlan";
            return type is "vxlan" or "host-gw" ? type : throw new ArgumentException($"--net-conf {path}: Backend.Type '{type}': the lab runs vxlan or host-gw");
        }
        catch (JsonException e) { throw new ArgumentException($"--net-conf {path}: not JSON: {e.Message}"); }
    }

    public static Task<int> DownAsync(Terminal ctx, string name)
    {
        ValidateName(name);
        var state = LabState.Load(name);
        var removed = state is not null ? Remove(state) : 0;
        // After a crash the state file may lag behind: sweep namespaces by the lab's prefix too.
        foreach (var ns in Shell.Run("ip", "netns", "list").Split('\n').Select(l => l.Split(' ')[0]).Where(n => n.StartsWith(name + "-", StringComparison.Ordinal)))
        {
            Shell.StopAllIn(ns);
            Shell.TryRun("ip", ["netns", "delete", ns]);
            removed++;
        }
        Weft.Bpf.BpfFs.Unmount(Path.Combine(LabState.DirFor(name), "bpf"));
        if (Directory.Exists(LabState.DirFor(name))) Directory.Delete(LabState.DirFor(name), true);
        ctx.Out.WriteLine(state is null && removed == 0 ? $"lab '{name}' does not exist; nothing to remove" : $"lab '{name}' removed");
        return Task.FromResult(0);
    }

    private static int Remove(LabState state)
    {
        foreach (var p in state.Pods) Shell.Stop(p.ServerPid, "weftctl", p.Netns);
        foreach (var n in state.Nodes) Shell.Stop(n.AgentPid, "weft-agent", n.Netns);
        foreach (var m in state.Etcd) Shell.Stop(m.Pid, "etcd", state.ControlPlane);
        if (state.ApiServerPid > 0) Shell.Stop(state.ApiServerPid, "weftctl", state.ControlPlane);
        var count = 0;
        foreach (var ns in state.Namespaces.AsEnumerable().Reverse())
        {
            Shell.StopAllIn(ns);
            if (Shell.TryRun("ip", ["netns", "delete", ns]).Code == 0) count++;
        }
        Weft.Bpf.BpfFs.Unmount(state.BpfDir);
        if (Directory.Exists(state.Dir)) Directory.Delete(state.Dir, true);
        return count;
    }

    /// <summary>Stops a node's agent (SIGTERM, or SIGKILL with --kill) and starts a new one; waits until it is healthy.</summary>
    public static async Task<int> RestartAgentAsync(Terminal ctx, string name, string nodeName, bool kill, bool stopOnly, CancellationToken ct)
    {
        var state = LabState.LoadOrThrow(name);
        var node = state.Nodes.FirstOrDefault(n => n.Name == nodeName) ?? throw new ArgumentException($"no node '{nodeName}' in lab {name}");
        if (Shell.IsRunning(node.AgentPid, "weft-agent") && Shell.InNetns(node.AgentPid, node.Netns))
        {
            if (kill) Shell.Run("kill", "-KILL", node.AgentPid.ToString(System.Globalization.CultureInfo.InvariantCulture));
            else Shell.Stop(node.AgentPid, "weft-agent", node.Netns);
            for (var i = 0; i < 100 && Shell.IsRunning(node.AgentPid, "weft-agent"); i++) await Task.Delay(20, ct).ConfigureAwait(false);
        }
        if (stopOnly)
        {
            node.AgentPid = 0;
            state.Save();
            ctx.Out.WriteLine($"weft-agent on {node.Name} stopped");
            return 0;
        }
        var dist = DistDir();
        node.AgentPid = StartAgent(state, node, dist);
        state.Save();
        await WaitHealthyAsync(state, node, TimeSpan.FromSeconds(60), ct).ConfigureAwait(false);
        ctx.Out.WriteLine($"weft-agent on {node.Name} restarted (pid {node.AgentPid})");
        return 0;
    }

    public static async Task<int> StatusAsync(Terminal ctx, string name, string output, CancellationToken ct)
    {
        var state = LabState.LoadOrThrow(name);
        var health = new Dictionary<string, string>();
        foreach (var n in state.Nodes)
            health[n.Name] = !Shell.IsRunning(n.AgentPid, "weft-agent") ? "agent down" : (await HealthAsync(n, ct).ConfigureAwait(false)).Detail;
        Status(ctx, state, output, health);
        return 0;
    }

    private static void Status(Terminal ctx, LabState state, string output, IReadOnlyDictionary<string, string>? health = null)
    {
        if (output == "json")
        {
            var doc = new JsonObject
            {
                ["name"] = state.Name, ["backend"] = state.Backend, ["mode"] = state.Mode, ["datastore"] = state.Datastore,
                ["nodes"] = new JsonArray(state.Nodes.Select(n => (JsonNode?)new JsonObject
                {
                    ["name"] = n.Name, ["netns"] = n.Netns, ["underlayIP"] = n.UnderlayIp, ["agentPid"] = n.AgentPid,
                    ["health"] = health?.GetValueOrDefault(n.Name) ?? "ok",
                }).ToArray()),
                ["etcd"] = new JsonArray(state.Etcd.Select(m => (JsonNode?)new JsonObject
                {
                    ["name"] = m.Name, ["ip"] = m.Ip, ["pid"] = m.Pid, ["running"] = Shell.IsRunning(m.Pid, "etcd"),
                }).ToArray()),
                ["pods"] = new JsonArray(state.Pods.Select(p => (JsonNode?)new JsonObject
                {
                    // namespace and name are the pod's Kubernetes ones; netns is the network namespace it lives in.
                    ["namespace"] = p.Namespace, ["name"] = p.Name, ["pod"] = p.Key, ["node"] = p.Node, ["netns"] = p.Netns, ["ip"] = p.Ip, ["ip6"] = p.Ip6,
                    ["labels"] = new JsonObject(p.Labels.Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)kv.Value))),
                }).ToArray()),
            };
            ctx.Out.WriteLine(doc.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            return;
        }
        var nodes = new TextTable("NODE", "NETNS", "UNDERLAY IP", "AGENT PID", "HEALTH");
        foreach (var n in state.Nodes) nodes.Add(n.Name, n.Netns, n.UnderlayIp, n.AgentPid.ToString(System.Globalization.CultureInfo.InvariantCulture), health?.GetValueOrDefault(n.Name) ?? "ok");
        ctx.Out.Write(nodes.Render());
        ctx.Out.WriteLine();
        if (state.Etcd.Count > 0)
        {
            var etcd = new TextTable("ETCD MEMBER", "NETNS", "CLIENT URL", "PID", "STATE");
            foreach (var m in state.Etcd)
                etcd.Add(m.Name, state.ControlPlane ?? "-", $"http://{m.Ip}:2379", m.Pid.ToString(System.Globalization.CultureInfo.InvariantCulture), Shell.IsRunning(m.Pid, "etcd") ? "running" : "down");
            ctx.Out.Write(etcd.Render());
            ctx.Out.WriteLine();
        }
        var pods = new TextTable("NAMESPACE", "NAME", "NODE", "NETNS", "IP", "LABELS");
        foreach (var p in state.Pods) pods.Add(p.Namespace, p.Name, p.Node, p.Netns, p.Ip ?? p.Ip6 ?? "-", string.Join(",", p.Labels.Select(kv => $"{kv.Key}={kv.Value}")));
        ctx.Out.Write(pods.Render());
    }

    public static int Exec(Terminal ctx, string name, string? pod, string? node, IReadOnlyList<string> command)
    {
        var state = LabState.LoadOrThrow(name);
        // With --node, a word in the POD position is the start of the command (`lab exec --node n1 -- ping ...`).
        if (node is not null && pod is not null) command = [pod, .. command];
        if (command.Count == 0) throw new ArgumentException("nothing to run: weftctl lab exec POD -- CMD...");
        var netns = node is not null
            ? (state.Nodes.FirstOrDefault(n => n.Name == node) ?? throw new ArgumentException($"no node '{node}' in lab {name}")).Netns
            : state.FindPod(pod ?? throw new ArgumentException("give a POD or --node NODE")).Netns;
        var psi = new ProcessStartInfo("ip") { UseShellExecute = false };
        foreach (var a in new[] { "netns", "exec", netns }.Concat(command)) psi.ArgumentList.Add(a);
        psi.Environment["WEFT_DATASTORE"] = state.Datastore;
        using var p = Process.Start(psi)!;
        p.WaitForExit();
        return p.ExitCode;
    }

    public static async Task<int> MatrixAsync(Terminal ctx, string name, int port, string protocol, int timeoutMs, string output, CancellationToken ct)
    {
        var state = LabState.LoadOrThrow(name);
        protocol = protocol.ToUpperInvariant();
        if (protocol is not ("TCP" or "UDP")) throw new ArgumentException($"--protocol {protocol}: the lab probes TCP or UDP (this kernel has no SCTP)");
        var pods = state.Pods.Where(p => p.Ip is not null).ToList();
        var allowed = new bool[pods.Count][];
        for (var i = 0; i < pods.Count; i++) allowed[i] = new bool[pods.Count];
        using var gate = new SemaphoreSlim(32);
        var timeout = TimeSpan.FromMilliseconds(timeoutMs);
        await Task.WhenAll(Enumerable.Range(0, pods.Count).SelectMany(i => Enumerable.Range(0, pods.Count).Select(async j =>
        {
            await gate.WaitAsync(ct).ConfigureAwait(false);
            try { allowed[i][j] = await Probe.ReachableAsync(pods[i].Netns, IPAddress.Parse(pods[j].Ip!), port, protocol, timeout).ConfigureAwait(false); }
            finally { gate.Release(); }
        }))).ConfigureAwait(false);
        var keys = pods.Select(p => p.Key).ToList();
        if (output == "json")
        {
            ctx.Out.WriteLine(MatrixView.Json(port, protocol, keys, allowed));
            return 0;
        }
        MatrixView.Render(ctx.Out, port, protocol, keys, allowed);
        return 0;
    }

    private static void Step(Terminal ctx, string message) => ctx.Out.WriteLine($"\u2022 {message}");

    private static void AddNetns(LabState state, string name)
    {
        Shell.Ip("netns", "add", name);
        state.Namespaces.Add(name);
        state.Save();
        // As on a real host (and in a pod, where the runtime's loopback plugin does it): 127.0.0.1 works.
        Shell.Ip("-n", name, "link", "set", "lo", "up");
    }

    private static void ValidateName(string name)
    {
        if (name.Length is 0 or > 12 || !name.All(c => char.IsAsciiLetterLower(c) || char.IsAsciiDigit(c)))
            throw new ArgumentException($"lab name '{name}': use 1-12 lower-case letters and digits");
    }

    /// <summary>Where the built binaries are: next to this weftctl (dist/), or $WEFT_DIST.</summary>
    public static string DistDir()
    {
        var fromEnv = Environment.GetEnvironmentVariable("WEFT_DIST");
        var dir = fromEnv ?? Path.GetDirectoryName(Environment.ProcessPath) ?? ".";
        if (!File.Exists(Path.Combine(dir, "weft")) || !File.Exists(Path.Combine(dir, "weft-agent")))
            throw new ArgumentException($"weft and weft-agent not found in {dir}; run ./build.sh (or set WEFT_DIST)");
        return dir;
    }
}
