using System.Text.Json.Nodes;
using Weft.Model;

namespace Weft.Resources;

/// <summary>Stored pool and reservation records as the Calico documents an operator applies (weftctl get, the kubernetes datastore).</summary>
public static class CalicoDocuments
{
    public static JsonObject ToDocument(IPPool p)
    {
        var spec = new JsonObject
        {
            ["cidr"] = p.Cidr,
            ["blockSize"] = p.BlockSize,
            ["ipipMode"] = p.IpipMode,
            ["vxlanMode"] = p.VxlanMode,
            ["natOutgoing"] = p.NatOutgoing,
            ["disabled"] = p.Disabled,
            ["disableBGPExport"] = p.DisableBGPExport,
            ["nodeSelector"] = p.NodeSelector,
            ["allowedUses"] = new JsonArray(p.AllowedUses.Select(u => (JsonNode?)JsonValue.Create(u)).ToArray()),
            ["assignmentMode"] = p.AssignmentMode,
        };
        return Envelope("IPPool", p.Name, p.CreationTimestamp, spec);
    }

    public static JsonObject ToDocument(IPReservation r) =>
        Envelope("IPReservation", r.Name, null, new JsonObject
        {
            ["reservedCIDRs"] = new JsonArray(r.ReservedCIDRs.Select(c => (JsonNode?)JsonValue.Create(c)).ToArray()),
        });

    private static JsonObject Envelope(string kind, string name, string? created, JsonObject spec)
    {
        var meta = new JsonObject { ["name"] = name };
        if (created is not null) meta["creationTimestamp"] = created;
        return new JsonObject { ["apiVersion"] = ResourceReader.CalicoApiVersion, ["kind"] = kind, ["metadata"] = meta, ["spec"] = spec };
    }
}
