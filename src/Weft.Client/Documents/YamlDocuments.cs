using System.Globalization;
using System.Text.Json.Nodes;
using Weft.Resources;
using YamlDotNet.Core;
using YamlDotNet.RepresentationModel;

namespace Weft.Client.Documents;

/// <summary>Reads YAML streams (several documents, or a JSON file) into JSON trees, one per document.</summary>
public static class YamlDocuments
{
    public static IReadOnlyList<(JsonObject Doc, DocumentSource Source)> Load(string text, string file)
    {
        var stream = new YamlStream();
        try
        {
            stream.Load(new StringReader(text));
        }
        catch (YamlException e)
        {
            throw new ResourceException($"{file}: invalid YAML at line {e.Start.Line}, column {e.Start.Column}: {e.InnerException?.Message ?? e.Message}");
        }
        var result = new List<(JsonObject, DocumentSource)>();
        var index = 0;
        foreach (var doc in stream.Documents)
        {
            index++;
            var source = new DocumentSource(file, index);
            if (doc.RootNode is YamlScalarNode { Value: null or "" }) continue; // an empty document between "---" separators
            var node = ToJson(doc.RootNode, source, 0);
            if (node is JsonObject obj)
            {
                // A v1 List (kubectl get -o yaml) carries its documents in items.
                if (obj["kind"]?.ToString() is "List" && obj["items"] is JsonArray items)
                {
                    foreach (var item in items.ToList())
                    {
                        items.Remove(item);
                        if (item is JsonObject o) result.Add((o, source));
                    }
                    continue;
                }
                result.Add((obj, source));
            }
            else throw new ResourceException($"{source}: a resource must be a mapping with apiVersion, kind, metadata and spec");
        }
        return result;
    }

    /// <summary>Every document of the stream, read and validated as a resource (what apply takes).</summary>
    public static List<Resource> Resources(string text, string file) => [.. Load(text, file).Select(d => ResourceReader.Read(d.Doc, d.Source))];

    /// <summary>Every document of these files, directories or stdin, read and validated as a resource.</summary>
    public static List<Resource> ResourcesFrom(IEnumerable<string> paths) => [.. LoadPaths(paths).Select(d => ResourceReader.Read(d.Doc, d.Source))];

    public static IReadOnlyList<(JsonObject Doc, DocumentSource Source)> LoadPaths(IEnumerable<string> paths)
    {
        var all = new List<(JsonObject, DocumentSource)>();
        foreach (var path in paths)
        {
            if (path == "-")
            {
                all.AddRange(Load(Console.In.ReadToEnd(), "<stdin>"));
            }
            else if (Directory.Exists(path))
            {
                foreach (var f in Directory.EnumerateFiles(path).Where(f => f.EndsWith(".yaml", StringComparison.Ordinal) || f.EndsWith(".yml", StringComparison.Ordinal) || f.EndsWith(".json", StringComparison.Ordinal)).Order(StringComparer.Ordinal))
                    all.AddRange(Load(File.ReadAllText(f), f));
            }
            else if (File.Exists(path))
            {
                all.AddRange(Load(File.ReadAllText(path), path));
            }
            else throw new ResourceException($"{path}: no such file or directory");
        }
        return all;
    }

    private static JsonNode? ToJson(YamlNode node, DocumentSource source, int depth)
    {
        if (depth > 64) throw new ResourceException($"{source}: nesting deeper than 64 levels");
        switch (node)
        {
            case YamlMappingNode map:
                var obj = new JsonObject();
                foreach (var (k, v) in map.Children)
                {
                    if (k is not YamlScalarNode { Value: { } key })
                        throw new ResourceException($"{source}: line {k.Start.Line}: mapping keys must be plain strings");
                    if (obj.ContainsKey(key))
                        throw new ResourceException($"{source}: line {k.Start.Line}: duplicate key '{key}'");
                    obj[key] = ToJson(v, source, depth + 1);
                }
                return obj;
            case YamlSequenceNode seq:
                var arr = new JsonArray();
                foreach (var item in seq.Children) arr.Add(ToJson(item, source, depth + 1));
                return arr;
            case YamlScalarNode scalar:
                return Scalar(scalar);
            default:
                return null;
        }
    }

    /// <summary>YAML 1.2 core schema: plain scalars that read as numbers, booleans or null become those.</summary>
    private static JsonNode? Scalar(YamlScalarNode s)
    {
        var v = s.Value ?? "";
        if (s.Style is ScalarStyle.SingleQuoted or ScalarStyle.DoubleQuoted or ScalarStyle.Literal or ScalarStyle.Folded)
            return JsonValue.Create(v);
        switch (v)
        {
            case "" or "~" or "null" or "Null" or "NULL": return null;
            case "true" or "True" or "TRUE": return JsonValue.Create(true);
            case "false" or "False" or "FALSE": return JsonValue.Create(false);
        }
        if (long.TryParse(v, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out var l)) return JsonValue.Create(l);
        if (v.Length > 0 && (char.IsDigit(v[0]) || v[0] is '-' or '+' or '.') &&
            double.TryParse(v, NumberStyles.Float, CultureInfo.InvariantCulture, out var d) && !v.Contains(':', StringComparison.Ordinal))
            return JsonValue.Create(d);
        return JsonValue.Create(v);
    }
}
