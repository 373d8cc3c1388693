namespace Weft.Cni.Skeleton;

public static class CniVersions
{
    public static readonly string[] Supported = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"];
    public const string Latest = "1.1.0";

    public static bool IsSupported(string v) => Array.IndexOf(Supported, v) >= 0;

    /// <summary>Compares dotted versions numerically ("0.4.0" &lt; "1.0.0").</summary>
    public static int Compare(string a, string b) => Parse(a).CompareTo(Parse(b));

    private static Version Parse(string v) => Version.TryParse(v, out var parsed) ? parsed : new Version(0, 0);

    /// <summary>Pre-1.0 results carry "version" in each IP entry.</summary>
    public static bool IsLegacyResult(string v) => Compare(v, "1.0.0") < 0;
}
