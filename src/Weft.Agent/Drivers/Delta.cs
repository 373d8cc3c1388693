namespace Weft.Agent.Drivers;

/// <summary>
/// Desired against applied, by key: what to add or replace (missing, or present with another value) and what to
/// remove. Every driver diffs through this one, so "apply only the difference" means the same thing everywhere.
/// </summary>
public sealed record Delta<T>(IReadOnlyList<T> Upserts, IReadOnlyList<T> Removals)
{
    public bool IsEmpty => Upserts.Count == 0 && Removals.Count == 0;
}

public static class Delta
{
    public static Delta<T> Compute<T, TKey>(IEnumerable<T> desired, IEnumerable<T> applied, Func<T, TKey> key, IEqualityComparer<T>? sameValue = null)
        where TKey : notnull
    {
        var want = new Dictionary<TKey, T>();
        foreach (var d in desired) want[key(d)] = d;
        var have = new Dictionary<TKey, T>();
        foreach (var a in applied) have.TryAdd(key(a), a);
        sameValue ??= EqualityComparer<T>.Default;
        var upserts = want.Where(w => !have.TryGetValue(w.Key, out var h) || !sameValue.Equals(h, w.Value)).Select(w => w.Value).ToList();
        var removals = have.Where(h => !want.ContainsKey(h.Key)).Select(h => h.Value).ToList();
        return new Delta<T>(upserts, removals);
    }
}
