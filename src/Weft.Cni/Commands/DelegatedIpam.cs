using System.Diagnostics;
using System.Text.Json;
using Weft.Cni.Config;
using Weft.Cni.Interfaces;
using Weft.Cni.Results;
using Weft.Cni.Skeleton;

namespace Weft.Cni.Commands;

/// <summary>Runs another IPAM plugin (host-local, static, dhcp...) from CNI_PATH, as the reference bridge does.</summary>
public sealed class DelegatedIpam(NetConf conf, CniEnvironment env)
{
    public CniResult? Result { get; private set; }

    public IReadOnlyList<PodAddress> Add()
    {
        var output = Run("ADD");
        using var doc = JsonDocument.Parse(output);
        try { Result = CniResult.Parse(doc.RootElement); }
        catch (FormatException e) { throw new CniException(CniCodes.DelegateFailed, $"IPAM plugin {conf.IpamType} returned a malformed result: {e.Message}"); }
        if (Result.Ips.Count == 0) throw new CniException(CniCodes.DelegateFailed, $"IPAM plugin {conf.IpamType} returned no addresses");
        return Result.Ips.Select(ip => new PodAddress(ip.Address, ip.PrefixLength, ip.Gateway)).ToList();
    }

    public void Del() => Run("DEL");

    public void Check() => Run("CHECK");

    private byte[] Run(string command)
    {
        var path = Find() ?? throw new CniException(CniCodes.InvalidNetworkConfig,
            $"IPAM plugin '{conf.IpamType}' not found in CNI_PATH ({env.Path})");
        var psi = new ProcessStartInfo(path)
        {
            RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
        };
        psi.Environment["CNI_COMMAND"] = command;
        using var p = Process.Start(psi) ?? throw new CniException(CniCodes.DelegateFailed, $"cannot start {path}");
        p.StandardInput.BaseStream.Write(conf.Raw);
        p.StandardInput.Close();
        using var ms = new MemoryStream();
        p.StandardOutput.BaseStream.CopyTo(ms);
        p.StandardError.ReadToEnd();
        p.WaitForExit();
        var output = ms.ToArray();
        if (p.ExitCode != 0)
        {
            var (code, msg) = (CniCodes.DelegateFailed, $"exit code {p.ExitCode}");
            try
            {
                using var err = JsonDocument.Parse(output);
                if (err.RootElement.TryGetProperty("code", out var c) && c.TryGetInt32(out var ci)) code = ci;
                if (err.RootElement.TryGetProperty("msg", out var m)) msg = m.GetString() ?? msg;
            }
            catch (JsonException) { }
            throw new CniException(code, $"IPAM plugin {conf.IpamType} {command} failed: {msg}");
        }
        return output;
    }

    private string? Find()
    {
        foreach (var dir in env.Path.Split(':', StringSplitOptions.RemoveEmptyEntries))
        {
            var candidate = System.IO.Path.Combine(dir, conf.IpamType);
            if (File.Exists(candidate)) return candidate;
        }
        return null;
    }
}
