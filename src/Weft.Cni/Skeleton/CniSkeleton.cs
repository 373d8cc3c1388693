using System.Text;
using System.Text.Json;
using Weft.Cni.Commands;
using Weft.Cni.Config;
using Weft.Datastore;
using Weft.Ipam;
using Weft.Model;
using Weft.Netlink;

namespace Weft.Cni.Skeleton;

/// <summary>
/// Owns everything the spec asks of every plugin: reading CNI_* and stdin, version negotiation, dispatch to the
/// verbs, and turning any failure into the spec's error JSON and a non-zero exit. The one place exceptions
/// become error codes.
/// </summary>
public static class CniSkeleton
{
    public static int Run(Func<string, string?> getenv, Stream stdin, Stream stdout)
    {
        var requestedVersion = CniVersions.Latest;
        try
        {
            var env = CniEnvironment.FromProcess(getenv);
            var input = ReadAll(stdin);
            if (env.Command == "VERSION")
            {
                var asked = input.Length == 0 ? CniVersions.Latest : NetConf.Parse(input, "VERSION").CniVersion;
                WriteVersion(stdout, CniVersions.IsSupported(asked) ? asked : CniVersions.Latest);
                return 0;
            }
            var conf = NetConf.Parse(input, env.Command);
            requestedVersion = conf.CniVersion;
            RequireVersionFor(env.Command, conf.CniVersion);
            if (EtcdHandoff.Needed(conf)) EtcdHandoff.Run(input);
            var plugin = new Plugin(env, conf);
            // A bound on network waits (etcd, the API server). With sqlite every wait is already bounded (busy timeout, IPAM retry
            // limit), and a timed CancellationTokenSource starts the runtime's timer thread: ~1.5 ms per exec.
            using var cts = DatastoreFactory.IsRemote(conf.Datastore) ? new CancellationTokenSource(TimeSpan.FromMinutes(2)) : null;
            var ct = cts?.Token ?? CancellationToken.None;
            switch (env.Command)
            {
                case "ADD":
                    var args = CniArgs.Parse(env.Args);
                    var result = plugin.AddAsync(args, ct).GetAwaiter().GetResult();
                    stdout.Write(result.ToJson(conf.CniVersion));
                    break;
                case "DEL":
                    CniArgs.Parse(env.Args);
                    plugin.DelAsync(ct).GetAwaiter().GetResult();
                    break;
                case "CHECK":
                    plugin.CheckAsync(ct).GetAwaiter().GetResult();
                    break;
                case "STATUS":
                    plugin.StatusAsync(ct).GetAwaiter().GetResult();
                    break;
                case "GC":
                    plugin.GcAsync(ct).GetAwaiter().GetResult();
                    break;
            }
            return 0;
        }
        catch (Exception e)
        {
            var (code, msg, details) = Classify(e);
            WriteError(stdout, requestedVersion, code, msg, details);
            return 1;
        }
        finally
        {
            stdout.Flush();
        }
    }

    private static void RequireVersionFor(string command, string version)
    {
        if (command == "CHECK" && CniVersions.Compare(version, "0.4.0") < 0)
            throw new CniException(CniCodes.IncompatibleVersion, $"CHECK needs cniVersion 0.4.0 or later; the configuration says {version}");
        if (command is "STATUS" or "GC" && CniVersions.Compare(version, "1.1.0") < 0)
            throw new CniException(CniCodes.IncompatibleVersion, $"{command} needs cniVersion 1.1.0 or later; the configuration says {version}");
    }

    internal static (int Code, string Message, string? Details) Classify(Exception e) => e switch
    {
        CniException c => (c.Code, c.Message, c.Details),
        IpamException i => (i.CniCode, i.Message, null),
        DatastoreUnavailableException d => (CniCodes.TryAgainLater, d.Message, null),
        NetlinkException n => (CniCodes.InterfaceSetup, $"kernel refused: {n.Message}", null),
        AggregateException { InnerExceptions.Count: 1 } a => Classify(a.InnerExceptions[0]),
        OperationCanceledException => (CniCodes.TryAgainLater, "timed out; try again", null),
        _ => (CniCodes.Internal, $"internal error: {e.Message}", e.GetType().Name),
    };

    private static byte[] ReadAll(Stream stdin)
    {
        using var ms = new MemoryStream();
        stdin.CopyTo(ms);
        if (ms.Length > 16 * 1024 * 1024)
            throw new CniException(CniCodes.DecodeFailure, "network configuration on stdin is larger than 16 MiB");
        return ms.ToArray();
    }

    private static void WriteVersion(Stream stdout, string version)
    {
        using var w = new Utf8JsonWriter(stdout, PlainJsonEncoder.Options());
        w.WriteStartObject();
        w.WriteString("cniVersion", version);
        w.WriteStartArray("supportedVersions");
        foreach (var v in CniVersions.Supported) w.WriteStringValue(v);
        w.WriteEndArray();
        w.WriteEndObject();
    }

    private static void WriteError(Stream stdout, string version, int code, string msg, string? details)
    {
        using var w = new Utf8JsonWriter(stdout, PlainJsonEncoder.Options(indented: true));
        w.WriteStartObject();
        w.WriteString("cniVersion", CniVersions.IsSupported(version) ? version : CniVersions.Latest);
        w.WriteNumber("code", code);
        w.WriteString("msg", msg);
        if (details is not null) w.WriteString("details", details);
        w.WriteEndObject();
        w.Flush();
        stdout.Write(Encoding.UTF8.GetBytes("\n"));
    }
}
