namespace Weft.Cni.Skeleton;

/// <summary>The spec's well-known error codes (CNI 1.1 "Error" section) and Weft's own (100+).</summary>
public static class CniCodes
{
    public const int IncompatibleVersion = 1;
    public const int UnsupportedField = 2;
    public const int UnknownContainer = 3;
    public const int InvalidEnvironment = 4;
    public const int IoFailure = 5;
    public const int DecodeFailure = 6;
    public const int InvalidNetworkConfig = 7;
    public const int TryAgainLater = 11;
    public const int PluginNotAvailable = 50;
    public const int LimitedConnectivity = 51;
    public const int Internal = 100;
    // 101-104 are IPAM's (Weft.Ipam.IpamCodes).
    public const int InterfaceSetup = 110;
    public const int CheckFailed = 120;
    public const int DelegateFailed = 130;
}

/// <summary>A failure reported to the runtime as the spec's error JSON.</summary>
public sealed class CniException(int code, string message, string? details = null, Exception? inner = null) : Exception(message, inner)
{
    public int Code { get; } = code;
    public string? Details { get; } = details;
}
