using System.Text;
using System.Text.Json.Nodes;
using CsCheck;
using Weft.Cni.Skeleton;

namespace Weft.Tests.Cni;

/// <summary>
/// Hostile input to the plugin's front door, in process: bad env, bad JSON, bad fields. Every answer must be
/// the spec's error JSON with the right code, never a crash.
/// </summary>
public sealed class ConfigAndEnvTests : IDisposable
{
    private readonly string _dir = Support.TestEnv.TempDir("cfg");
    public void Dispose() => Directory.Delete(_dir, true);

    private string Store => "sqlite://" + Path.Combine(_dir, "weft.db");

    private static (int Exit, JsonObject? Json, string Raw) Run(Dictionary<string, string> env, string stdin)
    {
        using var input = new MemoryStream(Encoding.UTF8.GetBytes(stdin));
        using var output = new MemoryStream();
        var exit = CniSkeleton.Run(k => env.GetValueOrDefault(k), input, output);
        var raw = Encoding.UTF8.GetString(output.ToArray());
        return (exit, raw.Length == 0 ? null : JsonNode.Parse(raw)?.AsObject(), raw);
    }

    private static Dictionary<string, string> Env(string command = "ADD", string netns = "/var/run/netns/weft-test-no-such-ns") => new()
    {
        ["CNI_COMMAND"] = command, ["CNI_CONTAINERID"] = "abc123", ["CNI_NETNS"] = netns, ["CNI_IFNAME"] = "eth0", ["CNI_PATH"] = "/usr/lib/cni",
    };

    private string Conf(string extra = "", string version = "1.1.0") =>
        $$"""{"cniVersion":"{{version}}","name":"n","type":"weft","datastore":"{{Store}}"{{extra}}}""";

    [Theory]
    [InlineData("CNI_COMMAND", "", 4)]
    [InlineData("CNI_COMMAND", "EXPLODE", 4)]
    [InlineData("CNI_CONTAINERID", "", 4)]
    [InlineData("CNI_CONTAINERID", "-starts-with-dash", 4)]
    [InlineData("CNI_CONTAINERID", "has/slash", 4)]
    [InlineData("CNI_IFNAME", "", 4)]
    [InlineData("CNI_IFNAME", "this-name-is-far-too-long", 4)]
    [InlineData("CNI_IFNAME", "eth/0", 4)]
    [InlineData("CNI_IFNAME", "..", 4)]
    [InlineData("CNI_NETNS", "", 4)]
    [InlineData("CNI_PATH", "", 4)]
    [InlineData("CNI_ARGS", "K8S_POD_NAME", 4)]
    [InlineData("CNI_ARGS", "UNKNOWN=1", 4)]
    public void Invalid_environment_is_error_4(string variable, string value, int code)
    {
        var env = Env();
        env[variable] = value;
        var (exit, json, _) = Run(env, Conf());
        Assert.Equal(1, exit);
        Assert.Equal(code, json!["code"]!.GetValue<int>());
        Assert.False(string.IsNullOrWhiteSpace(json["msg"]!.GetValue<string>()));
    }

    [Theory]
    [InlineData("", 6)]
    [InlineData("{", 6)]
    [InlineData("[1,2]", 6)]
    [InlineData("null", 6)]
    [InlineData("""{"cniVersion":"9.9.9","name":"n","type":"weft"}""", 1)]
    [InlineData("""{"cniVersion":"1.1.0","type":"weft"}""", 7)]
    [InlineData("""{"cniVersion":"1.1.0","name":"bad name!","type":"weft"}""", 7)]
    [InlineData("""{"cniVersion":"1.1.0","name":"n","type":"bridge"}""", 7)]
    [InlineData("""{"cniVersion":"1.1.0","name":"n","type":"weft","mode":"teleport"}""", 7)]
    [InlineData("""{"cniVersion":"1.1.0","name":"n","type":"weft","mtu":"big"}""", 7)]
    [InlineData("""{"cniVersion":"1.1.0","name":"n","type":"weft","mtu":10}""", 7)]
    [InlineData("""{"cniVersion":"1.1.0","name":"n","type":"weft","ipam":"weft-ipam"}""", 7)]
    [InlineData("""{"cniVersion":"1.1.0","name":"n","type":"weft","ipam":{"type":"../../bin/sh"}}""", 7)]
    [InlineData("""{"cniVersion":"1.1.0","name":"n","type":"weft","datastore":"mysql://x"}""", 7)]
    [InlineData("""{"cniVersion":"1.1.0","name":"n","type":"weft","bpfPinDir":"sys/fs/bpf"}""", 7)]
    [InlineData("""{"cniVersion":"1.1.0","name":"n","type":"weft","bpfPinDir":7}""", 7)]
    [InlineData("""{"cniVersion":"1.1.0","name":"n","type":"weft","runtimeConfig":{"ips":["not-an-ip"]}}""", 7)]
    [InlineData("""{"cniVersion":"1.1.0","name":"n","type":"weft","runtimeConfig":{"mac":"zz:zz"}}""", 7)]
    [InlineData("""{"cniVersion":"1.1.0","name":"n","type":"weft","runtimeConfig":{"mac":"01:00:5e:00:00:01"}}""", 7)]
    [InlineData("""{"cniVersion":"1.1.0","name":"n","type":"weft","prevResult":{"ips":[{"address":"10.0.0.1"}]}}""", 6)]
    public void Malformed_or_invalid_config_gets_the_spec_code(string stdin, int code)
    {
        var (exit, json, raw) = Run(Env(), stdin);
        Assert.Equal(1, exit);
        Assert.True(json is not null, raw);
        Assert.Equal(code, json["code"]!.GetValue<int>());
    }

    [Fact]
    public void Missing_netns_on_add_is_reported_and_check_needs_040_and_gc_needs_110()
    {
        var (_, json, _) = Run(Env(), Conf());
        Assert.Equal(4, json!["code"]!.GetValue<int>());
        Assert.Contains("does not exist", json["msg"]!.GetValue<string>());
        Assert.Equal(1, Run(Env("CHECK"), Conf(version: "0.3.1")).Json!["code"]!.GetValue<int>());
        Assert.Equal(1, Run(Env("GC"), Conf(version: "1.0.0")).Json!["code"]!.GetValue<int>());
        Assert.Equal(1, Run(Env("STATUS"), Conf(version: "0.4.0")).Json!["code"]!.GetValue<int>());
    }

    [Fact]
    public void Version_answers_without_a_config()
    {
        var (exit, json, _) = Run(new() { ["CNI_COMMAND"] = "VERSION" }, "");
        Assert.Equal(0, exit);
        Assert.Equal("1.1.0", json!["cniVersion"]!.GetValue<string>());
    }

    /// <summary>Random bytes, random JSON and random mutations of a valid config never crash the plugin.</summary>
    [Fact]
    public void Fuzzed_stdin_and_env_always_yield_a_well_formed_answer()
    {
        var valid = JsonNode.Parse(Conf())!.AsObject();
        var keys = new[] { "cniVersion", "name", "type", "mode", "mtu", "ipam", "runtimeConfig", "prevResult", "datastore", "bridge", "nodename", "args" };
        var values = Gen.OneOf<JsonNode?>(
            Gen.Const((JsonNode?)null), Gen.Int.Select(i => (JsonNode?)JsonValue.Create(i)), Gen.String.Select(s => (JsonNode?)JsonValue.Create(s)),
            Gen.Bool.Select(b => (JsonNode?)JsonValue.Create(b)), Gen.Const((JsonNode?)new JsonArray(1, "x", null)),
            Gen.Const((JsonNode?)new JsonObject { ["type"] = "weft-ipam", ["ips"] = new JsonArray("1.2.3.4/99") }),
            Gen.Const((JsonNode?)new JsonObject { ["ips"] = new JsonArray(new JsonObject { ["address"] = "x" }), ["interfaces"] = 5 }));
        var mutated = Gen.Select(Gen.Int[0, keys.Length - 1], values).Array[0, 4].Select(muts =>
        {
            var c = valid.DeepClone().AsObject();
            foreach (var (k, v) in muts) c[keys[k]] = v?.DeepClone();
            return c.ToJsonString();
        });
        var stdin = Gen.OneOf(mutated, Gen.String, Gen.Byte.Array.Select(b => Encoding.Latin1.GetString(b)));
        var commands = Gen.OneOf(Gen.Const("ADD"), Gen.Const("DEL"), Gen.Const("CHECK"), Gen.Const("VERSION"), Gen.Const("STATUS"), Gen.Const("GC"), Gen.String);
        var ids = Gen.OneOf(Gen.Const("abc"), Gen.String, Gen.Const(""));
        var known = new HashSet<int> { 1, 2, 3, 4, 5, 6, 7, 11, 50, 51, 100, 101, 102, 103, 104, 110, 120, 130 };
        // DEL, CHECK and GC may reach the kernel: run the whole property on a thread inside a throwaway namespace.
        Assert.SkipUnless(Support.TestEnv.IsRoot, "needs root for a throwaway network namespace");
        using var ns = new Support.Netns("fuzz", withUnderlay: false);
        Weft.Netlink.NetNs.Run("/var/run/netns/" + ns.Node, () => Gen.Select(stdin, commands, ids, Gen.OneOf(Gen.Const("eth0"), Gen.String)).Sample((input, cmd, id, ifname) =>
        {
            var env = Env(cmd);
            env["CNI_CONTAINERID"] = id;
            env["CNI_IFNAME"] = ifname;
            var (exit, json, raw) = Run(env, input);
            Assert.True(exit is 0 or 1, raw);
            if (exit == 1)
            {
                Assert.True(json is not null, raw);
                Assert.Contains(json["code"]!.GetValue<int>(), known);
                Assert.False(string.IsNullOrWhiteSpace(json["msg"]!.GetValue<string>()));
                Assert.NotEqual(100, json["code"]!.GetValue<int>()); // no unclassified internal errors from bad input
            }
        }, iter: 3000));
    }
}
