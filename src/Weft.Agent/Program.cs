using System.Net;
using System.Text.Json.Serialization;
using Weft.Agent.Backends;
using Weft.Agent.Bpf;
using Weft.Agent.Config;
using Weft.Agent.Drivers;
using Weft.Agent.Flows;
using Weft.Agent.Reconcile;
using Weft.Datastore;

// weft-agent: one per node. Start-up registers the node, then a reconciler keeps the kernel in step with the
// datastore, and a small API answers on a unix socket (health, status) and on TCP (Prometheus metrics).
if (args is ["install-cni", .. var installArgs])
{
    // The DaemonSet's init container: the plugin, its kubeconfig and the conflist onto the host (see CniInstaller).
    try
    {
        foreach (var f in Weft.Agent.Install.CniInstaller.Run(Weft.Agent.Install.CniInstaller.Parse(installArgs))) Console.WriteLine("installed " + f);
        return 0;
    }
    catch (Exception e) when (e is ArgumentException or IOException or UnauthorizedAccessException)
    {
        await Console.Error.WriteLineAsync("weft-agent install-cni: " + e.Message);
        return 2;
    }
}

AgentOptions options;
try { options = AgentOptions.Parse(args); }
catch (HelpRequestedException) { Console.WriteLine(AgentOptions.Help); return 0; }
catch (ArgumentException e) { await Console.Error.WriteLineAsync("weft-agent: " + e.Message); return 2; }

var builder = WebApplication.CreateSlimBuilder(args.Length > 0 ? [] : args);
builder.Logging.ClearProviders();
builder.Logging.AddSimpleConsole(o => { o.SingleLine = true; o.TimestampFormat = "HH:mm:ss.fff "; });
builder.Logging.AddFilter("Microsoft", LogLevel.Warning);
builder.Services.ConfigureHttpJsonOptions(o => o.SerializerOptions.TypeInfoResolverChain.Insert(0, AgentJson.Default));
var log = LoggerFactory.Create(b => b.AddSimpleConsole(o => { o.SingleLine = true; o.TimestampFormat = "HH:mm:ss.fff "; })).CreateLogger("weft-agent");

IDatastore store;
LocalNode me;
IBackend backend = options.Backend == "vxlan" ? new VxlanBackend(options.Vni, options.Port) : new HostGwBackend();
try
{
    store = DatastoreFactory.Open(options.Datastore);
    using var startup = new CancellationTokenSource(TimeSpan.FromMinutes(5));
    if (options.NetConf is { } nc) await NodeRegistration.EnsureNetConfPoolAsync(store, nc, startup.Token);
    me = NodeRegistration.DiscoverUnderlay(options.NodeName, options.UnderlayInterface);
    // Flannel users' model: the node's podCIDR is its block, claimed before the tunnel address takes one.
    if (options.NetConf is not null && store is Weft.Kubernetes.KubeDatastore) await NodeRegistration.ClaimPodCidrsAsync(store, options.NodeName, log, startup.Token);
    await NodeRegistration.EnsureNameAvailableAsync(store, me, startup.Token);
    if (backend is VxlanBackend)
        me = me with { VtepMac = NodeRegistration.VtepMacFor(options.NodeName), VtepAddress = await NodeRegistration.TunnelAddressAsync(store, options.NodeName, log, startup.Token) };
    using (var nl = Weft.Netlink.RtNetlink.Open()) me = backend.Prepare(nl, me);
    await NodeRegistration.RegisterAsync(store, me, backend.Type, me.UnderlayMtu - backend.Overhead, options.Labels, startup.Token);
    log.LogInformation("node {Node} registered: underlay {Underlay} on {Dev}, backend {Backend}, pod MTU {Mtu}",
        me.Name, $"{me.UnderlayAddress}/{me.UnderlayPrefix}", me.UnderlayName, backend.Type, me.UnderlayMtu - backend.Overhead);
}
catch (Exception e) when (e is AgentStartupException or DatastoreUnavailableException or ArgumentException or Weft.Netlink.NetlinkException or Weft.Ipam.IpamException)
{
    await Console.Error.WriteLineAsync("weft-agent: " + e.Message);
    return 1;
}

// natOutgoing: BPF masquerade when asked or when auto finds it works; an agent using nftables removes ours.
BpfMasquerade? bpfMasquerade = null;
if (options.Masquerade != "nftables")
{
    try { bpfMasquerade = BpfMasquerade.Load(me.UnderlayIndex, me.UnderlayAddress, options.BpfPinDir, log); }
    catch (Exception e) when (e is Weft.Bpf.BpfException or DllNotFoundException or IOException or UnauthorizedAccessException or ArgumentException)
    {
        if (options.Masquerade == "bpf")
        {
            await Console.Error.WriteLineAsync("weft-agent: BPF masquerade: " + e.Message);
            return 1;
        }
        log.LogWarning("BPF masquerade unavailable ({Error}); natOutgoing uses nftables masquerade", e.Message);
    }
}
if (bpfMasquerade is null)
{
    try { BpfMasquerade.Remove(me.UnderlayIndex, options.BpfPinDir); }
    catch (Weft.Bpf.BpfException e) { log.LogWarning("could not remove BPF masquerade programs: {Error}", e.Message); }
}
var masquerade = bpfMasquerade is null ? "nftables" : "bpf";
log.LogInformation("natOutgoing masquerade: {Mode} on {Dev}", masquerade, me.UnderlayName);

var state = new AgentState(me.Name, backend.Type);
state.Update(s => s with { Underlay = $"{me.UnderlayAddress}/{me.UnderlayPrefix}", Vtep = me.VtepAddress?.ToString(), Mtu = me.UnderlayMtu - backend.Overhead, Masquerade = masquerade, Policy = s.Policy with { Enabled = options.Policy } });
builder.Services.AddSingleton(store);
builder.Services.AddSingleton(state);
builder.Services.AddHostedService<MemoryTrimmer>();
builder.Services.AddSingleton<DatastoreTrigger>();
builder.Services.AddHostedService(sp => sp.GetRequiredService<DatastoreTrigger>());
// Flows: the policy table logs its verdicts to NFLOG group 2 (group 1 is for Log rules); the collector names them.
const int FlowLogGroup = 2;
var flowsOn = options.FlowBuffer > 0;
var ring = new Weft.Flows.FlowRing(Math.Max(1, options.FlowBuffer));
var flowIds = new FlowIdentities(me.Name);
var bpfVerdicts = new BpfVerdictSource(flowIds, me.Name, log);
var flowCounters = new FlowCounters();
var observer = new ObserverService(ring, flowCounters, me.Name);
builder.Services.AddSingleton(observer);
builder.Services.AddGrpc();
if (flowsOn)
    builder.Services.AddHostedService(sp => new FlowCollector(ring, flowIds, flowCounters,
        [new NflogVerdictSource(FlowLogGroup, flowIds, me.Name), new ConntrackEndSource(flowIds, me.Name), bpfVerdicts],
        sp.GetRequiredService<DatastoreTrigger>().Cache, sp.GetRequiredService<DatastoreTrigger>(), refreshIdentities: !options.Policy, sp.GetRequiredService<ILogger<FlowCollector>>()));
if (store is Weft.Kubernetes.KubeDatastore kube && options.CniConfDir is { } cniConfDir)
    builder.Services.AddHostedService(sp => new Weft.Agent.Install.CniKeeper(new Weft.Agent.Install.CniInstaller.Options { CniConfDir = cniConfDir, CniBinDir = options.CniBinDir },
        kube, Weft.Agent.Install.CniKeeper.DaemonSetPath(), sp.GetRequiredService<ILogger<Weft.Agent.Install.CniKeeper>>()));
if (store is Weft.Kubernetes.KubeDatastore)
    builder.Services.AddHostedService(sp => new NodeReleaser(store, sp.GetRequiredService<DatastoreTrigger>(), me.Name, options.NodeReleaseGrace, sp.GetRequiredService<ILogger<NodeReleaser>>()));
builder.Services.AddHostedService(sp => new RouteReconciler(sp.GetRequiredService<DatastoreTrigger>().Cache, sp.GetRequiredService<DatastoreTrigger>(), backend, me, state, options.Resync, sp.GetRequiredService<ILogger<RouteReconciler>>()));
// natOutgoing drivers in order: BPF (when loaded) masquerades; nftables then keeps only the tunnel's notrack (or
// nothing with policy off), else it masquerades itself.
var natDrivers = new List<Weft.Agent.Drivers.INatDriver>();
if (bpfMasquerade is not null) natDrivers.Add(bpfMasquerade);
natDrivers.Add(new NatProgrammer(backend.TunnelPort, masquerade: bpfMasquerade is null));
builder.Services.AddHostedService(sp => new NatReconciler(sp.GetRequiredService<DatastoreTrigger>().Cache, sp.GetRequiredService<DatastoreTrigger>(), natDrivers, state, options.Resync, sp.GetRequiredService<ILogger<NatReconciler>>(),
    options.Policy, options.Dataplane));
// Where packets from other nodes' pods arrive, for the BPF dataplane's report of routing drops (none with host-gw).
var tunnelDevice = backend.TunnelPort is null ? null : Weft.Model.Ownership.VxlanDevice;
// The BPF dataplane's numbering, beside the agent's socket (a run-time directory; one per node in the lab).
string BpfStateDir() => Path.ChangeExtension(Path.GetFullPath(options.SocketPath), ".bpf-policy-ids.json");
Weft.Agent.Drivers.IPolicyDataplane OpenDataplane(string name)
{
    var nftOptions = new Weft.Dataplane.Nftables.NftPolicyCompiler.Options(FlowLogGroup: flowsOn ? FlowLogGroup : 0, TunnelPort: backend.TunnelPort);
    if (name != "bpf") return new Weft.Agent.Drivers.NftPolicyDataplane(nftOptions);
    var bpf = Weft.Agent.Bpf.BpfPolicyDataplane.Load(options.BpfPinDir, BpfStateDir(), nftOptions, log, options.BpfPolicyObject,
        tunnelDevice: tunnelDevice);
    if (flowsOn) bpf.StartEvents(bpfVerdicts.Post);
    return bpf;
}
if (!options.Policy)
{
    // Enforcement switched off: a table or programs left by an earlier run would keep dropping new pods (fail closed). Remove them.
    using var dataplane = new Weft.Agent.Drivers.NftPolicyDataplane(new Weft.Dataplane.Nftables.NftPolicyCompiler.Options());
    dataplane.Remove();
    try
    {
        using var bpf = Weft.Agent.Bpf.BpfPolicyDataplane.Load(options.BpfPinDir, BpfStateDir(), new Weft.Dataplane.Nftables.NftPolicyCompiler.Options(), log,
            tunnelDevice: tunnelDevice);
        bpf.Handover();
    }
    catch (Exception e) when (e is Weft.Bpf.BpfException or DllNotFoundException or IOException) { }
    log.LogInformation("policy enforcement off: the weft-policy nftables table and any BPF policy programs are removed");
}
else
    builder.Services.AddHostedService(sp => new PolicyReconciler(sp.GetRequiredService<DatastoreTrigger>().Cache, sp.GetRequiredService<DatastoreTrigger>(), me.Name,
        options.Dataplane, OpenDataplane, state, sp.GetRequiredService<ILogger<PolicyReconciler>>(), flowsOn ? flowIds : null));

var socketDir = Path.GetDirectoryName(options.SocketPath);
if (!string.IsNullOrEmpty(socketDir)) Directory.CreateDirectory(socketDir);
if (File.Exists(options.SocketPath)) File.Delete(options.SocketPath); // a socket left by a killed agent
var metrics = IPEndPoint.Parse(options.MetricsAddress);
builder.WebHost.ConfigureKestrel(k =>
{
    // One socket for the local API and the flow API (gRPC): HTTP/2 with prior knowledge, since cleartext HTTP/2
    // cannot be negotiated next to HTTP/1.1 (curl: --http2-prior-knowledge). The metrics port also answers /healthz
    // and /status over HTTP/1.1.
    k.ListenUnixSocket(options.SocketPath, l => l.Protocols = Microsoft.AspNetCore.Server.Kestrel.Core.HttpProtocols.Http2);
    k.Listen(metrics);
    if (flowsOn && options.FlowAddress.Length > 0)
        k.Listen(IPEndPoint.Parse(options.FlowAddress), l => l.Protocols = Microsoft.AspNetCore.Server.Kestrel.Core.HttpProtocols.Http2);
});

var app = builder.Build();
observer.Stopping = app.Lifetime.ApplicationStopping;
app.MapGet("/healthz", (AgentState s) => s.Snapshot.Synced ? Results.Text("ok\n") : Results.Text("syncing\n", statusCode: 503));
app.MapGet("/status", (AgentState s) => Results.Json(s.Snapshot, AgentJson.Default.AgentSnapshot));
// Long poll for `weftctl apply --wait`: answers once this node enforces datastore revision N (scope policy, routes or
// both), or 504 with the status after timeoutMs.
app.MapGet("/status/wait", async (AgentState s, long revision, string? scope, int? timeoutMs, CancellationToken ct) =>
{
    var policy = scope is null or "policy" or "all";
    var routes = scope is "routes" or "all";
    if (!policy && !routes) return Results.Text("scope: use policy, routes or all\n", statusCode: 400);
    var (done, snapshot) = await s.WaitAsync(x =>
        (!policy || !x.Policy.Enabled || x.Policy.Revision >= revision) && (!routes || (x.RoutesRevision >= revision && x.NatRevision >= revision)),
        TimeSpan.FromMilliseconds(Math.Clamp(timeoutMs ?? 30_000, 0, 600_000)), ct);
    return Results.Json(snapshot, AgentJson.Default.AgentSnapshot, statusCode: done ? 200 : 504);
});
app.MapGet("/debug/memory", () =>
{
    var gc = GC.GetGCMemoryInfo();
    return Results.Text($"gc heap {gc.HeapSizeBytes / 1024} KiB, committed {gc.TotalCommittedBytes / 1024} KiB, fragmented {gc.FragmentedBytes / 1024} KiB, " +
        $"total allocated {GC.GetTotalAllocatedBytes() / 1024} KiB, gen0 collections {GC.CollectionCount(0)}, gen2 {GC.CollectionCount(2)}, threads {System.Diagnostics.Process.GetCurrentProcess().Threads.Count}\n");
});
app.MapGet("/metrics", async (AgentState s, DatastoreTrigger trigger, CancellationToken ct) =>
{
    var text = new System.Text.StringBuilder(s.Metrics());
    if (flowsOn) flowCounters.AppendMetrics(text, ring, flowIds.LocalEndpoints);
    await IpamMetrics.AppendAsync(text, trigger.Cache, me.Name, ct);
    return Results.Text(text.ToString(), "text/plain; version=0.0.4");
});
app.MapGrpcService<ObserverService>();
await app.RunAsync();
store.Dispose();
return 0;

[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase, WriteIndented = true)]
[JsonSerializable(typeof(AgentSnapshot))]
[JsonSerializable(typeof(PolicyStatus))]
internal sealed partial class AgentJson : JsonSerializerContext;
