using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using Weft.Native;

namespace Weft.Nftables;

public sealed class NftException(string message) : Exception(message);

/// <summary>
/// nftables through libnftables' JSON API, in the calling thread's network namespace (the context binds its
/// netlink socket there on first use). Each <see cref="Run"/> is one kernel transaction: all of it or none of it.
/// </summary>
public sealed class Nft : IDisposable
{
    private readonly NftContextHandle _ctx;

    public Nft()
    {
        IntPtr raw;
        try { raw = NftNative.nft_ctx_new(0); }
        catch (DllNotFoundException e) { throw new NftException("libnftables.so.1 is not installed (apt-get install libnftables1): " + e.Message); }
        _ctx = new NftContextHandle(raw);
        if (_ctx.IsInvalid) throw new NftException("nft_ctx_new failed");
        NftNative.nft_ctx_output_set_flags(raw, NftNative.NFT_CTX_OUTPUT_JSON);
        _ = NftNative.nft_ctx_buffer_output(raw);
        _ = NftNative.nft_ctx_buffer_error(raw);
    }

    /// <summary>Runs a {"nftables":[...]} document; returns the JSON output (for list commands).</summary>
    public string Run(JsonObject commands)
    {
        var raw = _ctx.DangerousGetHandle();
        var rc = NftNative.nft_run_cmd_from_buffer(raw, commands.ToJsonString());
        var output = Marshal.PtrToStringUTF8(NftNative.nft_ctx_get_output_buffer(raw)) ?? "";
        var error = Marshal.PtrToStringUTF8(NftNative.nft_ctx_get_error_buffer(raw)) ?? "";
        if (rc != 0) throw new NftException($"nftables refused the transaction: {error.Trim()}");
        return output;
    }

    public void Dispose() => _ctx.Dispose();
}
