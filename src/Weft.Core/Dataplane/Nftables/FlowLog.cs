using Weft.Policy.Ir;

namespace Weft.Dataplane.Nftables;

/// <summary>
/// How the policy table tells the agent's flow collector what it decided: every verdict on a new connection is a
/// `log group N prefix "weft:VD:TOKEN"` statement next to the verdict. V is A (allowed), X (a Deny rule dropped it)
/// or D (nothing allowed it: end of tier, or an endpoint not programmed yet); D is the direction, I or E; TOKEN
/// names the deciding policy or chain and resolves through <see cref="PolicyRuleset.LogMeanings"/>. Prefixes stay
/// short (the kernel keeps 127 bytes) whatever the policy names.
/// </summary>
public static class FlowLog
{
    public const string Start = "weft:";
    /// <summary>Tokens with a fixed meaning: allowed because no policy applies (the profile), dropped because the address is not programmed yet.</summary>
    public const string Profile = "profile", Unprogrammed = "unprogrammed", NoRoute = "noroute";

    public static string Prefix(char verdict, Direction direction, string token) =>
        $"{Start}{verdict}{(direction == Direction.Ingress ? 'I' : 'E')}:{token}";

    public static bool TryParse(string prefix, out char verdict, out Direction direction, out string token)
    {
        verdict = default;
        direction = default;
        token = "";
        if (prefix.Length < Start.Length + 4 || !prefix.StartsWith(Start, StringComparison.Ordinal) || prefix[Start.Length + 2] != ':') return false;
        verdict = prefix[Start.Length];
        if (verdict is not ('A' or 'X' or 'D')) return false;
        var d = prefix[Start.Length + 1];
        if (d is not ('I' or 'E')) return false;
        direction = d == 'I' ? Direction.Ingress : Direction.Egress;
        token = prefix[(Start.Length + 3)..];
        return true;
    }
}
