using CsCheck;
using Weft.Agent.Reconcile;
using Weft.Datastore;

namespace Weft.Tests.Agent;

/// <summary>The agent's datastore copy answers prefix lists exactly as a scan of every key would.</summary>
public sealed class DatastoreCacheTests
{
    private static readonly string[] Prefixes = ["/weft/", "/weft/ipam/", "/weft/ipam/blocks/", "/weft/nodes/", "/weft/nodes/n1", "/weft/x", ""];

    [Fact]
    public void Prefix_lists_match_a_full_scan_through_puts_and_deletes()
    {
        var key = Gen.Select(Gen.OneOfConst("/weft/ipam/blocks/", "/weft/ipam/handles/", "/weft/nodes/", "/weft/nodesX/", "/weft/x"), Gen.Int[0, 20])
            .Select((p, i) => p + "n" + i);
        Gen.Select(key, Gen.Bool).Array[1, 80].Sample(ops =>
        {
            var cache = new DatastoreCache(null!);
            cache.Load(new RangeResult([], 0));
            var model = new Dictionary<string, long>(StringComparer.Ordinal);
            long rev = 0;
            foreach (var (k, put) in ops)
            {
                rev++;
                cache.Apply([new WatchEvent(put ? WatchEventKind.Put : WatchEventKind.Delete, k, put ? [1] : null, rev)]);
                if (put) model[k] = rev; else model.Remove(k);
            }
            foreach (var prefix in Prefixes)
            {
                var got = cache.ListAsync(prefix).AsTask().Result;
                Assert.Equal(model.Keys.Where(k => k.StartsWith(prefix, StringComparison.Ordinal)).Order(StringComparer.Ordinal), got.Items.Select(i => i.Key));
                Assert.All(got.Items, i => Assert.Equal(model[i.Key], i.ModRevision));
                Assert.Equal(rev, got.Revision);
            }
        }, iter: 300);
    }
}
