using System.Diagnostics.CodeAnalysis;

namespace Weft.Datastore;

/// <summary>Turns a datastore URI into a backend. The only place that knows the URI schemes.</summary>
public static class DatastoreFactory
{
    public const string DefaultUri = "sqlite:///var/lib/weft/weft.db";
    public const string EtcdSwitch = "Weft.Datastore.Etcd";

    /// <summary>
    /// False in a NativeAOT build published with the <c>Weft.Datastore.Etcd</c> feature switch off: the compiler then
    /// leaves the etcd client (gRPC, protobuf, HTTP/2) out. The `weft` plugin is built so, because NativeAOT start-up
    /// grows with code size and that client added ~7 ms to every exec; for etcd it hands over to `weft-etcd`.
    /// </summary>
    [FeatureSwitchDefinition(EtcdSwitch)]
    public static bool EtcdLinked => !AppContext.TryGetSwitch(EtcdSwitch, out var linked) || linked;

    /// <summary>A datastore over the network (etcd, the Kubernetes API): its waits are network waits, and it needs the remote clients.</summary>
    public static bool IsRemote(string uri) =>
        uri.StartsWith(EtcdOptions.Scheme, StringComparison.Ordinal) || uri == Weft.Kubernetes.KubeConnection.Scheme ||
        uri.StartsWith(Weft.Kubernetes.KubeConnection.Scheme + ":///", StringComparison.Ordinal);

    public static IDatastore Open(string uri)
    {
        if (string.IsNullOrWhiteSpace(uri)) uri = DefaultUri;
        if (uri.StartsWith("sqlite://", StringComparison.Ordinal))
        {
            var path = uri["sqlite://".Length..];
            if (path.Length == 0 || path[0] != '/')
                throw new ArgumentException($"datastore '{uri}': sqlite URIs need an absolute path, e.g. sqlite:///var/lib/weft/weft.db");
            return new SqliteDatastore(path);
        }
        // Parsing only: the etcd client connects on first use, so opening costs nothing when etcd is down.
        if (uri.StartsWith(EtcdOptions.Scheme, StringComparison.Ordinal))
        {
            if (!EtcdLinked)
                throw new ArgumentException($"datastore '{uri}': this binary was built without the etcd client; use the weft-etcd plugin (dist/weft-etcd) next to it");
            return new EtcdDatastore(EtcdOptions.Parse(uri));
        }
        if (uri == Weft.Kubernetes.KubeConnection.Scheme || uri.StartsWith(Weft.Kubernetes.KubeConnection.Scheme + "://", StringComparison.Ordinal))
        {
            // The remote clients travel together: weft-etcd carries the Kubernetes one too.
            if (!EtcdLinked)
                throw new ArgumentException($"datastore '{uri}': this binary was built without the remote datastore clients; use the weft-etcd plugin (dist/weft-etcd) next to it");
            return new Weft.Kubernetes.KubeDatastore(Weft.Kubernetes.KubeConnection.Open(uri));
        }
        throw new ArgumentException($"datastore '{uri}': unknown scheme; use sqlite:///path/to/weft.db, etcd://host:2379[,host:2379...], kubernetes (in a pod) or kubernetes:///path/to/kubeconfig");
    }
}
