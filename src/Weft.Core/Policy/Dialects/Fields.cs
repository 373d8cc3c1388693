using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Weft.Model;
using Weft.Model.Selectors;
using Weft.Resources;

namespace Weft.Policy.Dialects;

/// <summary>
/// Typed reads of one JSON object with errors that name the document and the field path:
/// "pol.yaml, document 2 (NetworkPolicy x/web): spec.ingress[0].ports[1].port: 70000 is out of range (1-65535)".
/// </summary>
internal readonly struct Fields(JsonObject obj, string where, string path)
{
    public JsonObject Object => obj;
    public string Where => where;
    public string Path => path;

    public ResourceException Error(string field, string message) =>
        new($"{where}: {At(field)}: {message}");

    public ResourceException Error(string message) => new($"{where}: {(path.Length == 0 ? "" : path + ": ")}{message}");

    public string At(string field) => path.Length == 0 ? field : $"{path}.{field}";

    public bool Has(string field) => obj[field] is not null;

    public void RejectUnknown(params string[] known)
    {
        foreach (var key in obj.Select(p => p.Key))
            if (!known.Contains(key, StringComparer.Ordinal))
                throw new ResourceException($"{where}: unknown field {At(key)}; known fields here: {string.Join(", ", known.Order(StringComparer.Ordinal))}");
    }

    public string? String(string field)
    {
        var node = obj[field];
        if (node is null) return null;
        return node.GetValueKind() == JsonValueKind.String ? node.GetValue<string>() : throw Error(field, $"must be a string, got {node.ToJsonString()}");
    }

    public bool? Bool(string field)
    {
        var node = obj[field];
        if (node is null) return null;
        return node.GetValueKind() switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw Error(field, $"must be true or false, got {node.ToJsonString()}"),
        };
    }

    public double? Number(string field)
    {
        var node = obj[field];
        if (node is null) return null;
        return node.GetValueKind() == JsonValueKind.Number && double.TryParse(node.ToJsonString(), NumberStyles.Float, CultureInfo.InvariantCulture, out var d)
            ? d : throw Error(field, $"must be a number, got {node.ToJsonString()}");
    }

    public int? Int(string field)
    {
        var node = obj[field];
        if (node is null) return null;
        return node.GetValueKind() == JsonValueKind.Number && int.TryParse(node.ToJsonString(), NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out var i)
            ? i : throw Error(field, $"must be an integer, got {node.ToJsonString()}");
    }

    public Fields? Child(string field)
    {
        var node = obj[field];
        if (node is null) return null;
        return node is JsonObject o ? new Fields(o, where, At(field)) : throw Error(field, "must be a mapping");
    }

    /// <summary>A list of mappings; null when absent.</summary>
    public IReadOnlyList<Fields>? Objects(string field)
    {
        var node = obj[field];
        if (node is null) return null;
        if (node is not JsonArray arr) throw Error(field, "must be a list");
        var list = new List<Fields>();
        for (var i = 0; i < arr.Count; i++)
            list.Add(arr[i] is JsonObject o ? new Fields(o, where, $"{At(field)}[{i}]") : throw Error($"{field}[{i}]", "must be a mapping"));
        return list;
    }

    public IReadOnlyList<string>? Strings(string field)
    {
        var node = obj[field];
        if (node is null) return null;
        if (node is not JsonArray arr) throw Error(field, "must be a list of strings");
        var list = new List<string>();
        for (var i = 0; i < arr.Count; i++)
            list.Add(arr[i]?.GetValueKind() == JsonValueKind.String ? arr[i]!.GetValue<string>() : throw Error($"{field}[{i}]", "must be a string"));
        return list;
    }

    public IReadOnlyDictionary<string, string> StringMap(string field)
    {
        var node = obj[field];
        if (node is null) return new Dictionary<string, string>();
        if (node is not JsonObject map) throw Error(field, "must be a mapping of strings");
        var d = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (k, v) in map)
            d[k] = v?.GetValueKind() switch
            {
                JsonValueKind.String => v.GetValue<string>(),
                JsonValueKind.Number or JsonValueKind.True or JsonValueKind.False => v.ToJsonString(),
                _ => throw Error($"{field}.{k}", "must be a string"),
            };
        return d;
    }

    public Cidr Cidr(string field, string text)
    {
        if (!Model.Cidr.TryParse(text, out var c, out var err)) throw Error(field, err);
        return c;
    }

    public Selector Selector(string field, string text)
    {
        if (!Model.Selectors.Selector.TryParse(text, out var s, out var err)) throw Error(field, $"invalid selector '{text}': {err}");
        return s;
    }

    public static int CheckPort(Fields f, string field, int port) =>
        port is >= 1 and <= 65535 ? port : throw f.Error(field, $"{port} is out of range (1-65535)");
}
