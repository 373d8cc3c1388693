namespace Weft.Datastore;

/// <summary>Turns a datastore URI into a backend. The only place that knows the URI schemes.</summary>
public static class DatastoreFactory
{
    public const string DefaultUri = "sqlite:///var/lib/weft/weft.db";

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
            return new EtcdDatastore(EtcdOptions.Parse(uri));
        if (uri.StartsWith("kubernetes", StringComparison.Ordinal))
            throw new ArgumentException($"datastore '{uri}': this build supports sqlite:// and etcd:// so far");
        throw new ArgumentException($"datastore '{uri}': unknown scheme; use sqlite:///path/to/weft.db or etcd://host:2379[,host:2379...]");
    }
}
