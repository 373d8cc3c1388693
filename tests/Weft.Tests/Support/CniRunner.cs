using System.Text.Json;
using System.Text.Json.Nodes;

namespace Weft.Tests.Support;

/// <summary>Runs a CNI plugin exactly as a runtime does: exec inside the node namespace, CNI_* env, config on stdin.</summary>
public sealed class CniRunner(string nodeNetns, string pluginDir)
{
    public sealed record CniCall(int ExitCode, string Stdout, string Stderr, TimeSpan Elapsed)
    {
        public JsonObject Json => JsonNode.Parse(Stdout)?.AsObject() ?? throw new InvalidOperationException("empty output: " + Stderr);
        public int? ErrorCode => ExitCode == 0 ? null : (int?)Json["code"]?.GetValue<int>();
        public string ErrorMessage => ExitCode == 0 ? "" : Json["msg"]?.GetValue<string>() ?? "";
    }

    public CniCall Exec(string plugin, string command, string config, string containerId = "", string netns = "", string ifName = "eth0", string args = "", IDictionary<string, string>? extraEnv = null)
    {
        var env = new Dictionary<string, string>
        {
            ["CNI_COMMAND"] = command,
            ["CNI_CONTAINERID"] = containerId,
            ["CNI_NETNS"] = netns,
            ["CNI_IFNAME"] = ifName,
            ["CNI_ARGS"] = args,
            ["CNI_PATH"] = $"{pluginDir}:{TestEnv.ReferencePluginDir}",
        };
        if (extraEnv is not null) foreach (var (k, v) in extraEnv) env[k] = v;
        var r = TestEnv.Run("ip", ["netns", "exec", nodeNetns, Path.Combine(PluginPath(plugin))], config, env, TimeSpan.FromSeconds(120));
        return new CniCall(r.ExitCode, r.Stdout, r.Stderr, r.Elapsed);
    }

    private string PluginPath(string plugin) =>
        File.Exists(Path.Combine(pluginDir, plugin)) ? Path.Combine(pluginDir, plugin) : Path.Combine(TestEnv.ReferencePluginDir, plugin);

    public CniCall Weft(string command, string config, string containerId = "", string netns = "", string ifName = "eth0", string args = "") =>
        Exec("weft", command, config, containerId, netns, ifName, args);

    /// <summary>
    /// Runs a conflist the way libcni does: ADD through each plugin in order, feeding each the previous result;
    /// DEL in reverse order with the final result as prevResult.
    /// </summary>
    public (CniCall Last, JsonObject? Result) AddList(JsonObject conflist, string containerId, string netns, string ifName = "eth0", string args = "", JsonObject? runtimeConfig = null)
    {
        JsonObject? prev = null;
        CniCall? last = null;
        foreach (var plugin in conflist["plugins"]!.AsArray())
        {
            var conf = BuildElement(conflist, plugin!.AsObject(), prev, runtimeConfig);
            last = Exec(conf["type"]!.GetValue<string>(), "ADD", conf.ToJsonString(), containerId, netns, ifName, args);
            if (last.ExitCode != 0) return (last, null);
            prev = last.Json;
        }
        return (last!, prev);
    }

    public CniCall DelList(JsonObject conflist, string containerId, string netns, JsonObject? prevResult, string ifName = "eth0", string args = "", JsonObject? runtimeConfig = null)
    {
        CniCall? last = null;
        foreach (var plugin in conflist["plugins"]!.AsArray().Reverse())
        {
            var conf = BuildElement(conflist, plugin!.AsObject(), prevResult, runtimeConfig);
            last = Exec(conf["type"]!.GetValue<string>(), "DEL", conf.ToJsonString(), containerId, netns, ifName, args);
            if (last.ExitCode != 0) return last;
        }
        return last!;
    }

    private static JsonObject BuildElement(JsonObject list, JsonObject plugin, JsonObject? prev, JsonObject? runtimeConfig)
    {
        var conf = plugin.DeepClone().AsObject();
        conf["name"] = list["name"]!.GetValue<string>();
        conf["cniVersion"] = list["cniVersion"]!.GetValue<string>();
        if (prev is not null) conf["prevResult"] = prev.DeepClone();
        if (runtimeConfig is not null && plugin["capabilities"] is JsonObject caps)
        {
            var rc = new JsonObject();
            foreach (var (k, v) in runtimeConfig)
                if (caps[k]?.GetValue<bool>() == true) rc[k] = v?.DeepClone();
            if (rc.Count > 0) conf["runtimeConfig"] = rc;
        }
        return conf;
    }

    public static string Config(string datastoreUri, string node, string mode = "routed", string version = "1.1.0", string name = "weftnet", string extra = "") =>
        $$"""{"cniVersion":"{{version}}","name":"{{name}}","type":"weft","datastore":"{{datastoreUri}}","nodename":"{{node}}","mode":"{{mode}}","ipam":{"type":"weft-ipam"}{{extra}}}""";

    public static JsonObject Parse(string json) => JsonNode.Parse(json)!.AsObject();

    public static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };
}
