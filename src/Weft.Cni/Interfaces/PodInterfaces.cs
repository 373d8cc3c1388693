using System.Net;
using System.Net.NetworkInformation;
using System.Net.Sockets;
using System.Text;
using Weft.Cni.Config;
using Weft.Cni.Results;
using Weft.Cni.Skeleton;
using Weft.Model;
using Weft.Netlink;

namespace Weft.Cni.Interfaces;

/// <summary>One address to put on the pod interface: the prefix it is configured with and its gateway.</summary>
public sealed record PodAddress(IPAddress Address, int PrefixLength, IPAddress? Gateway);

/// <summary>
/// Builds, checks and removes a pod's veth pair. Routed mode (Calico/Cilium style): the pod gets /32 and /128
/// addresses and default routes via a link-local gateway that the host-side veth answers for; the host gets a
/// host route to each pod address. Bridge mode (Flannel style): the host side joins a bridge that holds the
/// block's gateway address, and the pod gets its block prefix. Every step tolerates the leftovers of an earlier,
/// interrupted attempt.
/// </summary>
public sealed class PodInterfaces(NetConf conf, CniEnvironment env)
{
    public static readonly IPAddress RoutedGatewayV4 = IPAddress.Parse("169.254.1.1");
    /// <summary>The EUI-64 link-local address of the host veth's fixed MAC: no NDP needed to find the gateway.</summary>
    public static readonly IPAddress RoutedGatewayV6 = IPAddress.Parse("fe80::ecee:eeff:feee:eeee");
    public static readonly PhysicalAddress HostVethMac = PhysicalAddress.Parse("EE-EE-EE-EE-EE-EE");
    /// <summary>Route protocol number marking routes Weft owns (mark-and-sweep after restarts).</summary>
    public const byte RouteProtocol = Weft.Model.Ownership.PluginRouteProtocol;

    public string HostVethName { get; } = HostVethNameFor(env.ContainerId, env.IfName);

    /// <summary>
    /// "weft" + 11 hex digits (44 bits, as Calico's "cali" names) of a 64-bit FNV-1a hash of container id and
    /// interface name: stable across retries. Not a cryptographic hash on purpose: loading OpenSSL for SHA-256
    /// cost the plugin ~5 ms per exec.
    /// </summary>
    public static string HostVethNameFor(string containerId, string ifName)
    {
        var hash = 14695981039346656037UL;
        foreach (var b in Encoding.UTF8.GetBytes(containerId + "." + ifName))
            hash = (hash ^ b) * 1099511628211UL;
        return Weft.Model.Ownership.PodInterfacePrefix + (hash >> 20).ToString("x11", System.Globalization.CultureInfo.InvariantCulture);
    }

    public CniResult Build(IReadOnlyList<PodAddress> addresses)
    {
        // Both sockets first: nothing is built yet if entering the pod's namespace fails. The plugin is one-shot and
        // this is synchronous, so the calling thread switches in and out (no thread per ADD).
        using var host = RtNetlink.Open();
        using var pod = RtNetlink.OpenInOnCallingThread(env.Netns);

        var routed = conf.Mode == NetworkMode.Routed;
        // Without IPv6 the host end comes up in the create request itself; with it, its accept_dad is set first.
        var hasV6 = addresses.Any(a => a.Address.AddressFamily == AddressFamily.InterNetworkV6);
        var hostLink = CreateVeth(host, pod, routed, up: !hasV6);
        AttachPolicyPrograms(hostLink.Index);

        var bridgeIndex = 0;
        if (routed)
        {
            var v = HostVethName;
            Sysctl.Write($"net/ipv4/conf/{v}/proxy_arp", "1");
            Sysctl.Write($"net/ipv4/neigh/{v}/proxy_delay", "0");
            if (hasV6) TrySysctl($"net/ipv6/conf/{v}/accept_dad", "0");
        }
        else
        {
            bridgeIndex = EnsureBridge(host, addresses);
            host.SetMaster(hostLink.Index, bridgeIndex);
        }
        if (hasV6) host.SetUp(hostLink.Index);
        EnableForwarding(addresses);

        var podLink = pod.GetLink(env.IfName) ?? throw new CniException(CniCodes.InterfaceSetup, $"veth peer {env.IfName} did not appear in {env.Netns}");
        var families = new List<(AddressFamily Family, List<PodAddress> Mine, IPAddress? Gateway)>();
        foreach (var family in new[] { AddressFamily.InterNetwork, AddressFamily.InterNetworkV6 })
        {
            var mine = addresses.Where(a => a.Address.AddressFamily == family).ToList();
            if (mine.Count > 0)
                families.Add((family, mine, routed ? (family == AddressFamily.InterNetwork ? RoutedGatewayV4 : RoutedGatewayV6) : mine[0].Gateway));
        }

        // Each side's changes in one netlink datagram (the kernel applies them in order): addresses, up, then the
        // default routes (and, routed, a permanent neighbour for the gateway: no ARP/NDP before the first packet).
        pod.Batch(p =>
        {
            foreach (var a in addresses)
                p.AddAddress(podLink.Index, a.Address, routed ? Cidr.Bits(a.Address.AddressFamily) : a.PrefixLength, noDad: true);
            p.SetUp(podLink.Index);
            foreach (var (family, _, gateway) in families)
            {
                if (gateway is null) continue;
                var any = family == AddressFamily.InterNetwork ? IPAddress.Any : IPAddress.IPv6Any;
                if (routed) p.ReplaceNeighbour(podLink.Index, gateway, HostVethMac);
                p.ReplaceRoute(new RouteSpec(any, 0) { Gateway = gateway, OutputIndex = podLink.Index, OnLink = routed, Protocol = RouteProtocol });
            }
        });
        if (routed)
        {
            // The host reaches each pod address through its veth, with the pod's MAC already known.
            host.Batch(h =>
            {
                foreach (var a in addresses)
                {
                    h.ReplaceRoute(new RouteSpec(a.Address, Cidr.Bits(a.Address.AddressFamily)) { OutputIndex = hostLink.Index, Scope = RouteScope.Link, Protocol = RouteProtocol });
                    if (podLink.Mac is { } podMac) h.ReplaceNeighbour(hostLink.Index, a.Address, podMac);
                }
            });
        }

        var result = new CniResult();
        if (!routed)
        {
            var bridge = host.GetLink(bridgeIndex);
            result.Interfaces.Add(new ResultInterface(conf.BridgeName, bridge?.Mac?.ToColonString(), null));
        }
        result.Interfaces.Add(new ResultInterface(HostVethName, (hostLink.Mac ?? HostVethMac).ToColonString(), null));
        result.Interfaces.Add(new ResultInterface(env.IfName, podLink.Mac?.ToColonString(), env.Netns, conf.Mtu));
        var podIfIndex = result.Interfaces.Count - 1;

        foreach (var (family, mine, gateway) in families)
        {
            if (gateway is not null)
                result.Routes.Add(new ResultRoute(new Cidr(family == AddressFamily.InterNetwork ? IPAddress.Any : IPAddress.IPv6Any, 0), gateway));
            foreach (var a in mine)
                result.Ips.Add(new ResultIp(a.Address, routed ? Cidr.Bits(family) : a.PrefixLength, gateway, podIfIndex));
        }
        return result;
    }

    /// <summary>
    /// Creates the pair. Name clashes are rare, so they are looked at only when the kernel reports one (EEXIST): a
    /// host veth left by an interrupted earlier ADD for this same attachment is removed and the pair made again; an
    /// interface of that name already in the pod is the runtime's mistake.
    /// </summary>
    private LinkInfo CreateVeth(RtNetlink host, RtNetlink pod, bool routed, bool up)
    {
        using var netnsFd = NetNs.Open(env.Netns);
        for (var attempt = 0; ; attempt++)
        {
            try { return host.CreateVeth(HostVethName, env.IfName, netnsFd, conf.Mtu, routed ? HostVethMac : null, conf.RuntimeMac, up); }
            catch (NetlinkException e) when (e.Errno == 17 && attempt == 0 && host.DeleteLink(HostVethName)) { }
            catch (NetlinkException e) when (e.Errno == 17 && pod.GetLink(env.IfName) is not null)
            {
                throw new CniException(CniCodes.InterfaceSetup, $"interface {env.IfName} already exists in {env.Netns}; the runtime must DEL the old attachment first, or use another CNI_IFNAME");
            }
        }
    }

    /// <summary>
    /// With the BPF policy dataplane enforcing, its programs go on the host side now, before the pod's side is up:
    /// until the agent has programmed the pod they drop everything (fail closed, no netfilter hook needed).
    /// </summary>
    private void AttachPolicyPrograms(int hostIndex)
    {
        try { Weft.Bpf.PolicyProgramPins.AttachIfPinned(conf.BpfPinDir, hostIndex); }
        catch (Weft.Bpf.BpfException e)
        {
            throw new CniException(CniCodes.InterfaceSetup, $"attaching the BPF policy programs to {HostVethName}: {e.Message}");
        }
    }

    private int EnsureBridge(RtNetlink host, IReadOnlyList<PodAddress> addresses)
    {
        var bridge = host.GetLink(conf.BridgeName);
        if (bridge is null)
        {
            try { bridge = host.CreateBridge(conf.BridgeName, conf.Mtu, null); }
            catch (NetlinkException e) when (e.Errno == 17) { bridge = host.GetLink(conf.BridgeName); } // a parallel ADD won the race
            if (bridge is null) throw new CniException(CniCodes.InterfaceSetup, $"bridge {conf.BridgeName} vanished while being created");
        }
        else if (bridge.Kind != "bridge")
        {
            throw new CniException(CniCodes.InterfaceSetup, $"{conf.BridgeName} exists but is a {bridge.Kind ?? "non-bridge"} device; choose another \"bridge\" name");
        }
        foreach (var a in addresses)
            if (a.Gateway is not null)
                host.AddAddress(bridge.Index, a.Gateway, a.PrefixLength, noDad: true);
        if (!bridge.IsUp) host.SetUp(bridge.Index);
        return bridge.Index;
    }

    private static void EnableForwarding(IReadOnlyList<PodAddress> addresses)
    {
        if (addresses.Any(a => a.Address.AddressFamily == AddressFamily.InterNetwork) && Sysctl.Read("net/ipv4/ip_forward")?.Trim() != "1")
            Sysctl.Write("net/ipv4/ip_forward", "1");
        if (addresses.Any(a => a.Address.AddressFamily == AddressFamily.InterNetworkV6) && Sysctl.Read("net/ipv6/conf/all/forwarding")?.Trim() != "1")
            TrySysctl("net/ipv6/conf/all/forwarding", "1");
    }

    private static void TrySysctl(string path, string value)
    {
        try { Sysctl.Write(path, value); }
        catch (IOException) { } // IPv6 disabled in this namespace: nothing to set.
        catch (UnauthorizedAccessException) { }
    }

    /// <summary>Removes the pair; true if anything was there. Never fails for "already gone".</summary>
    public bool Teardown()
    {
        using var host = RtNetlink.Open();
        if (host.DeleteLink(HostVethName)) return true;
        if (!string.IsNullOrEmpty(env.Netns) && NetNs.Exists(env.Netns))
        {
            using var pod = RtNetlink.OpenInOnCallingThread(env.Netns);
            return pod.DeleteLink(env.IfName);
        }
        return false;
    }

    /// <summary>CHECK: the interface, its addresses and its routes are still what prevResult says.</summary>
    public void Verify(CniResult prev)
    {
        using var host = RtNetlink.Open();
        var hostLink = host.GetLink(HostVethName)
            ?? throw new CniException(CniCodes.CheckFailed, $"host-side veth {HostVethName} is missing");
        if (!hostLink.IsUp) throw new CniException(CniCodes.CheckFailed, $"host-side veth {HostVethName} is down");
        if (!NetNs.Exists(env.Netns)) throw new CniException(CniCodes.CheckFailed, $"network namespace {env.Netns} is gone");
        using var pod = RtNetlink.OpenInOnCallingThread(env.Netns);
        var podLink = pod.GetLink(env.IfName) ?? throw new CniException(CniCodes.CheckFailed, $"interface {env.IfName} is missing from {env.Netns}");
        var expected = prev.Interfaces.FirstOrDefault(i => i.Name == env.IfName && i.Sandbox is not null);
        if (expected?.Mac is { } mac && !string.Equals(mac, podLink.Mac?.ToColonString(), StringComparison.OrdinalIgnoreCase))
            throw new CniException(CniCodes.CheckFailed, $"{env.IfName} has MAC {podLink.Mac?.ToColonString()}, prevResult says {mac}");
        if (!podLink.IsUp) throw new CniException(CniCodes.CheckFailed, $"{env.IfName} is down");
        var have = pod.ListAddresses(podLink.Index);
        foreach (var ip in prev.Ips)
            if (!have.Any(a => a.Address.Equals(ip.Address) && a.PrefixLength == ip.PrefixLength))
                throw new CniException(CniCodes.CheckFailed, $"{env.IfName} lacks address {ip.AddressText}");
        foreach (var route in prev.Routes)
        {
            var routes = pod.ListRoutes(route.Destination.Family);
            if (!routes.Any(r => r.Destination.Equals(route.Destination.NetworkAddress) && r.PrefixLength == route.Destination.PrefixLength &&
                                 (route.Gateway is null || route.Gateway.Equals(r.Gateway))))
                throw new CniException(CniCodes.CheckFailed, $"route to {route.Destination} via {route.Gateway} is missing in {env.Netns}");
        }
        if (conf.Mode == NetworkMode.Routed)
        {
            foreach (var ip in prev.Ips)
            {
                var hostRoutes = host.ListRoutes(ip.Address.AddressFamily);
                if (!hostRoutes.Any(r => r.Destination.Equals(ip.Address) && r.PrefixLength == Cidr.Bits(ip.Address.AddressFamily) && r.OutputIndex == hostLink.Index))
                    throw new CniException(CniCodes.CheckFailed, $"host route to {ip.Address} via {HostVethName} is missing");
            }
        }
    }
}

internal static class MacExtensions
{
    public static string ToColonString(this PhysicalAddress mac) =>
        string.Join(':', mac.GetAddressBytes().Select(b => b.ToString("x2", System.Globalization.CultureInfo.InvariantCulture)));
}
