namespace Weft.Cni.Skeleton;

/// <summary>The CNI_* environment a runtime sets, validated per command as the spec requires.</summary>
public sealed class CniEnvironment
{
    public required string Command { get; init; }
    public string ContainerId { get; init; } = "";
    public string Netns { get; init; } = "";
    public string IfName { get; init; } = "";
    public string Args { get; init; } = "";
    public string Path { get; init; } = "";

    public static CniEnvironment FromProcess(Func<string, string?> getenv)
    {
        var command = getenv("CNI_COMMAND");
        if (string.IsNullOrEmpty(command))
            throw new CniException(CniCodes.InvalidEnvironment, "CNI_COMMAND is not set; this program is a CNI plugin, run by a container runtime (see https://www.cni.dev/docs/spec/)");
        var env = new CniEnvironment
        {
            Command = command,
            ContainerId = getenv("CNI_CONTAINERID") ?? "",
            Netns = getenv("CNI_NETNS") ?? "",
            IfName = getenv("CNI_IFNAME") ?? "",
            Args = getenv("CNI_ARGS") ?? "",
            Path = getenv("CNI_PATH") ?? "",
        };
        env.Validate();
        return env;
    }

    private void Validate()
    {
        switch (Command)
        {
            case "ADD" or "CHECK":
                RequireContainerId();
                Require("CNI_NETNS", Netns);
                RequireIfName();
                Require("CNI_PATH", Path);
                break;
            case "DEL":
                RequireContainerId();
                RequireIfName();
                break;
            case "GC" or "STATUS" or "VERSION":
                break;
            default:
                throw new CniException(CniCodes.InvalidEnvironment, $"CNI_COMMAND '{Command}' is unknown; expected ADD, DEL, CHECK, STATUS, GC or VERSION");
        }
    }

    private static void Require(string name, string value)
    {
        if (string.IsNullOrEmpty(value)) throw new CniException(CniCodes.InvalidEnvironment, $"{name} is required for this command but is not set");
    }

    private void RequireContainerId()
    {
        Require("CNI_CONTAINERID", ContainerId);
        // Spec: alphanumerics plus underscore, dot and hyphen, starting with an alphanumeric.
        if (!char.IsAsciiLetterOrDigit(ContainerId[0]) || ContainerId.Length > 1024 ||
            ContainerId.Any(c => !(char.IsAsciiLetterOrDigit(c) || c is '_' or '.' or '-')))
            throw new CniException(CniCodes.InvalidEnvironment, $"CNI_CONTAINERID '{Truncate(ContainerId)}' is invalid: use letters, digits, '_', '.', '-', starting with a letter or digit");
    }

    private void RequireIfName()
    {
        Require("CNI_IFNAME", IfName);
        if (IfName.Length > 15 || IfName is "." or ".." || IfName.Any(c => c is '/' or ':' || char.IsWhiteSpace(c) || char.IsControl(c)))
            throw new CniException(CniCodes.InvalidEnvironment, $"CNI_IFNAME '{Truncate(IfName)}' is not a valid interface name (at most 15 characters, no '/', ':' or whitespace)");
    }

    private static string Truncate(string s) => s.Length > 64 ? s[..64] + "..." : s;
}
