using System.Net;
using System.Net.Sockets;
using System.Text;
using Weft.Netlink;

namespace Weft.Lab;

/// <summary>
/// Real packets from one pod to another: the socket is created inside the source pod's namespace (on a dedicated
/// thread), then used from anywhere. TCP: a completed handshake and an HTTP answer; UDP: an echoed datagram.
/// </summary>
public static class Probe
{
    public static async Task<bool> ReachableAsync(string sourceNetns, IPAddress target, int port, string protocol, TimeSpan timeout)
    {
        var path = "/var/run/netns/" + sourceNetns;
        var udp = protocol.Equals("UDP", StringComparison.OrdinalIgnoreCase);
        using var socket = NetNs.Run(path, () => new Socket(target.AddressFamily, udp ? SocketType.Dgram : SocketType.Stream, udp ? ProtocolType.Udp : ProtocolType.Tcp));
        using var cts = new CancellationTokenSource(timeout);
        try
        {
            await socket.ConnectAsync(new IPEndPoint(target, port), cts.Token).ConfigureAwait(false);
            var buffer = new byte[512];
            if (udp)
            {
                // UDP has no handshake: retry the datagram a few times within the timeout.
                for (var attempt = 0; !cts.IsCancellationRequested; attempt++)
                {
                    await socket.SendAsync("weft-probe"u8.ToArray(), SocketFlags.None, cts.Token).ConfigureAwait(false);
                    using var wait = CancellationTokenSource.CreateLinkedTokenSource(cts.Token);
                    wait.CancelAfter(TimeSpan.FromMilliseconds(Math.Min(200 * (attempt + 1), timeout.TotalMilliseconds)));
                    try
                    {
                        var n = await socket.ReceiveAsync(buffer, SocketFlags.None, wait.Token).ConfigureAwait(false);
                        if (n > 0) return true;
                    }
                    catch (OperationCanceledException) when (!cts.IsCancellationRequested) { }
                }
                return false;
            }
            await socket.SendAsync(Encoding.ASCII.GetBytes($"GET /probe HTTP/1.0\r\nHost: {target}\r\n\r\n"), SocketFlags.None, cts.Token).ConfigureAwait(false);
            var got = await socket.ReceiveAsync(buffer, SocketFlags.None, cts.Token).ConfigureAwait(false);
            return got > 0 && Encoding.ASCII.GetString(buffer, 0, got).StartsWith("HTTP/1.", StringComparison.Ordinal);
        }
        catch (Exception e) when (e is SocketException or OperationCanceledException)
        {
            return false;
        }
    }
}

/// <summary>`weftctl lab serve`: what every lab pod runs. TCP ports answer HTTP (200 with the request path), UDP ports echo.</summary>
public static class PodServer
{
    public static async Task<int> RunAsync(IReadOnlyList<int> tcp, IReadOnlyList<int> udp, CancellationToken ct)
    {
        var tasks = new List<Task>();
        foreach (var port in tcp.Distinct())
        {
            var listener = new Socket(AddressFamily.InterNetworkV6, SocketType.Stream, ProtocolType.Tcp) { DualMode = true };
            listener.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
            listener.Bind(new IPEndPoint(IPAddress.IPv6Any, port));
            listener.Listen(512);
            tasks.Add(AcceptLoopAsync(listener, port, ct));
        }
        foreach (var port in udp.Distinct())
        {
            var s = new Socket(AddressFamily.InterNetworkV6, SocketType.Dgram, ProtocolType.Udp) { DualMode = true };
            s.Bind(new IPEndPoint(IPAddress.IPv6Any, port));
            tasks.Add(EchoLoopAsync(s, ct));
        }
        try { await Task.WhenAll(tasks).ConfigureAwait(false); } catch (OperationCanceledException) { }
        return 0;
    }

    private static async Task AcceptLoopAsync(Socket listener, int port, CancellationToken ct)
    {
        while (!ct.IsCancellationRequested)
        {
            var client = await listener.AcceptAsync(ct).ConfigureAwait(false);
            _ = Task.Run(async () =>
            {
                using (client)
                {
                    try
                    {
                        var buf = new byte[2048];
                        using var read = new CancellationTokenSource(TimeSpan.FromSeconds(2));
                        var n = await client.ReceiveAsync(buf, SocketFlags.None, read.Token).ConfigureAwait(false);
                        var line = Encoding.ASCII.GetString(buf, 0, n).Split('\n')[0].Trim();
                        var parts = line.Split(' ');
                        var path = parts.Length >= 2 ? parts[1] : "/";
                        // The client address as this pod sees it: tests check it is the sender's own pod IP (no NAT).
                        var peer = (client.RemoteEndPoint as IPEndPoint)?.Address is { } a ? (a.IsIPv4MappedToIPv6 ? a.MapToIPv4() : a).ToString() : "?";
                        var body = $"{path}\nclient={peer}\n";
                        await client.SendAsync(Encoding.ASCII.GetBytes($"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {body.Length}\r\nX-Weft-Port: {port}\r\nConnection: close\r\n\r\n{body}"), SocketFlags.None).ConfigureAwait(false);
                    }
                    catch (Exception e) when (e is SocketException or OperationCanceledException) { }
                }
            }, ct);
        }
    }

    private static async Task EchoLoopAsync(Socket s, CancellationToken ct)
    {
        var buf = new byte[65536];
        EndPoint any = new IPEndPoint(IPAddress.IPv6Any, 0);
        while (!ct.IsCancellationRequested)
        {
            var r = await s.ReceiveFromAsync(buf, SocketFlags.None, any, ct).ConfigureAwait(false);
            await s.SendToAsync(buf.AsMemory(0, r.ReceivedBytes), SocketFlags.None, r.RemoteEndPoint, ct).ConfigureAwait(false);
        }
    }
}
