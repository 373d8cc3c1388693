namespace Weft.Tests.Support;

/// <summary>Datastores seeded with pools through the real weftctl, as an operator would.</summary>
public static class Pools
{
    public const string SeedV4 = """
        apiVersion: projectcalico.org/v3
        kind: IPPool
        metadata:
          name: default-ipv4-ippool
        spec:
          cidr: 10.244.0.0/16
          blockSize: 26
          ipipMode: Never
          vxlanMode: Always
          natOutgoing: true
          nodeSelector: all()
        """;

    public const string SeedV6 = """
        apiVersion: projectcalico.org/v3
        kind: IPPool
        metadata:
          name: default-ipv6-ippool
        spec:
          cidr: fd00:10:244::/48
          blockSize: 122
          natOutgoing: false
          nodeSelector: all()
        """;

    /// <summary>A fresh sqlite datastore file in a temp dir, with the given YAML applied.</summary>
    public static (string Dir, string Uri) NewStore(params string[] yamlDocs)
    {
        var dir = TestEnv.TempDir("ds");
        var uri = "sqlite://" + Path.Combine(dir, "weft.db");
        if (yamlDocs.Length > 0)
        {
            var r = TestEnv.CtlIn(uri, string.Join("\n---\n", yamlDocs), "apply", "-f", "-");
            if (r.ExitCode != 0) throw new InvalidOperationException("weftctl apply failed: " + r.Stderr + r.Stdout);
        }
        return (dir, uri);
    }
}
