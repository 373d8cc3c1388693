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

    /// <summary>
    /// The kubernetes datastore watches each kind apart, so events of different keys interleave their revisions; each
    /// kind's own stream stays in order and may be replayed after a reconnect. Whatever the interleaving and however
    /// much is replayed, the cache ends as the datastore is (it once dropped every event below the highest revision
    /// seen: a lab agent missed a pod's endpoint and fenced the pod off).
    /// </summary>
    [Fact]
    public void Interleaved_kinds_and_replays_end_as_the_datastore()
    {
        var op = Gen.Select(Gen.Int[0, 2], Gen.Int[0, 5], Gen.Bool);
        Gen.Select(op.Array[1, 60], Gen.Int[0, 1000]).Sample((ops, seed) =>
        {
            // The history: every write gets the next revision; each of three kinds is its own ordered stream.
            var streams = new List<WatchEvent>[3] { [], [], [] };
            var model = new Dictionary<string, long>(StringComparer.Ordinal);
            long rev = 0;
            foreach (var (kind, n, put) in ops)
            {
                var k = $"/weft/kind{kind}/k{n}";
                rev++;
                streams[kind].Add(new WatchEvent(put ? WatchEventKind.Put : WatchEventKind.Delete, k, put ? [1] : null, rev));
                if (put) model[k] = rev; else model.Remove(k);
            }
            // Delivered interleaved at random, each stream in order, some stretches replayed (a reconnect from an older revision).
            var random = new Random(seed);
            var next = new int[3];
            var cache = new DatastoreCache(null!);
            cache.Load(new RangeResult([], 0));
            while (Enumerable.Range(0, 3).Any(s => next[s] < streams[s].Count))
            {
                var sIdx = Enumerable.Range(0, 3).Where(s => next[s] < streams[s].Count).OrderBy(_ => random.Next()).First();
                cache.Apply([streams[sIdx][next[sIdx]]]);
                next[sIdx]++;
                if (random.Next(8) == 0) next[sIdx] = Math.Max(0, next[sIdx] - random.Next(1, 4)); // replay a few
            }
            var got = cache.ListAsync("/weft/").AsTask().Result;
            Assert.Equal(model.Keys.Order(StringComparer.Ordinal), got.Items.Select(i => i.Key));
            Assert.All(got.Items, i => Assert.Equal(model[i.Key], i.ModRevision));
        }, iter: 300);
    }
}
