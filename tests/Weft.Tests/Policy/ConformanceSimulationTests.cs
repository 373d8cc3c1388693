using Weft.Ctl.Commands;
using Weft.Policy.Ir;
using Weft.Resources;

namespace Weft.Tests.Policy;

/// <summary>Every upstream e2e NetworkPolicy case, step by step, through the evaluator behind `policy simulate`.</summary>
public sealed class ConformanceSimulationTests
{
    public static TheoryData<string> Cases() => new(NetpolCase.Files().Select(Path.GetFileNameWithoutExtension)!);

    [Theory]
    [MemberData(nameof(Cases))]
    public void Upstream_case_matches_every_expected_matrix(string id)
    {
        var c = NetpolCase.Load(Path.Combine(NetpolCase.Dir, id + ".yaml"));
        var failures = new List<string>();
        for (var s = 0; s < c.Steps.Count; s++)
        {
            var step = c.Steps[s];
            foreach (var action in step.Actions) c.Apply(action);
            var resources = c.Documents().Select((d, i) => ResourceReader.Read(d, new DocumentSource(id, i + 1))).ToList();
            var scenario = PolicyScenario.FromResources(resources);
            foreach (var probe in step.Probes)
            {
                Assert.True(Protocols.TryParse(probe.Protocol, out var proto));
                var matrix = PolicyCommands.Matrix(scenario, probe.Port, proto);
                failures.AddRange(c.Mismatches(probe, scenario.Pods.Select(p => p.Key).ToList(), matrix).Select(m => $"step {s} ({step.Description}): {m}"));
            }
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures));
    }
}
