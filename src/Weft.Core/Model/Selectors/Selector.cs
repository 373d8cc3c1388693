using System.Diagnostics.CodeAnalysis;

namespace Weft.Model.Selectors;

/// <summary>A selector that could not be parsed; the message says what was expected at which column.</summary>
public sealed class SelectorParseException(string message, int position) : FormatException(message)
{
    public int Position { get; } = position;
}

/// <summary>
/// Calico's label selector language: <c>k == 'v'</c>, <c>!=</c>, <c>in {..}</c>, <c>not in {..}</c>, <c>has(k)</c>,
/// <c>!has(k)</c>, <c>all()</c>, <c>global()</c>, <c>contains</c>, <c>starts with</c>, <c>ends with</c>, <c>&amp;&amp;</c>,
/// <c>||</c>, <c>!</c> and parentheses. Parsed once into an AST that evaluates against a label set.
/// Precedence: <c>!</c> binds tighter than <c>&amp;&amp;</c>, which binds tighter than <c>||</c>.
/// </summary>
public abstract class Selector
{
    public abstract bool Matches(IReadOnlyDictionary<string, string> labels);

    /// <summary>True for <c>global()</c>: in a namespaceSelector it selects non-namespaced endpoints.</summary>
    public virtual bool IsGlobal => false;

    /// <summary>The canonical text; parsing it again gives an equivalent selector.</summary>
    public string Text => ToString() ?? "";

    public static Selector All { get; } = new AllSelector();

    public static Selector Parse(string text) => new SelectorParser(text).ParseAll();

    public static bool TryParse(string text, [NotNullWhen(true)] out Selector? selector, [NotNullWhen(false)] out string? error)
    {
        try
        {
            selector = Parse(text);
            error = null;
            return true;
        }
        catch (SelectorParseException e)
        {
            selector = null;
            error = e.Message;
            return false;
        }
    }

    internal static string Quote(string s) => s.Contains('\'', StringComparison.Ordinal) ? "\"" + s + "\"" : "'" + s + "'";
}

internal sealed class AllSelector : Selector
{
    public override bool Matches(IReadOnlyDictionary<string, string> labels) => true;
    public override string ToString() => "all()";
}

internal sealed class GlobalSelector : Selector
{
    public override bool Matches(IReadOnlyDictionary<string, string> labels) => true;
    public override bool IsGlobal => true;
    public override string ToString() => "global()";
}

internal sealed class HasSelector(string key) : Selector
{
    public override bool Matches(IReadOnlyDictionary<string, string> labels) => labels.ContainsKey(key);
    public override string ToString() => $"has({key})";
}

internal enum CompareOp { Equal, NotEqual, Contains, StartsWith, EndsWith }

internal sealed class CompareSelector(string key, CompareOp op, string value) : Selector
{
    public override bool Matches(IReadOnlyDictionary<string, string> labels)
    {
        var present = labels.TryGetValue(key, out var v);
        return op switch
        {
            CompareOp.Equal => present && v == value,
            CompareOp.NotEqual => !present || v != value, // Calico: a missing label is "not equal"
            CompareOp.Contains => present && v!.Contains(value, StringComparison.Ordinal),
            CompareOp.StartsWith => present && v!.StartsWith(value, StringComparison.Ordinal),
            CompareOp.EndsWith => present && v!.EndsWith(value, StringComparison.Ordinal),
            _ => false,
        };
    }

    public override string ToString() => op switch
    {
        CompareOp.Equal => $"{key} == {Quote(value)}",
        CompareOp.NotEqual => $"{key} != {Quote(value)}",
        CompareOp.Contains => $"{key} contains {Quote(value)}",
        CompareOp.StartsWith => $"{key} starts with {Quote(value)}",
        _ => $"{key} ends with {Quote(value)}",
    };
}

internal sealed class InSelector(string key, IReadOnlyList<string> values, bool negated) : Selector
{
    private readonly HashSet<string> _set = new(values, StringComparer.Ordinal);

    public override bool Matches(IReadOnlyDictionary<string, string> labels)
    {
        var inSet = labels.TryGetValue(key, out var v) && _set.Contains(v);
        return negated ? !inSet : inSet; // "not in" matches when the label is absent
    }

    public override string ToString() => $"{key} {(negated ? "not in" : "in")} {{{string.Join(", ", values.Select(Quote))}}}";
}

internal sealed class NotSelector(Selector inner) : Selector
{
    public override bool Matches(IReadOnlyDictionary<string, string> labels) => !inner.Matches(labels);
    public override string ToString() => inner is AndSelector or OrSelector ? $"!({inner})" : $"!{inner}";
}

internal sealed class AndSelector(IReadOnlyList<Selector> parts) : Selector
{
    public override bool Matches(IReadOnlyDictionary<string, string> labels)
    {
        foreach (var p in parts) if (!p.Matches(labels)) return false;
        return true;
    }

    public override string ToString() => string.Join(" && ", parts.Select(p => p is OrSelector ? $"({p})" : p.ToString()));
}

internal sealed class OrSelector(IReadOnlyList<Selector> parts) : Selector
{
    public override bool Matches(IReadOnlyDictionary<string, string> labels)
    {
        foreach (var p in parts) if (p.Matches(labels)) return true;
        return false;
    }

    public override string ToString() => string.Join(" || ", parts);
}

/// <summary>Recursive descent over the selector text; one character of lookahead is all the grammar needs.</summary>
internal sealed class SelectorParser(string text)
{
    private const int MaxDepth = 100;
    private int _pos;
    private int _depth;

    public Selector ParseAll()
    {
        SkipSpace();
        if (_pos == text.Length) return Selector.All; // the empty selector selects everything
        var s = ParseOr();
        SkipSpace();
        if (_pos != text.Length) throw Error("expected '&&', '||' or the end of the selector");
        return s;
    }

    private Selector ParseOr()
    {
        var parts = new List<Selector> { ParseAnd() };
        while (TryConsume("||")) parts.Add(ParseAnd());
        return parts.Count == 1 ? parts[0] : new OrSelector(parts);
    }

    private Selector ParseAnd()
    {
        var parts = new List<Selector> { ParseUnary() };
        while (TryConsume("&&")) parts.Add(ParseUnary());
        return parts.Count == 1 ? parts[0] : new AndSelector(parts);
    }

    private Selector ParseUnary()
    {
        if (++_depth > MaxDepth) throw Error($"selector nests deeper than {MaxDepth} levels");
        try
        {
            SkipSpace();
            if (Peek() == '!' && PeekAt(1) != '=')
            {
                _pos++;
                return new NotSelector(ParseUnary());
            }
            if (TryConsume("("))
            {
                var inner = ParseOr();
                if (!TryConsume(")")) throw Error("expected ')'");
                return inner;
            }
            return ParseTerm();
        }
        finally { _depth--; }
    }

    private Selector ParseTerm()
    {
        SkipSpace();
        var start = _pos;
        if (TryKeywordCall("all")) return Selector.All;
        if (TryKeywordCall("global")) return new GlobalSelector();
        _pos = start;
        if (TryWord("has"))
        {
            SkipSpace();
            if (TryConsume("("))
            {
                var key = ParseKey();
                if (!TryConsume(")")) throw Error("expected ')' after the label key in has(...)");
                return new HasSelector(key);
            }
            _pos = start; // a label literally named "has"
        }
        var label = ParseKey();
        SkipSpace();
        if (TryConsume("==")) return new CompareSelector(label, CompareOp.Equal, ParseString());
        if (TryConsume("!=")) return new CompareSelector(label, CompareOp.NotEqual, ParseString());
        if (TryWord("in")) return new InSelector(label, ParseSet(), negated: false);
        if (TryWord("not"))
        {
            if (!TryWord("in")) throw Error("expected 'in' after 'not'");
            return new InSelector(label, ParseSet(), negated: true);
        }
        if (TryWord("contains")) return new CompareSelector(label, CompareOp.Contains, ParseString());
        if (TryWord("starts"))
        {
            if (!TryWord("with")) throw Error("expected 'with' after 'starts'");
            return new CompareSelector(label, CompareOp.StartsWith, ParseString());
        }
        if (TryWord("ends"))
        {
            if (!TryWord("with")) throw Error("expected 'with' after 'ends'");
            return new CompareSelector(label, CompareOp.EndsWith, ParseString());
        }
        throw Error($"expected an operator (==, !=, in, not in, contains, starts with, ends with) after label '{label}'");
    }

    private bool TryKeywordCall(string word)
    {
        var save = _pos;
        if (TryWord(word) && TryConsume("(") && TryConsume(")")) return true;
        _pos = save;
        return false;
    }

    private List<string> ParseSet()
    {
        if (!TryConsume("{")) throw Error("expected '{' to start a set of values");
        var values = new List<string>();
        SkipSpace();
        if (TryConsume("}")) return values;
        do values.Add(ParseString());
        while (TryConsume(","));
        if (!TryConsume("}")) throw Error("expected ',' or '}' in the set of values");
        return values;
    }

    private string ParseKey()
    {
        SkipSpace();
        var start = _pos;
        while (_pos < text.Length && IsKeyChar(text[_pos])) _pos++;
        if (_pos == start) throw Error("expected a label key, has(), all() or '('");
        return text[start.._pos];
    }

    private static bool IsKeyChar(char c) => char.IsAsciiLetterOrDigit(c) || c is '_' or '-' or '.' or '/';

    private string ParseString()
    {
        SkipSpace();
        var quote = Peek();
        if (quote is not ('\'' or '"')) throw Error("expected a quoted value");
        var start = ++_pos;
        while (_pos < text.Length && text[_pos] != quote) _pos++;
        if (_pos == text.Length) throw new SelectorParseException($"selector \"{text}\": unterminated string starting at column {start}", start - 1);
        return text[start.._pos++];
    }

    private bool TryWord(string word)
    {
        SkipSpace();
        if (string.CompareOrdinal(text, _pos, word, 0, word.Length) != 0) return false;
        var end = _pos + word.Length;
        if (end < text.Length && IsKeyChar(text[end])) return false;
        _pos = end;
        return true;
    }

    private bool TryConsume(string token)
    {
        SkipSpace();
        if (string.CompareOrdinal(text, _pos, token, 0, token.Length) != 0) return false;
        _pos += token.Length;
        return true;
    }

    private char Peek() => _pos < text.Length ? text[_pos] : '\0';
    private char PeekAt(int offset) => _pos + offset < text.Length ? text[_pos + offset] : '\0';

    private void SkipSpace()
    {
        while (_pos < text.Length && char.IsWhiteSpace(text[_pos])) _pos++;
    }

    private SelectorParseException Error(string what) =>
        new($"selector \"{(text.Length > 200 ? text[..200] + "..." : text)}\": {what} at column {_pos + 1}", _pos);
}
