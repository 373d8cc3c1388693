using Weft.Tests.Support;

namespace Weft.Tests.Ctl;

/// <summary>The real weftctl binary against a throwaway datastore, as an operator uses it.</summary>
public sealed class WeftctlTests : IDisposable
{
    private readonly string _dir;
    private readonly string _uri;

    public WeftctlTests() => (_dir, _uri) = Support.Pools.NewStore();

    public void Dispose() => Directory.Delete(_dir, true);

    private TestEnv.ProcessResult Apply(string yaml) => TestEnv.CtlIn(_uri, yaml, "apply", "-f", "-");

    [Fact]
    public void Calico_seed_pool_applies_as_written_and_lists_with_calicoctl_columns()
    {
        var r = Apply(Support.Pools.SeedV4);
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Contains("Successfully created 1 'IPPool' resource(s): default-ipv4-ippool", r.Stdout);
        var get = TestEnv.Ctl(_uri, "get", "ippool");
        var lines = get.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Matches(@"^NAME\s+CIDR\s+SELECTOR$", lines[0]);
        Assert.Matches(@"^default-ipv4-ippool\s+10\.244\.0\.0/16\s+all\(\)$", lines[1]);
        var wide = TestEnv.Ctl(_uri, "get", "ippool", "-o", "wide").Stdout;
        Assert.Matches(@"NAME\s+CIDR\s+SELECTOR\s+BLOCKSIZE\s+NAT\s+ENCAPSULATION\s+DISABLED\s+USAGE", wide);
        Assert.Matches(@"default-ipv4-ippool\s+10\.244\.0\.0/16\s+all\(\)\s+26\s+true\s+VXLAN\s+false\s+0/65536", wide);
        // Re-apply is an update, not a duplicate.
        Assert.Contains("Successfully applied", Apply(Support.Pools.SeedV4).Stdout);
    }

    /// <summary>The chapter's IPPool spells encapsulation as the Tigera operator's Installation does; both spellings mean one thing.</summary>
    [Theory]
    [InlineData("VXLAN", "Never", "Always", "VXLAN")]
    [InlineData("VXLANCrossSubnet", "Never", "CrossSubnet", "VXLANCrossSubnet")]
    [InlineData("IPIP", "Always", "Never", "IPIP")]
    [InlineData("IPIPCrossSubnet", "CrossSubnet", "Never", "IPIPCrossSubnet")]
    [InlineData("None", "Never", "Never", "None")]
    public void Operator_encapsulation_maps_onto_the_v3_modes(string encapsulation, string ipipMode, string vxlanMode, string wideColumn)
    {
        var doc = $"apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {{name: default-pool}}\nspec:\n  cidr: 10.244.0.0/16\n  encapsulation: {encapsulation} # VXLAN, IPIP, None\n  natOutgoing: true\n  nodeSelector: all()\n";
        var r = Apply(doc);
        Assert.True(r.ExitCode == 0, r.Stderr);
        var yaml = TestEnv.Ctl(_uri, "get", "ippool", "default-pool", "-o", "yaml").Stdout;
        Assert.Contains($"ipipMode: {ipipMode}", yaml);
        Assert.Contains($"vxlanMode: {vxlanMode}", yaml);
        Assert.Matches($@"default-pool\s+10\.244\.0\.0/16\s+all\(\)\s+26\s+true\s+{wideColumn}\s+false", TestEnv.Ctl(_uri, "get", "ippool", "-o", "wide").Stdout);
        // What get printed applies again unchanged, and the two spellings together are fine when they agree.
        Assert.Equal(0, Apply(yaml).ExitCode);
        Assert.Equal(0, Apply(doc.Replace("  natOutgoing", $"  vxlanMode: {vxlanMode}\n  ipipMode: {ipipMode}\n  natOutgoing", StringComparison.Ordinal)).ExitCode);
    }

    /// <summary>The chapter's Installation documents (the Tigera operator's dataplane choice), as written.</summary>
    [Theory]
    [InlineData("Iptables", true, "runs Weft's nftables dataplane")]
    [InlineData("Nftables", true, "runs Weft's nftables dataplane")]
    [InlineData("BPF", true, "runs Weft's bpf dataplane (tc eBPF programs on every pod interface")]
    [InlineData("VPP", false, "linuxDataplane VPP: Weft has no VPP dataplane")]
    [InlineData("Windows", false, "'Windows' is not one of Iptables, Nftables, BPF, VPP")]
    public void Installation_documents_select_the_dataplane_or_are_refused_saying_what_is_missing(string dataplane, bool accepted, string expected)
    {
        var doc = $"# The seed shows only the spec.calicoNetwork.linuxDataplane line\napiVersion: operator.tigera.io/v1\nkind: Installation\nmetadata:\n  name: default\nspec:\n  calicoNetwork:\n    linuxDataplane: {dataplane}\n";
        var r = Apply(doc);
        Assert.Equal(accepted ? 0 : 1, r.ExitCode);
        Assert.Contains(expected, accepted ? r.Stdout : r.Stderr);
        Assert.DoesNotContain("Unhandled", r.Stderr);
        var get = TestEnv.Ctl(_uri, "get", "installation").Stdout;
        if (accepted) Assert.Matches($@"default\s+{dataplane}", get);
        else Assert.DoesNotContain("default", get);
    }

    [Fact]
    public void Installation_fields_weft_does_not_act_on_are_refused_by_name()
    {
        var r = Apply("apiVersion: operator.tigera.io/v1\nkind: Installation\nmetadata: {name: default}\nspec:\n  calicoNetwork:\n    linuxDataplane: Iptables\n    ipPools: [{cidr: 10.0.0.0/16}]\n");
        Assert.Equal(1, r.ExitCode);
        Assert.Contains("spec.calicoNetwork.ipPools: Weft reads only spec.calicoNetwork.linuxDataplane", r.Stderr);
    }

    [Fact]
    public void The_chapters_ippool_file_applies_exactly_as_written()
    {
        var file = TestEnv.SeedDocument("calico-ippool.yaml");
        Assert.SkipUnless(File.Exists(file), "../shared/seed-documents is not beside the checkout");
        var r = TestEnv.Ctl(_uri, "apply", "-f", file);
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Contains("vxlanMode: Always", TestEnv.Ctl(_uri, "get", "ippool", "default-pool", "-o", "yaml").Stdout);
        Assert.Matches(@"default-pool\s+10\.244\.0\.0/16\s+all\(\)\s+26\s+true\s+VXLAN\s+false", TestEnv.Ctl(_uri, "get", "ippool", "-o", "wide").Stdout);
    }

    [Fact]
    public void Yaml_and_json_output_round_trip_through_apply()
    {
        Assert.Equal(0, Apply(Support.Pools.SeedV4 + "\n---\n" + Support.Pools.SeedV6).ExitCode);
        var yaml = TestEnv.Ctl(_uri, "get", "ippool", "default-ipv6-ippool", "-o", "yaml").Stdout;
        Assert.Contains("apiVersion: projectcalico.org/v3", yaml);
        Assert.Contains("blockSize: 122", yaml);
        var json = TestEnv.Ctl(_uri, "get", "ippools", "-o", "json").Stdout;
        Assert.Contains("\"kind\": \"List\"", json);
        Assert.Equal(0, TestEnv.CtlIn(_uri, yaml, "apply", "-f", "-").ExitCode);
        Assert.Equal(0, TestEnv.CtlIn(_uri, json, "apply", "-f", "-").ExitCode);
    }

    [Theory]
    [InlineData("kind: IPPool\napiVersion: projectcalico.org/v3\nmetadata: {name: p}\nspec: {cidr: 10.0.0.0/8, blockSize: 19}", "spec.blockSize 19 is out of range")]
    [InlineData("kind: IPPool\napiVersion: projectcalico.org/v3\nmetadata: {name: p}\nspec: {cidr: 10.0.0.0/8, colour: blue}", "unknown field spec.colour")]
    [InlineData("kind: IPPool\napiVersion: projectcalico.org/v3\nmetadata: {name: p}\nspec: {cidr: 10.0.0.1/8}", "host bits set")]
    [InlineData("kind: IPPool\napiVersion: projectcalico.org/v3\nmetadata: {name: p}\nspec: {cidr: 300.0.0.0/8}", "spec.cidr")]
    [InlineData("kind: IPPool\napiVersion: projectcalico.org/v3\nmetadata: {name: p}\nspec: {cidr: 10.0.0.0/8, nodeSelector: \"app ==\"}", "spec.nodeSelector")]
    [InlineData("kind: IPPool\napiVersion: projectcalico.org/v3\nmetadata: {name: p}\nspec: {cidr: 10.0.0.0/8, natOutgoing: maybe}", "spec.natOutgoing must be true or false")]
    [InlineData("kind: IPPool\napiVersion: projectcalico.org/v3\nmetadata: {name: p}\nspec: {cidr: 10.0.0.0/8, ipipMode: Always, vxlanMode: Always}", "cannot both be enabled")]
    [InlineData("kind: IPPool\napiVersion: projectcalico.org/v3\nmetadata: {name: p}\nspec: {cidr: 10.0.0.0/8, encapsulation: GRE}", "spec.encapsulation 'GRE' is not one of VXLAN, VXLANCrossSubnet, IPIP, IPIPCrossSubnet, None")]
    [InlineData("kind: IPPool\napiVersion: projectcalico.org/v3\nmetadata: {name: p}\nspec: {cidr: 10.0.0.0/8, encapsulation: VXLAN, vxlanMode: Never}", "spec.encapsulation 'VXLAN' means vxlanMode Always, but spec.vxlanMode says Never")]
    [InlineData("kind: IPPool\napiVersion: projectcalico.org/v3\nmetadata: {name: p}\nspec: {cidr: 10.0.0.0/8, encapsulation: None, ipipMode: Always}", "spec.encapsulation 'None' means ipipMode Never, but spec.ipipMode says Always")]
    [InlineData("kind: IPPool\napiVersion: projectcalico.org/v3\nmetadata: {name: p}\nspec: {cidr: 10.0.0.0/8, encapsulation: [VXLAN]}", "spec.encapsulation")]
    [InlineData("kind: IPPool\napiVersion: projectcalico.org/v3\nmetadata: {name: Bad_Name}\nspec: {cidr: 10.0.0.0/8}", "metadata.name 'Bad_Name' is invalid")]
    [InlineData("kind: IPPool\napiVersion: projectcalico.org/v3\nmetadata: {name: p}", "spec is missing")]
    [InlineData("kind: Gadget\napiVersion: example.com/v1\nmetadata: {name: p}\nspec: {}", "kind 'Gadget'")]
    [InlineData("kind: IPPool\napiVersion: projectcalico.org/v3\nmetadata: {name: p}\nspec: {cidr: [unclosed", "invalid YAML at line")]
    [InlineData("kind: IPReservation\napiVersion: projectcalico.org/v3\nmetadata: {name: r}\nspec: {reservedCIDRs: [nonsense]}", "spec.reservedCIDRs[0]")]
    public void Bad_documents_are_refused_naming_document_and_field(string yaml, string expected)
    {
        var r = Apply(yaml);
        Assert.Equal(1, r.ExitCode);
        Assert.Contains(expected, r.Stderr);
        Assert.Contains("<stdin>", r.Stderr);
        Assert.DoesNotContain("Unhandled", r.Stderr);
    }

    [Fact]
    public void Overlapping_pools_are_refused_and_nothing_of_the_batch_is_written()
    {
        Assert.Equal(0, Apply(Support.Pools.SeedV4).ExitCode);
        var batch = "kind: IPPool\napiVersion: projectcalico.org/v3\nmetadata: {name: fine}\nspec: {cidr: 10.99.0.0/16}\n---\n" +
                    "kind: IPPool\napiVersion: projectcalico.org/v3\nmetadata: {name: clash}\nspec: {cidr: 10.244.128.0/17}";
        var r = Apply(batch);
        Assert.Equal(1, r.ExitCode);
        Assert.Contains("overlaps IPPool default-ipv4-ippool", r.Stderr);
        Assert.Contains("document 2", r.Stderr);
        Assert.DoesNotContain("fine", TestEnv.Ctl(_uri, "get", "ippool").Stdout);
    }

    [Fact]
    public void Apply_from_a_directory_delete_and_not_found()
    {
        var dir = Path.Combine(_dir, "docs");
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "a.yaml"), Support.Pools.SeedV4);
        File.WriteAllText(Path.Combine(dir, "b.yml"), "kind: IPReservation\napiVersion: projectcalico.org/v3\nmetadata: {name: keep-out}\nspec: {reservedCIDRs: [10.244.0.1, 10.244.0.64/30]}");
        File.WriteAllText(Path.Combine(dir, "ignored.txt"), "not yaml {{{");
        var r = TestEnv.Ctl(_uri, "apply", "-f", dir);
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Contains("keep-out", TestEnv.Ctl(_uri, "get", "ipreservation").Stdout);
        Assert.Equal(0, TestEnv.Ctl(_uri, "delete", "ipreservation", "keep-out").ExitCode);
        var missing = TestEnv.Ctl(_uri, "delete", "ippool", "nope");
        Assert.Equal(1, missing.ExitCode);
        Assert.Contains("not found", missing.Stderr);
        Assert.Equal(0, TestEnv.Ctl(_uri, "delete", "-f", Path.Combine(dir, "a.yaml")).ExitCode);
        Assert.DoesNotContain("default-ipv4-ippool", TestEnv.Ctl(_uri, "get", "ippool").Stdout);
        Assert.Contains("no such file", TestEnv.Ctl(_uri, "apply", "-f", Path.Combine(dir, "missing.yaml")).Stderr);
    }

    [Fact]
    public void Ipam_show_lists_pool_usage_like_calicoctl()
    {
        Assert.Equal(0, Apply(Support.Pools.SeedV4).ExitCode);
        var show = TestEnv.Ctl(_uri, "ipam", "show").Stdout;
        Assert.Contains("GROUPING", show);
        Assert.Matches(@"\| IP Pool\s+\| 10\.244\.0\.0/16 \|\s+65536 \|\s+0 \(0%\) \|\s+65536 \(100%\) \|", show);
        Assert.Contains("not currently assigned", TestEnv.Ctl(_uri, "ipam", "show", "--ip", "10.244.0.5").Stdout);
        Assert.Equal(1, TestEnv.Ctl(_uri, "ipam", "release", "--ip", "10.244.0.5").ExitCode);
        Assert.Contains("not an IP address", TestEnv.Ctl(_uri, "ipam", "show", "--ip", "nope").Stderr);
        Assert.Contains("No problems found", TestEnv.Ctl(_uri, "ipam", "check").Stdout);
    }
}
