using Microsoft.Win32.SafeHandles;
using Weft.Model;
using Weft.Native;

namespace Weft.Bpf;

/// <summary>
/// The BPF policy programs shared through bpffs: the agent pins them while its BPF dataplane enforces, and the CNI
/// plugin attaches them to a new pod's host interface before the pod can send, so the interface is never open:
/// with no endpoint entry yet the programs drop everything. No netfilter hook is needed to fail closed.
/// </summary>
public static class PolicyProgramPins
{
    public static bool Pinned(string pinDir) => File.Exists(Path.Combine(pinDir, Ownership.BpfFromPodPin));

    /// <summary>
    /// Pins both programs, replacing an earlier agent's pins (bpffs cannot rename: a plugin in between finds none and
    /// attaches nothing, and the caller lists interfaces after this, so it attaches them itself).
    /// </summary>
    public static void Pin(string pinDir, int fromPodFd, int toPodFd)
    {
        foreach (var (name, fd) in new[] { (Ownership.BpfFromPodPin, fromPodFd), (Ownership.BpfToPodPin, toPodFd) })
        {
            var path = Path.Combine(pinDir, name);
            File.Delete(path);
            BpfObject.Check(BpfNative.bpf_obj_pin(fd, path), $"pin {path}");
        }
    }

    /// <summary>Removes the pins: from now on new pods get no programs from the plugin.</summary>
    public static void Unpin(string pinDir)
    {
        File.Delete(Path.Combine(pinDir, Ownership.BpfFromPodPin));
        File.Delete(Path.Combine(pinDir, Ownership.BpfToPodPin));
    }

    /// <summary>
    /// Attaches the pinned programs to a pod's host interface, when they are pinned; false when the BPF dataplane is
    /// not enforcing on this node.
    /// </summary>
    public static bool AttachIfPinned(string pinDir, int ifIndex)
    {
        using var fromPod = Get(Path.Combine(pinDir, Ownership.BpfFromPodPin));
        using var toPod = Get(Path.Combine(pinDir, Ownership.BpfToPodPin));
        if (fromPod is null || toPod is null) return false;
        Attach(ifIndex, (int)fromPod.DangerousGetHandle(), (int)toPod.DangerousGetHandle());
        // The agent unpins before it takes the programs off every interface (a switch to nftables): a pin gone by now
        // means that sweep may have passed this interface already, so take them off here.
        if (Pinned(pinDir)) return true;
        Detach(ifIndex);
        return false;
    }

    /// <summary>Puts the programs on a pod's host interface: tc ingress decides its egress, tc egress its ingress (a replace when they are there).</summary>
    public static void Attach(int ifIndex, int fromPodFd, int toPodFd)
    {
        Tc.Attach(ifIndex, ingress: true, fromPodFd, Ownership.TcHandle, Ownership.TcPriority);
        Tc.Attach(ifIndex, ingress: false, toPodFd, Ownership.TcHandle, Ownership.TcPriority);
    }

    /// <summary>Takes Weft's programs off both sides of an interface (nothing there is fine).</summary>
    public static void Detach(int ifIndex)
    {
        Tc.Detach(ifIndex, ingress: true, Ownership.TcHandle, Ownership.TcPriority);
        Tc.Detach(ifIndex, ingress: false, Ownership.TcHandle, Ownership.TcPriority);
    }

    private static SafeFileHandle? Get(string path)
    {
        if (!File.Exists(path)) return null;
        int fd;
        try { fd = BpfNative.bpf_obj_get(path); }
        catch (DllNotFoundException e) { throw new BpfException("libbpf.so.1 is not installed (apt-get install libbpf1): " + e.Message); }
        if (fd == -2) return null; // unpinned since the check
        BpfObject.Check(fd, $"open pinned program {path}");
        return new SafeFileHandle(fd, ownsHandle: true);
    }
}
