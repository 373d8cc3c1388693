using System.Runtime.InteropServices;

namespace Weft.Native;

/// <summary>libnftables: one context, commands in its JSON syntax, each buffer committed as one transaction.</summary>
internal static partial class NftNative
{
    private const string Lib = "libnftables.so.1";
    public const uint NFT_CTX_OUTPUT_JSON = 1 << 4;

    [LibraryImport(Lib)] public static partial IntPtr nft_ctx_new(uint flags);
    [LibraryImport(Lib)] public static partial void nft_ctx_free(IntPtr ctx);
    [LibraryImport(Lib)] public static partial void nft_ctx_output_set_flags(IntPtr ctx, uint flags);
    [LibraryImport(Lib)] public static partial int nft_ctx_buffer_output(IntPtr ctx);
    [LibraryImport(Lib)] public static partial int nft_ctx_buffer_error(IntPtr ctx);
    [LibraryImport(Lib)] public static partial IntPtr nft_ctx_get_output_buffer(IntPtr ctx);
    [LibraryImport(Lib)] public static partial IntPtr nft_ctx_get_error_buffer(IntPtr ctx);
    [LibraryImport(Lib, StringMarshalling = StringMarshalling.Utf8)] public static partial int nft_run_cmd_from_buffer(IntPtr ctx, string buffer);
}

internal sealed class NftContextHandle : SafeHandle
{
    public NftContextHandle() : base(IntPtr.Zero, ownsHandle: true) { }
    public NftContextHandle(IntPtr h) : this() => SetHandle(h);
    public override bool IsInvalid => handle == IntPtr.Zero;
    protected override bool ReleaseHandle() { NftNative.nft_ctx_free(handle); return true; }
}
