using System.Text.Json.Nodes;

namespace Weft.Client.Output;

/// <summary>The reachability matrix shared by `lab matrix` (real packets) and `policy simulate` (the evaluator).</summary>
public static class MatrixView
{
    /// <summary>{"port","protocol","pods","allowed"}: allowed[i][j] means pods[i] → pods[j] connects.</summary>
    public static string Json(int port, string protocol, IReadOnlyList<string> pods, bool[][] allowed) =>
        new JsonObject
        {
            ["port"] = port, ["protocol"] = protocol,
            ["pods"] = new JsonArray(pods.Select(p => (JsonNode?)p).ToArray()),
            ["allowed"] = new JsonArray(allowed.Select(row => (JsonNode?)new JsonArray(row.Select(b => (JsonNode?)b).ToArray())).ToArray()),
        }.ToJsonString();

    public static void Render(TextWriter output, int port, string protocol, IReadOnlyList<string> pods, bool[][] allowed)
    {
        var color = !Console.IsOutputRedirected && Environment.GetEnvironmentVariable("NO_COLOR") is null;
        var width = pods.Count == 0 ? 0 : pods.Max(p => p.Length);
        output.WriteLine($"{protocol}/{port}: row = from, column = to ({"\u2713"} connected, . blocked)");
        output.Write(new string(' ', width + 1));
        for (var j = 0; j < pods.Count; j++) output.Write($"{j,3}");
        output.WriteLine();
        for (var i = 0; i < pods.Count; i++)
        {
            output.Write(pods[i].PadRight(width + 1));
            for (var j = 0; j < pods.Count; j++)
            {
                var cell = allowed[i][j] ? "  \u2713" : "  .";
                output.Write(color ? (allowed[i][j] ? $"\u001b[32m{cell}\u001b[0m" : $"\u001b[31m{cell}\u001b[0m") : cell);
            }
            output.WriteLine($"   {i}");
        }
    }
}
