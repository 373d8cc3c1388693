using Weft.Cni.Config;
using Weft.Datastore;
using Weft.Native;

namespace Weft.Cni.Skeleton;

/// <summary>
/// `weft` is published without the remote datastore clients (etcd, Kubernetes), so the sqlite path keeps its start-up
/// time (NativeAOT start-up grows with code size; gRPC and protobuf added ~7 ms to every exec, measured with VERSION).
/// For an etcd:// or kubernetes datastore it becomes `weft-etcd` from its own directory, the same plugin published
/// with both clients, by execve: same environment, same stdout, the configuration it already read handed over as stdin.
/// </summary>
internal static class EtcdHandoff
{
    public const string Binary = "weft-etcd";

    public static bool Needed(NetConf conf) => !DatastoreFactory.EtcdLinked && DatastoreFactory.IsRemote(conf.Datastore);

    /// <summary>Does not return: the process becomes weft-etcd, or this throws a CNI error.</summary>
    public static void Run(byte[] input)
    {
        var dir = Path.GetDirectoryName(Environment.ProcessPath) ?? ".";
        var target = Path.Combine(dir, Binary);
        if (!File.Exists(target))
            throw new CniException(CniCodes.InvalidNetworkConfig, $"the etcd or kubernetes datastore needs {Binary} in {dir} beside weft (install both from dist/)");
        try { ExecHandoff.Replace(target, input); }
        catch (IOException e) { throw new CniException(CniCodes.Internal, $"cannot run {target} for the remote datastore: {e.Message}"); }
    }
}
