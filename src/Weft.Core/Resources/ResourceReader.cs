using System.Text.Json.Nodes;
using Weft.Model;
using Weft.Model.Selectors;

namespace Weft.Resources;

/// <summary>A document that cannot be accepted; the message names the document and the field.</summary>
public class ResourceException(string message) : Exception(message);

/// <summary>Another writer changed what an apply or delete read; nothing was written, and trying again is right.</summary>
public sealed class ResourceConflictException(string message) : ResourceException(message);

/// <summary>Where a document came from, for error messages: "pools.yaml, document 2 (IPPool default-ipv4)".</summary>
public sealed record DocumentSource(string File, int Index)
{
    public override string ToString() => $"{File}, document {Index}";
}

/// <summary>A parsed, validated resource of a kind Weft understands.</summary>
public abstract record Resource(string Kind, string Name, DocumentSource Source);
public sealed record IPPoolResource(IPPool Pool, DocumentSource Source) : Resource("IPPool", Pool.Name, Source);
public sealed record IPReservationResource(IPReservation Reservation, DocumentSource Source) : Resource("IPReservation", Reservation.Name, Source);

/// <summary>A policy document of any dialect, with its IR; the document is what gets stored.</summary>
public sealed record PolicyResource(Weft.Policy.Ir.PolicyIr Policy, JsonObject Document, DocumentSource Source)
    : Resource(Policy.Dialect == "kubernetes" ? "KubernetesNetworkPolicy" : Policy.Kind, Policy.Namespace is null ? Policy.Name : $"{Policy.Namespace}/{Policy.Name}", Source);
public sealed record TierResource(string TierName, double Order, JsonObject Document, DocumentSource Source) : Resource("Tier", TierName, Source);
/// <summary>v1 Namespace and Pod: where labels and named ports come from when no Kubernetes API server is there (the lab, simulate).</summary>
public sealed record NamespaceResource(Weft.Policy.NamespaceInfo Namespace, JsonObject Document, DocumentSource Source) : Resource("Namespace", Namespace.Name, Source);
/// <summary>
/// The Tigera operator's Installation, as far as Weft acts on it: which dataplane (spec.calicoNetwork.linuxDataplane)
/// and what that means here.
/// </summary>
public sealed record InstallationResource(string InstallationName, string LinuxDataplane, string WeftDataplane, JsonObject Document, DocumentSource Source) : Resource("Installation", InstallationName, Source);

public sealed record PodResource(Weft.Policy.Dialects.PodDocument Pod, JsonObject Document, DocumentSource Source) : Resource("Pod", $"{Pod.Namespace}/{Pod.Name}", Source);

/// <summary>
/// Reads Calico's projectcalico.org/v3 documents as written (already decoded from YAML or JSON into a JSON tree)
/// into Weft's records, refusing unknown fields and invalid values with the document and field named.
/// </summary>
public static class ResourceReader
{
    public const string CalicoApiVersion = "projectcalico.org/v3";
    public static readonly string[] Kinds = ["IPPool", "IPReservation", "NetworkPolicy", "GlobalNetworkPolicy", "Tier", "Namespace", "Pod", "Installation"];

    public static Resource Read(JsonObject doc, DocumentSource source)
    {
        var apiVersion = OptString(doc, "apiVersion", source, "") ?? throw new ResourceException($"{source}: apiVersion is missing");
        var kind = OptString(doc, "kind", source, "") ?? throw new ResourceException($"{source}: kind is missing");
        var meta = doc["metadata"] as JsonObject ?? throw new ResourceException($"{source} ({kind}): metadata.name is missing");
        var name = OptString(meta, "name", source, "metadata.") ?? throw new ResourceException($"{source} ({kind}): metadata.name is missing");
        var ns = meta["namespace"]?.ToString();
        var where = $"{source} ({kind} {(ns is null ? "" : ns + "/")}{name})";
        ValidateName(name, where);
        foreach (var key in doc.Select(p => p.Key))
            if (key is not ("apiVersion" or "kind" or "metadata" or "spec" or "status"))
                throw new ResourceException($"{where}: unknown top-level field '{key}'");
        switch (kind)
        {
            case "IPPool":
                RequireApi(apiVersion, where);
                return new IPPoolResource(ReadPool(name, Spec(doc, where), where), source);
            case "IPReservation":
                RequireApi(apiVersion, where);
                return new IPReservationResource(ReadReservation(name, Spec(doc, where), where), source);
            case "NetworkPolicy" or "GlobalNetworkPolicy" when Weft.Policy.Dialects.PolicyDocuments.IsPolicy(apiVersion, kind):
                if (ns is not null) ValidateName(ns, where);
                return new PolicyResource(Weft.Policy.Dialects.PolicyDocuments.ReadPolicy(doc, where), doc, source);
            case "Tier":
                RequireApi(apiVersion, where);
                var (tierName, order) = Weft.Policy.Dialects.PolicyDocuments.ReadTier(doc, where);
                return new TierResource(tierName, order, doc, source);
            case "Namespace" when apiVersion == "v1":
                return new NamespaceResource(Weft.Policy.Dialects.PolicyDocuments.ReadNamespace(doc, where), doc, source);
            case "Pod" when apiVersion == "v1":
                if (ns is not null) ValidateName(ns, where);
                return new PodResource(Weft.Policy.Dialects.PolicyDocuments.ReadPod(doc, where), doc, source);
            case "Installation" when apiVersion == "operator.tigera.io/v1":
                return ReadInstallation(name, doc, Spec(doc, where), where, source);
            case "NetworkPolicy" or "GlobalNetworkPolicy" or "Namespace" or "Pod":
                throw new ResourceException($"{where}: apiVersion '{apiVersion}' is not supported for {kind}; use " +
                    (kind == "NetworkPolicy" ? "networking.k8s.io/v1 or projectcalico.org/v3" : kind == "GlobalNetworkPolicy" ? CalicoApiVersion : "v1"));
            default:
                throw new ResourceException($"{where}: kind '{kind}' ({apiVersion}) is not one weft understands here; known kinds: {string.Join(", ", Kinds)}");
        }
    }

    private static void RequireApi(string apiVersion, string where)
    {
        if (apiVersion is not (CalicoApiVersion or "crd.projectcalico.org/v1"))
            throw new ResourceException($"{where}: apiVersion '{apiVersion}' is not supported for this kind; use {CalicoApiVersion}");
    }

    private static JsonObject Spec(JsonObject doc, string where) =>
        doc["spec"] as JsonObject ?? throw new ResourceException($"{where}: spec is missing or not a mapping");

    private static readonly HashSet<string> ReservationFields = ["reservedCIDRs"];

    private static readonly HashSet<string> PoolFields =
    [
        "cidr", "blockSize", "ipipMode", "vxlanMode", "natOutgoing", "disabled", "disableBGPExport", "nodeSelector",
        "allowedUses", "assignmentMode", "namespaceSelector", "ipip", "nat-outgoing", "encapsulation",
    ];

    /// <summary>
    /// The Tigera operator's Installation vocabulary (`encapsulation: VXLAN`), which users copy into v3 IPPools, as the
    /// two v3 modes it means: (ipipMode, vxlanMode).
    /// </summary>
    private static readonly Dictionary<string, (string Ipip, string Vxlan)> EncapsulationModes = new(StringComparer.Ordinal)
    {
        ["VXLAN"] = ("Never", "Always"),
        ["VXLANCrossSubnet"] = ("Never", "CrossSubnet"),
        ["IPIP"] = ("Always", "Never"),
        ["IPIPCrossSubnet"] = ("CrossSubnet", "Never"),
        ["None"] = ("Never", "Never"),
    };

    private static IPPool ReadPool(string name, JsonObject spec, string where)
    {
        RejectUnknown(spec, PoolFields, where);
        if (spec.ContainsKey("ipip") || spec.ContainsKey("nat-outgoing"))
            throw new ResourceException($"{where}: spec.ipip and spec.nat-outgoing are Calico v1 fields; use spec.ipipMode and spec.natOutgoing");
        var cidrText = OptString(spec, "cidr", where, "spec.") ?? throw new ResourceException($"{where}: spec.cidr is required");
        if (!Cidr.TryParse(cidrText, out var cidr, out var err)) throw new ResourceException($"{where}: spec.cidr: {err}");
        if (!cidr.NetworkAddress.Equals(System.Net.IPAddress.Parse(cidrText.Split('/')[0])))
            throw new ResourceException($"{where}: spec.cidr '{cidrText}' has host bits set; did you mean {cidr}?");
        var blockSize = OptInt(spec, "blockSize", where) ?? IPPool.DefaultBlockSize(cidr.Family);
        var (min, max) = cidr.IsIPv4 ? (20, 32) : (116, 128);
        if (blockSize < min || blockSize > max)
            throw new ResourceException($"{where}: spec.blockSize {blockSize} is out of range for {Cidr.FamilyName(cidr.Family)} ({min}-{max})");
        if (blockSize < cidr.PrefixLength)
            throw new ResourceException($"{where}: spec.blockSize {blockSize} is larger than the pool itself ({cidr}); use a blockSize of at least {cidr.PrefixLength}");
        var ipip = OptEnum(spec, "ipipMode", ["Never", "Always", "CrossSubnet"], "Never", where);
        var vxlan = OptEnum(spec, "vxlanMode", ["Never", "Always", "CrossSubnet"], "Never", where);
        if (OptString(spec, "encapsulation", where, "spec.") is { } encapsulation)
        {
            if (!EncapsulationModes.TryGetValue(encapsulation, out var modes))
                throw new ResourceException($"{where}: spec.encapsulation '{encapsulation}' is not one of {string.Join(", ", EncapsulationModes.Keys)}");
            // Both spellings in one document must say the same thing; a mode left out agrees with anything.
            if (spec.ContainsKey("ipipMode") && ipip != modes.Ipip)
                throw new ResourceException($"{where}: spec.encapsulation '{encapsulation}' means ipipMode {modes.Ipip}, but spec.ipipMode says {ipip}; give one of the two fields, or make them agree");
            if (spec.ContainsKey("vxlanMode") && vxlan != modes.Vxlan)
                throw new ResourceException($"{where}: spec.encapsulation '{encapsulation}' means vxlanMode {modes.Vxlan}, but spec.vxlanMode says {vxlan}; give one of the two fields, or make them agree");
            (ipip, vxlan) = modes;
        }
        if (ipip != "Never" && vxlan != "Never")
            throw new ResourceException($"{where}: spec.ipipMode and spec.vxlanMode cannot both be enabled");
        if (ipip != "Never" && !cidr.IsIPv4)
            throw new ResourceException($"{where}: spec.ipipMode: IPIP is IPv4-only; use vxlanMode for {cidr}");
        var selector = OptString(spec, "nodeSelector", where, "spec.") ?? "all()";
        if (!Selector.TryParse(selector, out _, out var selErr))
            throw new ResourceException($"{where}: spec.nodeSelector: {selErr}");
        if (OptString(spec, "namespaceSelector", where, "spec.") is { } nsSel && !Selector.TryParse(nsSel, out _, out var nsErr))
            throw new ResourceException($"{where}: spec.namespaceSelector: {nsErr}");
        var uses = new List<string>();
        if (spec["allowedUses"] is { } au)
        {
            if (au is not JsonArray arr) throw new ResourceException($"{where}: spec.allowedUses must be a list");
            foreach (var u in arr)
            {
                var text = u?.GetValueKind() == System.Text.Json.JsonValueKind.String ? u.GetValue<string>() : null;
                if (text is not ("Workload" or "Tunnel" or "LoadBalancer"))
                    throw new ResourceException($"{where}: spec.allowedUses: '{u}' is not one of Workload, Tunnel, LoadBalancer");
                uses.Add(text);
            }
        }
        else uses.AddRange(["Workload", "Tunnel"]);
        return new IPPool
        {
            Name = name,
            Cidr = cidr.ToString(),
            BlockSize = blockSize,
            NodeSelector = selector,
            Disabled = OptBool(spec, "disabled", where) ?? false,
            NatOutgoing = OptBool(spec, "natOutgoing", where) ?? false,
            DisableBGPExport = OptBool(spec, "disableBGPExport", where) ?? false,
            IpipMode = ipip,
            VxlanMode = vxlan,
            AllowedUses = uses,
            AssignmentMode = OptEnum(spec, "assignmentMode", ["Automatic", "Manual"], "Automatic", where),
            CreationTimestamp = DateTime.UtcNow.ToString("yyyy-MM-ddTHH:mm:ssZ"),
        };
    }

    /// <summary>
    /// The operator's dataplane choice. Weft reads only spec.calicoNetwork.linuxDataplane and refuses the rest by
    /// name rather than ignore what a user wrote: Iptables and Nftables run Weft's nftables dataplane; BPF and VPP are
    /// refused with what is missing.
    /// </summary>
    private static InstallationResource ReadInstallation(string name, JsonObject doc, JsonObject spec, string where, DocumentSource source)
    {
        foreach (var key in spec.Select(p => p.Key))
            if (key != "calicoNetwork")
                throw new ResourceException($"{where}: spec.{key}: Weft reads only spec.calicoNetwork.linuxDataplane from an Installation (IP pools are IPPool documents); remove spec.{key}");
        var network = spec["calicoNetwork"] as JsonObject ?? throw new ResourceException($"{where}: spec.calicoNetwork must be a mapping");
        foreach (var key in network.Select(p => p.Key))
            if (key != "linuxDataplane")
                throw new ResourceException($"{where}: spec.calicoNetwork.{key}: Weft reads only spec.calicoNetwork.linuxDataplane from an Installation (IP pools are IPPool documents); remove spec.calicoNetwork.{key}");
        var dataplane = OptString(network, "linuxDataplane", where, "spec.calicoNetwork.") ?? "Iptables";
        var weft = dataplane switch
        {
            "Iptables" or "Nftables" => "nftables",
            "BPF" => "bpf",
            "VPP" => throw new ResourceException($"{where}: spec.calicoNetwork.linuxDataplane VPP: Weft has no VPP dataplane (it would need the VPP vSwitch with hugepages and a DPDK or af_packet uplink, which Weft neither ships nor drives); use Iptables"),
            _ => throw new ResourceException($"{where}: spec.calicoNetwork.linuxDataplane '{dataplane}' is not one of Iptables, Nftables, BPF, VPP"),
        };
        return new InstallationResource(name, dataplane, weft, doc, source);
    }

    private static IPReservation ReadReservation(string name, JsonObject spec, string where)
    {
        RejectUnknown(spec, ReservationFields, where);
        if (spec["reservedCIDRs"] is not JsonArray arr || arr.Count == 0)
            throw new ResourceException($"{where}: spec.reservedCIDRs must be a non-empty list of CIDRs or addresses");
        var list = new List<string>();
        for (var i = 0; i < arr.Count; i++)
        {
            var text = arr[i]?.GetValueKind() == System.Text.Json.JsonValueKind.String ? arr[i]!.GetValue<string>() : null;
            if (!Cidr.TryParse(text, out var c, out var e))
                throw new ResourceException($"{where}: spec.reservedCIDRs[{i}]: {e}");
            list.Add(c.ToString());
        }
        return new IPReservation { Name = name, ReservedCIDRs = list };
    }

    /// <summary>Kubernetes object names: DNS-1123 subdomain.</summary>
    private static void ValidateName(string name, string where)
    {
        if (name.Length is 0 or > 253 || !char.IsAsciiLetterLower(name[0]) && !char.IsAsciiDigit(name[0]) ||
            !char.IsAsciiLetterLower(name[^1]) && !char.IsAsciiDigit(name[^1]) ||
            name.Any(c => !(char.IsAsciiLetterLower(c) || char.IsAsciiDigit(c) || c is '-' or '.')))
            throw new ResourceException($"{where}: metadata.name '{name}' is invalid: lower-case letters, digits, '-' and '.', starting and ending with a letter or digit");
    }

    private static void RejectUnknown(JsonObject spec, IReadOnlySet<string> known, string where)
    {
        foreach (var key in spec.Select(p => p.Key))
            if (!known.Contains(key))
                throw new ResourceException($"{where}: unknown field spec.{key}; known fields: {string.Join(", ", known.Order(StringComparer.Ordinal))}");
    }

    private static string? OptString(JsonObject o, string field, object where, string prefix)
    {
        var node = o[field];
        if (node is null) return null;
        if (node.GetValueKind() != System.Text.Json.JsonValueKind.String)
            throw new ResourceException($"{where}: {prefix}{field} must be a string");
        return node.GetValue<string>();
    }

    private static int? OptInt(JsonObject o, string field, string where)
    {
        var node = o[field];
        if (node is null) return null;
        if (node.GetValueKind() != System.Text.Json.JsonValueKind.Number || !int.TryParse(node.ToJsonString(), out var i))
            throw new ResourceException($"{where}: spec.{field} must be an integer, got {node.ToJsonString()}");
        return i;
    }

    private static bool? OptBool(JsonObject o, string field, string where)
    {
        var node = o[field];
        if (node is null) return null;
        return node.GetValueKind() switch
        {
            System.Text.Json.JsonValueKind.True => true,
            System.Text.Json.JsonValueKind.False => false,
            _ => throw new ResourceException($"{where}: spec.{field} must be true or false, got {node.ToJsonString()}"),
        };
    }

    private static string OptEnum(JsonObject o, string field, string[] allowed, string fallback, string where)
    {
        var v = OptString(o, field, where, "spec.");
        if (v is null) return fallback;
        return allowed.Contains(v, StringComparer.Ordinal) ? v
            : throw new ResourceException($"{where}: spec.{field} '{v}' is not one of {string.Join(", ", allowed)}");
    }
}
