using System.Net.Sockets;
using Weft.Model;

namespace Weft.Ipam;

/// <summary>An IPAM failure a person can act on. <see cref="CniCode"/> is the error code the plugin reports.</summary>
public class IpamException(int cniCode, string message, Exception? inner = null) : Exception(message, inner)
{
    public int CniCode { get; } = cniCode;
}

public sealed class NoPoolException(AddressFamily family, string node) : IpamException(IpamCodes.NoPool,
    $"no enabled {Cidr.FamilyName(family)} IP pool selects node '{node}': create one with `weftctl apply -f pool.yaml` " +
    "(a projectcalico.org/v3 IPPool with spec.cidr), or check the pools' nodeSelector and disabled fields (`weftctl get ippool -o wide`)");

public sealed class PoolExhaustedException(AddressFamily family, string node) : IpamException(IpamCodes.PoolExhausted,
    $"every {Cidr.FamilyName(family)} pool usable by node '{node}' is full: add a pool (`weftctl apply -f`), widen one, " +
    "or release leaked addresses (`weftctl ipam check`, then CNI GC or `weftctl ipam release --ip`)");

public static class IpamCodes
{
    public const int NoPool = 101;
    public const int PoolExhausted = 102;
    public const int AddressUnavailable = 103;
    public const int Conflict = 104;
}
