using Weft.Agent.Calculators;

namespace Weft.Agent.Drivers;

/// <summary>natOutgoing in one dataplane: nftables masquerade (conntrack) or the BPF programs on the uplink.</summary>
public interface INatDriver
{
    /// <summary>"nftables" or "bpf", for logs and /status.</summary>
    string Mode { get; }

    /// <summary>Programs this pool set; false when it was already in place (nothing done).</summary>
    bool Apply(NatPools pools);
}
