using System.Text;

namespace Weft.Client.Output;

/// <summary>Plain aligned columns, as calicoctl and kubectl print them; or a boxed grid for ipam show.</summary>
public sealed class TextTable(params string[] headers)
{
    private readonly List<string[]> _rows = [];

    public void Add(params string[] row) => _rows.Add(row);

    public string Render()
    {
        var widths = Widths();
        var sb = new StringBuilder();
        Line(sb, headers, widths);
        foreach (var r in _rows) Line(sb, r, widths);
        return sb.ToString();
    }

    public string RenderBoxed()
    {
        var widths = Widths();
        var sep = "+" + string.Join("+", widths.Select(w => new string('-', w + 2))) + "+\n";
        var sb = new StringBuilder(sep);
        sb.Append("| ").AppendJoin(" | ", headers.Select((h, i) => Center(h, widths[i]))).Append(" |\n").Append(sep);
        foreach (var r in _rows)
            sb.Append("| ").AppendJoin(" | ", r.Select((c, i) => i >= 2 && c.Length > 0 && char.IsAsciiDigit(c[0]) ? c.PadLeft(widths[i]) : c.PadRight(widths[i]))).Append(" |\n");
        return sb.Append(sep).ToString();
    }

    private int[] Widths() =>
        headers.Select((h, i) => Math.Max(h.Length, _rows.Count == 0 ? 0 : _rows.Max(r => i < r.Length ? r[i].Length : 0))).ToArray();

    private static void Line(StringBuilder sb, string[] cells, int[] widths)
    {
        for (var i = 0; i < cells.Length; i++)
            sb.Append(i == cells.Length - 1 ? cells[i] : cells[i].PadRight(widths[i] + 3));
        sb.Append('\n');
    }

    private static string Center(string s, int width)
    {
        var left = (width - s.Length) / 2;
        return (new string(' ', left) + s).PadRight(width);
    }
}
