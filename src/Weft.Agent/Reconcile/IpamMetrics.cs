using System.Globalization;
using System.Text;
using Weft.Datastore;
using Weft.Model;

namespace Weft.Agent.Reconcile;

/// <summary>IPAM usage of this node's blocks, read from the datastore at scrape time (scrapes are seconds apart).</summary>
public static class IpamMetrics
{
    public static async Task AppendAsync(StringBuilder sb, IDatastore store, string node, CancellationToken ct)
    {
        long blocks = 0, capacity = 0, inUse = 0;
        try
        {
            foreach (var kv in (await store.ListAsync(Keys.Blocks, ct).ConfigureAwait(false)).Items)
            {
                var b = Codec.Decode(kv.Value, ModelJson.Default.AllocationBlock, kv.Key);
                if (b.Affinity != node) continue;
                blocks++;
                capacity += b.Network.Size > (UInt128)long.MaxValue ? long.MaxValue : (long)b.Network.Size;
                inUse += b.Allocations.Count;
            }
        }
        catch (Exception e) when (e is DatastoreUnavailableException or InvalidDataException or TimeoutException)
        {
            sb.Append("# weft_ipam_*: datastore unavailable\n");
            return;
        }
        var inv = CultureInfo.InvariantCulture;
        sb.Append(inv, $"# HELP weft_ipam_blocks address blocks affine to this node\n# TYPE weft_ipam_blocks gauge\nweft_ipam_blocks {blocks}\n");
        sb.Append(inv, $"# HELP weft_ipam_addresses addresses in this node's blocks\n# TYPE weft_ipam_addresses gauge\nweft_ipam_addresses {capacity}\n");
        sb.Append(inv, $"# HELP weft_ipam_addresses_in_use addresses allocated from this node's blocks\n# TYPE weft_ipam_addresses_in_use gauge\nweft_ipam_addresses_in_use {inUse}\n");
    }
}
