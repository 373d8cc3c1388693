using System.Net;
using System.Text.Json.Serialization;
using Weft.Agent.Backends;
using Weft.Agent.Config;
using Weft.Agent.Reconcile;
using Weft.Datastore;

// weft-agent: one per node. Start-up registers the node, then a reconciler keeps the kernel in step with the
// datastore, and a small API answers on a unix socket (health, status) and on TCP (Prometheus metrics).
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

var state = new AgentState(me.Name, backend.Type);
state.Update(s => s with { Underlay = $"{me.UnderlayAddress}/{me.UnderlayPrefix}", Vtep = me.VtepAddress?.ToString(), Mtu = me.UnderlayMtu - backend.Overhead });
builder.Services.AddSingleton(store);
builder.Services.AddSingleton(state);
builder.Services.AddHostedService(sp => new RouteReconciler(store, backend, me, state, options.Resync, sp.GetRequiredService<ILogger<RouteReconciler>>(), options.Policy));
if (!options.Policy)
{
    // Enforcement switched off: a table left by an earlier run would keep dropping new pods (fail closed). Remove it.
    using var transport = new Weft.Dataplane.Nftables.LibNftTransport();
    new Weft.Dataplane.Nftables.NftPolicyDriver(transport).Remove();
    log.LogInformation("policy enforcement off: the weft-policy nftables table is removed");
}
else
    builder.Services.AddHostedService(sp => new PolicyReconciler(store, me.Name, new Weft.Dataplane.Nftables.NftPolicyCompiler.Options(), state, sp.GetRequiredService<ILogger<PolicyReconciler>>()));

var socketDir = Path.GetDirectoryName(options.SocketPath);
if (!string.IsNullOrEmpty(socketDir)) Directory.CreateDirectory(socketDir);
if (File.Exists(options.SocketPath)) File.Delete(options.SocketPath); // a socket left by a killed agent
var metrics = IPEndPoint.Parse(options.MetricsAddress);
builder.WebHost.ConfigureKestrel(k =>
{
    k.ListenUnixSocket(options.SocketPath);
    k.Listen(metrics);
});

var app = builder.Build();
app.MapGet("/healthz", (AgentState s) => s.Snapshot.Synced ? Results.Text("ok\n") : Results.Text("syncing\n", statusCode: 503));
app.MapGet("/status", (AgentState s) => Results.Json(s.Snapshot, AgentJson.Default.AgentSnapshot));
app.MapGet("/metrics", (AgentState s) => Results.Text(s.Metrics(), "text/plain; version=0.0.4"));
await app.RunAsync();
store.Dispose();
return 0;

[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase, WriteIndented = true)]
[JsonSerializable(typeof(AgentSnapshot))]
[JsonSerializable(typeof(PolicyStatus))]
internal sealed partial class AgentJson : JsonSerializerContext;
