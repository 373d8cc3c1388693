using System.CommandLine;
using Weft.Ctl.Commands;
using Weft.Datastore;
using Weft.Ipam;
using Weft.Resources;

// weftctl: the operator CLI. Each verb is a small function in Commands/; this file only wires the grammar.
var datastore = new Option<string?>("--datastore") { Description = "datastore URI (default $WEFT_DATASTORE or " + DatastoreFactory.DefaultUri + ")", Recursive = true };
var output = new Option<string>("--output", "-o") { Description = "output format: wide, json or yaml", DefaultValueFactory = _ => "" };

var root = new RootCommand("weftctl: operate a Weft pod network (IP pools, IPAM, policies, flows, lab)");
var labOption = new Option<string?>("--lab") { Description = "point the command at this lab's datastore", Recursive = true };
root.Options.Add(datastore);
root.Options.Add(labOption);

CtlContext Ctx(ParseResult r) => new(r.GetValue(datastore), Console.Out, Console.Error, r.GetValue(labOption));

// apply
var applyFiles = new Option<string[]>("--filename", "-f") { Description = "file, directory or - for stdin (YAML or JSON)", Required = true, AllowMultipleArgumentsPerToken = true };
// --wait: return once every agent enforces what was written (the lab's sync, for any datastore).
Option<bool> WaitOption() => new("--wait") { Description = "return once every node's agent enforces the change (see --timeout)" };
Option<string> WaitTimeout() => new("--timeout") { Description = "how long --wait waits, e.g. 30s, 2m, 500ms", DefaultValueFactory = _ => "30s" };
TimeSpan? Wait(ParseResult r, Option<bool> wait, Option<string> timeout) => r.GetValue(wait) ? ResourceCommands.ParseDuration(r.GetValue(timeout)!, "--timeout") : null;
var applyWait = WaitOption();
var applyTimeout = WaitTimeout();
var apply = new Command("apply", "create or update resources from YAML/JSON documents (Calico IPPool, IPReservation, NetworkPolicy, GlobalNetworkPolicy, Tier; Kubernetes NetworkPolicy, Namespace, Pod)") { applyFiles, applyWait, applyTimeout };
apply.SetAction((r, ct) => Guard(() => ResourceCommands.ApplyAsync(Ctx(r), r.GetValue(applyFiles)!, Wait(r, applyWait, applyTimeout), ct)));
root.Subcommands.Add(apply);

// get
var getKind = new Argument<string>("kind") { Description = "ippool, ipreservation, blocks, nodes, networkpolicy, globalnetworkpolicy, tier, namespace, pod" };
var getName = new Argument<string?>("name") { Arity = ArgumentArity.ZeroOrOne };
var get = new Command("get", "list resources") { getKind, getName, output };
get.SetAction((r, ct) => Guard(() => ResourceCommands.GetAsync(Ctx(r), r.GetValue(getKind)!, r.GetValue(getName), r.GetValue(output) ?? "", ct)));
root.Subcommands.Add(get);

// delete
var delKind = new Argument<string?>("kind") { Arity = ArgumentArity.ZeroOrOne };
var delName = new Argument<string?>("name") { Arity = ArgumentArity.ZeroOrOne };
var delFiles = new Option<string[]>("--filename", "-f") { Description = "delete the resources named in these files", AllowMultipleArgumentsPerToken = true };
var force = new Option<bool>("--force") { Description = "delete a pool even though addresses are still allocated from it" };
var delWait = WaitOption();
var delTimeout = WaitTimeout();
var delete = new Command("delete", "delete resources") { delKind, delName, delFiles, force, delWait, delTimeout };
delete.SetAction((r, ct) => Guard(() => ResourceCommands.DeleteAsync(Ctx(r), r.GetValue(delKind), r.GetValue(delName), r.GetValue(delFiles) ?? [], r.GetValue(force), Wait(r, delWait, delTimeout), ct)));
root.Subcommands.Add(delete);

// ipam
var ipam = new Command("ipam", "IP address management: usage, consistency, repair");
var showIp = new Option<string?>("--ip") { Description = "show who holds this address" };
var showBlocks = new Option<bool>("--show-blocks") { Description = "also list each allocation block" };
var show = new Command("show", "pool and block usage, or one address") { showIp, showBlocks };
show.SetAction((r, ct) => Guard(() => IpamCommands.ShowAsync(Ctx(r), r.GetValue(showIp), r.GetValue(showBlocks), ct)));
var grace = new Option<string>("--grace") { Description = "allocations younger than this are not reported as leaks (ADDs in flight), e.g. 30s, 5m, 0s", DefaultValueFactory = _ => "60s" };
var checkOutput = new Option<string>("--output", "-o") { Description = "text or json", DefaultValueFactory = _ => "text" };
var check = new Command("check", "cross-check blocks, handles and endpoints; report leaks") { grace, checkOutput };
check.SetAction((r, ct) => Guard(() => IpamCommands.CheckAsync(Ctx(r), ParseDuration(r.GetValue(grace)!), r.GetValue(checkOutput)!, ct)));
var releaseIp = new Option<string[]>("--ip") { Description = "address to release", Required = true, AllowMultipleArgumentsPerToken = true };
var release = new Command("release", "release addresses whatever holds them (repair after `ipam check`)") { releaseIp };
release.SetAction((r, ct) => Guard(() => IpamCommands.ReleaseAsync(Ctx(r), r.GetValue(releaseIp)!, ct)));
ipam.Subcommands.Add(show);
ipam.Subcommands.Add(check);
ipam.Subcommands.Add(release);
root.Subcommands.Add(ipam);

// policy
var policy = new Command("policy", "see a policy's effect before applying it");
var simFiles = new Option<string[]>("--filename", "-f") { Description = "YAML streams of v1 Namespace, v1 Pod (labels, status.podIP, container ports) and policies", Required = true, AllowMultipleArgumentsPerToken = true };
var simPort = new Option<int>("--port") { DefaultValueFactory = _ => 80 };
var simProtocol = new Option<string>("--protocol") { Description = "TCP, UDP or SCTP", DefaultValueFactory = _ => "TCP" };
var simOut = new Option<string>("--output", "-o") { Description = "table or json", DefaultValueFactory = _ => "table" };
var simulate = new Command("simulate", "the reachability matrix the policies give, in `lab matrix`'s shape") { simFiles, simPort, simProtocol, simOut };
simulate.SetAction((r, ct) => Guard(() => PolicyCommands.SimulateAsync(Ctx(r), r.GetValue(simFiles)!, r.GetValue(simPort), r.GetValue(simProtocol)!, r.GetValue(simOut)!)));
var traceFiles = new Option<string[]>("--filename", "-f") { Description = "documents to trace against (default: the datastore)", AllowMultipleArgumentsPerToken = true };
var traceFrom = new Option<string>("--from") { Description = "ns/pod or IP", Required = true };
var traceTo = new Option<string>("--to") { Description = "ns/pod or IP", Required = true };
var trace = new Command("trace", "which rule of which policy decides a connection, and why") { traceFiles, traceFrom, traceTo, simPort, simProtocol, simOut };
trace.SetAction((r, ct) => Guard(() => PolicyCommands.TraceAsync(Ctx(r), r.GetValue(traceFiles) ?? [], r.GetValue(traceFrom)!, r.GetValue(traceTo)!, r.GetValue(simPort), r.GetValue(simProtocol)!, r.GetValue(simOut) is "table" ? "text" : r.GetValue(simOut)!, ct)));
policy.Subcommands.Add(simulate);
policy.Subcommands.Add(trace);
root.Subcommands.Add(policy);

// lab
var lab = new Command("lab", "a real multi-node Weft cluster in network namespaces on this machine");
var labName = new Option<string>("--name") { Description = "lab name", DefaultValueFactory = _ => "weft" };
var nodes = new Option<int>("--nodes") { DefaultValueFactory = _ => 3 };
var podsPerNode = new Option<int>("--pods-per-node") { DefaultValueFactory = _ => 2 };
var backend = new Option<string>("--backend") { Description = "vxlan or host-gw", DefaultValueFactory = _ => "vxlan" };
var mode = new Option<string>("--mode") { Description = "routed or bridge", DefaultValueFactory = _ => "routed" };
var topology = new Option<string?>("--topology") { Description = "YAML stream of v1 Namespace and v1 Pod" };
// `lab up --datastore sqlite|etcd` reuses the global --datastore option as the kind of datastore to run.
var labPolicy = new Option<string>("--policy") { Description = "on (agents enforce network policy, default) or off", DefaultValueFactory = _ => "on" };
var labFlows = new Option<string>("--flows") { Description = "on (agents capture flows, default) or off", DefaultValueFactory = _ => "on" };
var labMasquerade = new Option<string>("--masquerade") { Description = "how agents masquerade natOutgoing traffic: auto (bpf when the kernel allows, default), bpf or nftables", DefaultValueFactory = _ => "auto" };
var labPool = new Option<string?>("--pool") { Description = "IPPool documents (Calico v3, as written) to use instead of the lab's default pool" };
var labDataplane = new Option<string?>("--dataplane") { Description = "the agents' policy dataplane: nftables or bpf (default: what an applied Installation says, else nftables)" };
var labNetConf = new Option<string?>("--net-conf") { Description = "Flannel's net-conf.json: agents run from it (its Backend.Type picks the backend; its Network becomes the pool unless --pool)" };
var labNodeGrace = new Option<int>("--node-release-grace") { Description = "kubernetes datastore: seconds after a Node's deletion before its addresses and blocks are released (default 60)", DefaultValueFactory = _ => 60 };
var up = new Command("up", "build the lab") { labName, nodes, podsPerNode, backend, mode, topology, labPolicy, labFlows, labMasquerade, labPool, labNetConf, labDataplane, labNodeGrace };
up.SetAction((r, ct) => Guard(() => Weft.Lab.LabCommands.UpAsync(Ctx(r), new(r.GetValue(labName)!, r.GetValue(nodes), r.GetValue(podsPerNode), r.GetValue(backend)!, r.GetValue(mode)!, r.GetValue(datastore) ?? "sqlite", r.GetValue(topology), r.GetValue(labPolicy)!, r.GetValue(labFlows)!, r.GetValue(labMasquerade)!, r.GetValue(labPool), r.GetValue(labNetConf), r.GetValue(labDataplane), r.GetValue(labNodeGrace)), ct)));
var down = new Command("down", "remove every namespace, process and file of the lab") { labName };
down.SetAction((r, ct) => Guard(() => Weft.Lab.LabCommands.DownAsync(Ctx(r), r.GetValue(labName)!)));
var labOut = new Option<string>("--output", "-o") { DefaultValueFactory = _ => "table" };
var status = new Command("status", "nodes and pods of the lab") { labName, labOut };
status.SetAction((r, ct) => Guard(() => Weft.Lab.LabCommands.StatusAsync(Ctx(r), r.GetValue(labName)!, r.GetValue(labOut)!, ct)));
var execPod = new Argument<string?>("pod") { Arity = ArgumentArity.ZeroOrOne };
var execNode = new Option<string?>("--node");
var execCmd = new Argument<string[]>("command") { Arity = ArgumentArity.ZeroOrMore };
var exec = new Command("exec", "run a command in a pod's or node's namespace: lab exec POD -- CMD...") { labName, execNode, execPod, execCmd };
exec.SetAction(r => GuardSync(() => Weft.Lab.LabCommands.Exec(Ctx(r), r.GetValue(labName)!, r.GetValue(execPod), r.GetValue(execNode), r.GetValue(execCmd) ?? [])));
var port = new Option<int>("--port") { DefaultValueFactory = _ => 80 };
var protocol = new Option<string>("--protocol") { DefaultValueFactory = _ => "TCP" };
var timeoutMs = new Option<int>("--timeout-ms") { DefaultValueFactory = _ => 1000 };
var matrix = new Command("matrix", "probe every pod from every pod with real packets") { labName, port, protocol, timeoutMs, labOut };
matrix.SetAction((r, ct) => Guard(() => Weft.Lab.LabCommands.MatrixAsync(Ctx(r), r.GetValue(labName)!, r.GetValue(port), r.GetValue(protocol)!, r.GetValue(timeoutMs), r.GetValue(labOut)!, ct)));
var serveTcp = new Option<string>("--tcp") { DefaultValueFactory = _ => "" };
var serveUdp = new Option<string>("--udp") { DefaultValueFactory = _ => "" };
var serve = new Command("serve", "(inside a lab pod) answer HTTP on TCP ports and echo on UDP ports") { serveTcp, serveUdp };
serve.Hidden = true;
serve.SetAction((r, ct) => Weft.Lab.PodServer.RunAsync(Ports(r.GetValue(serveTcp)!), Ports(r.GetValue(serveUdp)!), ct));
var apiListen = new Option<string>("--listen") { Required = true };
var apiTokenFile = new Option<string>("--token-file") { Description = "the kubeconfig whose token clients must present", Required = true };
var apiAgentTokenFile = new Option<string?>("--agent-token-file") { Description = "the kubeconfig whose token gets deploy/weft.yaml's weft-agent ClusterRole, no more" };
var apiserver = new Command("apiserver", "(inside a lab's control-plane namespace) the lab's Kubernetes API server") { apiListen, apiTokenFile, apiAgentTokenFile };
apiserver.Hidden = true;
apiserver.SetAction((r, ct) => Weft.Lab.LabCommands.ApiServerAsync(r.GetValue(apiListen)!, r.GetValue(apiTokenFile)!, r.GetValue(apiAgentTokenFile), ct));
var restartNode = new Option<string>("--node") { Required = true };
var restartKill = new Option<bool>("--kill") { Description = "SIGKILL the running agent instead of a clean stop" };
var restartStop = new Option<bool>("--stop") { Description = "only stop it" };
var restart = new Command("restart-agent", "stop a node's weft-agent and start it again") { labName, restartNode, restartKill, restartStop };
restart.SetAction((r, ct) => Guard(() => Weft.Lab.LabCommands.RestartAgentAsync(Ctx(r), r.GetValue(labName)!, r.GetValue(restartNode)!, r.GetValue(restartKill), r.GetValue(restartStop), ct)));
var syncTimeout = new Option<int>("--timeout-ms") { DefaultValueFactory = _ => 30000 };
var sync = new Command("sync", "wait until every agent enforces the datastore's current revision (after apply)") { labName, syncTimeout };
sync.SetAction((r, ct) => Guard(() => Weft.Lab.LabCommands.SyncAsync(Ctx(r), r.GetValue(labName)!, r.GetValue(syncTimeout), ct)));
var addPodKey = new Argument<string>("pod") { Description = "NAMESPACE/NAME" };
var addPodNode = new Option<string>("--node") { Required = true };
var addPodLabels = new Option<string[]>("--label") { Description = "k=v (repeat)", AllowMultipleArgumentsPerToken = true };
var addPodPorts = new Option<string[]>("--port") { Description = "PORT[/TCP|UDP] the pod serves (default 80/TCP)", AllowMultipleArgumentsPerToken = true };
var addPod = new Command("add-pod", "add a pod to a running lab through the CNI plugin (its Pod document first)") { labName, addPodKey, addPodNode, addPodLabels, addPodPorts };
addPod.SetAction((r, ct) => Guard(() => Weft.Lab.LabCommands.AddPodAsync(Ctx(r), r.GetValue(labName)!, r.GetValue(addPodKey)!, r.GetValue(addPodNode)!, r.GetValue(addPodLabels) ?? [], r.GetValue(addPodPorts) ?? [], ct)));
var delPodKey = new Argument<string>("pod") { Description = "NAMESPACE/NAME" };
var delPod = new Command("delete-pod", "remove a pod: CNI DEL, its namespace and its Pod document") { labName, delPodKey };
delPod.SetAction((r, ct) => Guard(() => Weft.Lab.LabCommands.DeletePodAsync(Ctx(r), r.GetValue(labName)!, r.GetValue(delPodKey)!, ct)));
foreach (var c in new[] { up, down, status, exec, matrix, serve, apiserver, restart, sync, addPod, delPod }) lab.Subcommands.Add(c);
root.Subcommands.Add(lab);

// observe: hubble observe's flags and meanings
Option<string[]> Many(string name, string description, params string[] aliases)
{
    var o = new Option<string[]>(name, aliases) { Description = description, AllowMultipleArgumentsPerToken = false };
    return o;
}
var obsPod = Many("--pod", "flows from or to this pod ([namespace/]name prefix)");
var obsNamespace = Many("--namespace", "flows from or to pods of this namespace", "-n");
var obsFromPod = Many("--from-pod", "flows from this pod");
var obsToPod = Many("--to-pod", "flows to this pod");
var obsIp = Many("--ip", "flows from or to this address or CIDR");
var obsFromIp = Many("--from-ip", "flows from this address or CIDR");
var obsToIp = Many("--to-ip", "flows to this address or CIDR");
var obsLabel = Many("--label", "flows from or to pods with these labels (k=v[,k2=v2])", "-l");
var obsFromLabel = Many("--from-label", "flows from pods with these labels");
var obsToLabel = Many("--to-label", "flows to pods with these labels");
var obsVerdict = Many("--verdict", "FORWARDED or DROPPED");
var obsProtocol = Many("--protocol", "tcp, udp, sctp, icmpv4, icmpv6");
var obsPort = new Option<int[]>("--port") { Description = "source or destination port" };
var obsFromPort = new Option<int[]>("--from-port") { Description = "source port" };
var obsToPort = new Option<int[]>("--to-port") { Description = "destination port" };
var obsDirection = Many("--traffic-direction", "ingress or egress");
var obsNode = Many("--node", "flows seen on this node (name, or prefix*)");
var obsLast = new Option<int?>("--last") { Description = "the last N flows (default 20 unless --since, --all or --follow)" };
var obsAll = new Option<bool>("--all") { Description = "every flow in the nodes' buffers" };
var obsSince = new Option<string?>("--since") { Description = "flows since a duration ago (5m) or an RFC 3339 time" };
var obsFollow = new Option<bool>("--follow", "-f") { Description = "keep printing new flows" };
var obsOut = new Option<string>("--output", "-o") { Description = "compact, json (Hubble's JSON, one per line) or table", DefaultValueFactory = _ => "compact" };
var obsServer = Many("--server", "an agent's flow API: HOST[:4244] or unix:///path (default: the lab's nodes, else every registered node)");
var observe = new Command("observe", "show flows (forwarded and dropped connections) from every node, as hubble observe")
{
    obsPod, obsNamespace, obsFromPod, obsToPod, obsIp, obsFromIp, obsToIp, obsLabel, obsFromLabel, obsToLabel, obsVerdict, obsProtocol,
    obsPort, obsFromPort, obsToPort, obsDirection, obsNode, obsLast, obsAll, obsSince, obsFollow, obsOut, obsServer,
};
observe.SetAction((r, ct) => Guard(() => FlowCommands.ObserveAsync(Ctx(r), new ObserveOptions
{
    Pods = r.GetValue(obsPod) ?? [], Namespaces = r.GetValue(obsNamespace) ?? [], FromPods = r.GetValue(obsFromPod) ?? [], ToPods = r.GetValue(obsToPod) ?? [],
    Ips = r.GetValue(obsIp) ?? [], FromIps = r.GetValue(obsFromIp) ?? [], ToIps = r.GetValue(obsToIp) ?? [],
    Labels = r.GetValue(obsLabel) ?? [], FromLabels = r.GetValue(obsFromLabel) ?? [], ToLabels = r.GetValue(obsToLabel) ?? [],
    Verdicts = r.GetValue(obsVerdict) ?? [], Protocols = r.GetValue(obsProtocol) ?? [],
    Ports = r.GetValue(obsPort) ?? [], FromPorts = r.GetValue(obsFromPort) ?? [], ToPorts = r.GetValue(obsToPort) ?? [],
    Directions = r.GetValue(obsDirection) ?? [], Nodes = r.GetValue(obsNode) ?? [],
    Last = r.GetValue(obsLast), All = r.GetValue(obsAll), Since = r.GetValue(obsSince), Follow = r.GetValue(obsFollow),
    Output = r.GetValue(obsOut)!, Servers = r.GetValue(obsServer) ?? [], Lab = r.GetValue(labOption),
}, ct)));
root.Subcommands.Add(observe);

var statusServer = Many("--server", "an agent's flow API: HOST[:4244] or unix:///path");
var statusOut = new Option<string>("--output", "-o") { Description = "text or json", DefaultValueFactory = _ => "text" };
var clusterStatus = new Command("status", "the cluster at a glance: datastore, nodes and agents, endpoints, policies, IPAM, flows") { statusServer, statusOut };
clusterStatus.SetAction((r, ct) => Guard(() => FlowCommands.StatusAsync(Ctx(r), r.GetValue(labOption), r.GetValue(statusServer) ?? [], r.GetValue(statusOut)!, ct)));
root.Subcommands.Add(clusterStatus);

var version = new Command("version", "print weftctl's version");
version.SetAction(_ => { Console.WriteLine($"weftctl {typeof(CtlContext).Assembly.GetName().Version}"); return 0; });
root.Subcommands.Add(version);

return await root.Parse(args).InvokeAsync().ConfigureAwait(false);

static async Task<int> Guard(Func<Task<int>> action)
{
    try
    {
        return await action().ConfigureAwait(false);
    }
    catch (Exception e) when (e is ResourceException or IpamException or DatastoreUnavailableException or ArgumentException or InvalidDataException or IOException or Weft.Lab.LabException)
    {
        await Console.Error.WriteLineAsync("error: " + e.Message).ConfigureAwait(false);
        return 1;
    }
    catch (Exception e) when (e is not OperationCanceledException)
    {
        // Unexpected: still one line for the operator, the trace only when asked for.
        await Console.Error.WriteLineAsync($"error: {e.Message}" + (Environment.GetEnvironmentVariable("WEFT_DEBUG") is { Length: > 0 } ? "\n" + e : "")).ConfigureAwait(false);
        return 1;
    }
}

static int GuardSync(Func<int> action)
{
    try { return action(); }
    catch (Exception e) when (e is ArgumentException or Weft.Lab.LabException or IOException)
    {
        Console.Error.WriteLine("error: " + e.Message);
        return 1;
    }
}

static int[] Ports(string list) =>
    list.Split(',', StringSplitOptions.RemoveEmptyEntries).Select(p => int.Parse(p, System.Globalization.CultureInfo.InvariantCulture)).Where(p => p > 0).ToArray();

static TimeSpan ParseDuration(string text)
{
    if (text.Length >= 2 && double.TryParse(text[..^1], System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out var n) && n >= 0)
        switch (text[^1])
        {
            case 's': return TimeSpan.FromSeconds(n);
            case 'm': return TimeSpan.FromMinutes(n);
            case 'h': return TimeSpan.FromHours(n);
        }
    throw new ArgumentException($"--grace '{text}' is not a duration like 30s, 5m or 1h");
}
