using System.Collections.Concurrent;

namespace Weft.Tests.Support;

/// <summary>
/// Throwaway network namespaces for one test: a node namespace (with an "underlay" veth to a gateway namespace so
/// it has an address and a default route, like a real node) and pod namespaces. Every name carries a per-run
/// prefix; Dispose deletes them all, also after failures. The root namespace is never touched.
/// </summary>
public sealed class Netns : IDisposable
{
    private static int _counter;
    private readonly ConcurrentBag<string> _created = [];
    public string Prefix { get; }
    public string Node { get; }
    public string NodeAddress { get; }

    public Netns(string tag, bool withUnderlay = true)
    {
        Prefix = $"wt{Environment.ProcessId % 100000}-{Interlocked.Increment(ref _counter)}-{tag}";
        Node = Create("node");
        TestEnv.Sh($"ip -n {Node} link set lo up");
        NodeAddress = "198.51.100.10";
        if (withUnderlay)
        {
            var gw = Create("gw");
            TestEnv.Sh($"ip -n {gw} link set lo up && ip -n {Node} link add eth0 type veth peer name eth0 netns {gw} && " +
                       $"ip -n {Node} addr add {NodeAddress}/24 dev eth0 && ip -n {Node} link set eth0 up && " +
                       $"ip -n {gw} addr add 198.51.100.1/24 dev eth0 && ip -n {gw} link set eth0 up && ip -n {Node} route add default via 198.51.100.1");
        }
    }

    public string Create(string suffix)
    {
        var name = $"{Prefix}-{suffix}";
        TestEnv.Sh($"ip netns add {name}");
        _created.Add(name);
        return name;
    }

    /// <summary>A pod namespace; returns its name and its path as CNI_NETNS.</summary>
    public (string Name, string Path) Pod(string suffix)
    {
        var name = Create(suffix);
        TestEnv.Sh($"ip -n {name} link set lo up");
        return (name, "/var/run/netns/" + name);
    }

    public void Delete(string name)
    {
        TestEnv.TrySh($"ip netns delete {name}");
    }

    public void Dispose()
    {
        foreach (var n in _created) TestEnv.TrySh($"ip netns delete {n}");
    }
}
