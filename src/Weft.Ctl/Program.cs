using System.CommandLine;
using Weft.Ctl.Commands;
using Weft.Datastore;
using Weft.Ipam;
using Weft.Resources;

// weftctl: the operator CLI. Each verb is a small function in Commands/; this file only wires the grammar.
var datastore = new Option<string?>("--datastore") { Description = "datastore URI (default $WEFT_DATASTORE or " + DatastoreFactory.DefaultUri + ")", Recursive = true };
var output = new Option<string>("--output", "-o") { Description = "output format: wide, json or yaml", DefaultValueFactory = _ => "" };

var root = new RootCommand("weftctl: operate a Weft pod network (IP pools, IPAM, policies, flows, lab)");
root.Options.Add(datastore);

CtlContext Ctx(ParseResult r) => new(r.GetValue(datastore), Console.Out, Console.Error);

// apply
var applyFiles = new Option<string[]>("--filename", "-f") { Description = "file, directory or - for stdin (YAML or JSON)", Required = true, AllowMultipleArgumentsPerToken = true };
var apply = new Command("apply", "create or update resources from YAML/JSON documents (Calico IPPool, IPReservation)") { applyFiles };
apply.SetAction((r, ct) => Guard(() => ResourceCommands.ApplyAsync(Ctx(r), r.GetValue(applyFiles)!, ct)));
root.Subcommands.Add(apply);

// get
var getKind = new Argument<string>("kind") { Description = "ippool, ipreservation or blocks" };
var getName = new Argument<string?>("name") { Arity = ArgumentArity.ZeroOrOne };
var get = new Command("get", "list resources") { getKind, getName, output };
get.SetAction((r, ct) => Guard(() => ResourceCommands.GetAsync(Ctx(r), r.GetValue(getKind)!, r.GetValue(getName), r.GetValue(output) ?? "", ct)));
root.Subcommands.Add(get);

// delete
var delKind = new Argument<string?>("kind") { Arity = ArgumentArity.ZeroOrOne };
var delName = new Argument<string?>("name") { Arity = ArgumentArity.ZeroOrOne };
var delFiles = new Option<string[]>("--filename", "-f") { Description = "delete the resources named in these files", AllowMultipleArgumentsPerToken = true };
var force = new Option<bool>("--force") { Description = "delete a pool even though addresses are still allocated from it" };
var delete = new Command("delete", "delete resources") { delKind, delName, delFiles, force };
delete.SetAction((r, ct) => Guard(() => ResourceCommands.DeleteAsync(Ctx(r), r.GetValue(delKind), r.GetValue(delName), r.GetValue(delFiles) ?? [], r.GetValue(force), ct)));
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
    catch (Exception e) when (e is ResourceException or IpamException or DatastoreUnavailableException or ArgumentException or InvalidDataException or IOException)
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
