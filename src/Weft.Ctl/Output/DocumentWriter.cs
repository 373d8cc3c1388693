using System.Text.Json;
using System.Text.Json.Nodes;
using Weft.Model;
using YamlDotNet.Serialization;

namespace Weft.Ctl.Output;

/// <summary>Renders stored records back as the Calico documents an operator would apply.</summary>
public static class DocumentWriter
{
    public static JsonObject ToDocument(IPPool p) => Weft.Resources.CalicoDocuments.ToDocument(p);

    public static JsonObject ToDocument(IPReservation r) => Weft.Resources.CalicoDocuments.ToDocument(r);

    /// <summary>One document as JSON, several as a v1 List (what calicoctl prints).</summary>
    public static string Json(IReadOnlyList<JsonObject> docs, bool asList)
    {
        JsonNode node = asList || docs.Count != 1
            ? new JsonObject { ["apiVersion"] = "v1", ["kind"] = "List", ["items"] = new JsonArray(docs.Select(d => (JsonNode?)d.DeepClone()).ToArray()) }
            : docs[0];
        return node.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n";
    }

    public static string Yaml(IReadOnlyList<JsonObject> docs, bool asList)
    {
        var serializer = new SerializerBuilder().Build();
        if (asList || docs.Count != 1)
        {
            var list = new Dictionary<string, object?> { ["apiVersion"] = "v1", ["kind"] = "List", ["items"] = docs.Select(d => Plain(d)).ToList() };
            return serializer.Serialize(list);
        }
        return serializer.Serialize(Plain(docs[0]));
    }

    /// <summary>JSON tree → dictionaries, lists and scalars, which YamlDotNet serialises without reflection on our types.</summary>
    private static object? Plain(JsonNode? node) => node switch
    {
        JsonObject o => o.ToDictionary(p => p.Key, p => Plain(p.Value)),
        JsonArray a => a.Select(Plain).ToList(),
        JsonValue v => v.GetValueKind() switch
        {
            JsonValueKind.String => v.GetValue<string>(),
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            JsonValueKind.Number => long.TryParse(v.ToJsonString(), out var l) ? l : double.Parse(v.ToJsonString(), System.Globalization.CultureInfo.InvariantCulture),
            _ => null,
        },
        _ => null,
    };
}
