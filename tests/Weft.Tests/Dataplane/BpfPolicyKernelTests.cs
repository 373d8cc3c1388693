using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging.Abstractions;
using Weft.Agent.Bpf;
using Weft.Bpf;
using Weft.Dataplane.Nftables;
using Weft.Netlink;
using Weft.Tests.Support;

namespace Weft.Tests.Dataplane;

/// <summary>The BPF policy object against the kernel and its own BTF: shared layouts, and a refused program.</summary>
public sealed class BpfPolicyKernelTests
{
    private static string ObjectFile()
    {
        var path = Path.Combine(Path.GetTempPath(), $"weft-policy-{Environment.ProcessId}.bpf.o");
        File.WriteAllBytes(path, BpfPins.Embedded("policy.bpf.o"));
        return path;
    }

    public static TheoryData<string, Type> SharedStructs() => new()
    {
        { "ipcache_key", typeof(IpcacheKey) }, { "endpoint", typeof(EndpointValue) }, { "policy_key", typeof(PolicyKey) },
        { "verdict", typeof(Verdict) }, { "sport_key", typeof(SportKey) }, { "ct_key", typeof(CtKey) }, { "ct_entry", typeof(CtEntry) },
        { "flow_event", typeof(FlowEvent) },
    };

    /// <summary>Every field of the C struct (by name, snake_case there) sits at the same offset in the C# one, and the sizes agree.</summary>
    [Theory]
    [MemberData(nameof(SharedStructs))]
    public void Struct_layout_matches_the_objects_BTF(string name, Type type)
    {
        Assert.SkipUnless(File.Exists("/usr/lib/x86_64-linux-gnu/libbpf.so.1"), "needs libbpf1");
        var file = ObjectFile();
        try
        {
            var btf = BpfBtf.Struct(file, name);
            Assert.True(btf is not null, $"struct {name} is not in the object's BTF");
            Assert.Equal(btf.Value.Size, Marshal.SizeOf(type));
            var fields = type.GetFields(System.Reflection.BindingFlags.Instance | System.Reflection.BindingFlags.Public | System.Reflection.BindingFlags.NonPublic)
                .ToDictionary(f => f.Name.Replace("<", "").Split('>')[0].ToLowerInvariant(), f => f);
            Assert.Equal(btf.Value.Members.Count, fields.Count);
            foreach (var m in btf.Value.Members)
            {
                var csName = m.Name.Replace("_", "", StringComparison.Ordinal).ToLowerInvariant();
                Assert.True(fields.TryGetValue(csName, out var field), $"{name}.{m.Name} has no C# field");
                Assert.True(m.Offset == (int)Marshal.OffsetOf(type, field.Name), $"{name}.{m.Name}: C offset {m.Offset}, C# {Marshal.OffsetOf(type, field.Name)}");
            }
        }
        finally { File.Delete(file); }
    }

    /// <summary>A program the verifier refuses is a clear error at load; nothing is attached and pinned state stays.</summary>
    [Fact]
    public void A_refused_program_is_a_clear_error_and_changes_nothing()
    {
        Assert.SkipUnless(TestEnv.IsRoot, "needs root for BPF");
        var dir = Path.Combine(Path.GetTempPath(), $"weft-bpfbad-{Environment.ProcessId}");
        Directory.CreateDirectory(dir);
        var source = Path.Combine(dir, "bad.bpf.c");
        // Weft's own program with the Ethernet header's bounds check taken out: the verifier must say no.
        var good = File.ReadAllText(Path.Combine(TestEnv.RepoRoot, "src", "Weft.Agent", "Bpf", "policy.bpf.c"));
        var check = "\tif ((void *)(eth + 1) > end)\n\t\treturn 0;\n";
        Assert.Contains(check, good);
        File.WriteAllText(source, good.Replace(check, "", StringComparison.Ordinal));
        var obj = Path.Combine(dir, "bad.bpf.o");
        TestEnv.Sh($"clang -O2 -g -target bpf -I/usr/include/x86_64-linux-gnu -c {source} -o {obj}");
        var bpffs = Path.Combine(dir, "bpffs");
        BpfFs.Mount(bpffs);
        try
        {
            var e = Assert.Throws<BpfException>(() => BpfPolicyDataplane.Load(Path.Combine(bpffs, "weft"), Path.Combine(dir, "ids.json"), new NftPolicyCompiler.Options(), NullLogger.Instance, obj));
            Assert.Contains("the kernel refused the BPF object", e.Message);
            Assert.False(File.Exists(Path.Combine(dir, "ids.json")));
        }
        finally
        {
            BpfFs.Unmount(bpffs);
            Directory.Delete(dir, recursive: true);
        }
    }
}
