using CsCheck;
using Weft.Model.Selectors;

namespace Weft.Tests.Selectors;

public sealed class SelectorTests
{
    private static readonly Dictionary<string, string> Db = new() { ["app"] = "database", ["tier"] = "backend", ["kubernetes.io/metadata.name"] = "prod" };
    private static readonly Dictionary<string, string> Web = new() { ["app"] = "web", ["version"] = "v1.2" };
    private static readonly Dictionary<string, string> None = new();

    [Theory]
    [InlineData("app == 'database'", true, false, false)]
    [InlineData("app == \"web\"", false, true, false)]
    [InlineData("app != 'web'", true, false, true)]
    [InlineData("app in {'web', 'database'}", true, true, false)]
    [InlineData("app not in {'web'}", true, false, true)]
    [InlineData("app in {}", false, false, false)]
    [InlineData("has(tier)", true, false, false)]
    [InlineData("!has(tier)", false, true, true)]
    [InlineData("all()", true, true, true)]
    [InlineData("", true, true, true)]
    [InlineData("global()", true, true, true)]
    [InlineData("version starts with 'v1'", false, true, false)]
    [InlineData("version ends with '.2'", false, true, false)]
    [InlineData("app contains 'ata'", true, false, false)]
    [InlineData("kubernetes.io/metadata.name == 'prod'", true, false, false)]
    [InlineData("app == 'database' && has(tier)", true, false, false)]
    [InlineData("app == 'web' || tier == 'backend'", true, true, false)]
    [InlineData("!(app == 'web' || app == 'database')", false, false, true)]
    [InlineData("(app == 'web' || app == 'database') && !has(version)", true, false, false)]
    [InlineData("has(app) && app != 'web' || has(version)", true, true, false)]
    [InlineData("has == 'x'", false, false, false)]
    public void Table(string selector, bool db, bool web, bool none)
    {
        var s = Selector.Parse(selector);
        Assert.Equal(db, s.Matches(Db));
        Assert.Equal(web, s.Matches(Web));
        Assert.Equal(none, s.Matches(None));
        // The canonical text means the same thing.
        var again = Selector.Parse(s.Text);
        Assert.Equal((db, web, none), (again.Matches(Db), again.Matches(Web), again.Matches(None)));
    }

    [Theory]
    [InlineData("app ==", "expected a quoted value")]
    [InlineData("app == 'x", "unterminated string")]
    [InlineData("app = 'x'", "expected an operator")]
    [InlineData("(app == 'x'", "expected ')'")]
    [InlineData("app == 'x' &&", "expected a label key")]
    [InlineData("app in {'a' 'b'}", "expected ',' or '}'")]
    [InlineData("app not 'x'", "expected 'in' after 'not'")]
    [InlineData("has(app", "expected ')'")]
    [InlineData("app == 'x' garbage", "expected '&&', '||' or the end")]
    [InlineData("@", "expected a label key")]
    public void Errors_say_what_was_expected(string selector, string expected)
    {
        Assert.False(Selector.TryParse(selector, out _, out var error));
        Assert.Contains(expected, error);
        Assert.Contains("column", error);
    }

    [Fact]
    public void Deep_nesting_is_refused_not_a_stack_overflow()
    {
        Assert.False(Selector.TryParse(new string('(', 5000) + "all()" + new string(')', 5000), out _, out var error));
        Assert.Contains("deeper", error);
        Assert.False(Selector.TryParse(new string('!', 5000) + "all()", out _, out _));
    }

    [Fact]
    public void Random_text_never_throws_anything_but_a_parse_error()
    {
        Gen.String.Sample(text =>
        {
            try { Selector.Parse(text); }
            catch (SelectorParseException) { }
        }, iter: 20_000);
        var chars = Gen.OneOfConst("app", "==", "!=", "'x'", "\"y\"", "&&", "||", "!", "(", ")", "has(app)", "in", "{", "}", ",", "all()", " ");
        chars.Array[0, 12].Select(parts => string.Join(" ", parts)).Sample(text =>
        {
            if (!Selector.TryParse(text, out var s, out _)) return;
            var again = Selector.Parse(s.Text);
            foreach (var labels in new[] { Db, Web, None, new Dictionary<string, string> { ["app"] = "x" } })
                Assert.Equal(s.Matches(labels), again.Matches(labels));
        }, iter: 20_000);
    }
}
