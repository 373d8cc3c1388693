using System.Net;
using System.Net.Sockets;
using System.Text;

namespace Weft.Tests.Support;

/// <summary>
/// A UDP responder on the lab's fake internet address (203.0.113.1) inside a namespace: answers every datagram with
/// "peer=IP:PORT", the source it saw, from the address it was asked on (as a masquerade's replies must come); a
/// question over 1000 bytes gets an answer of its own size.
/// </summary>
public sealed class UdpPeerEcho : IDisposable
{
    private readonly Socket _socket;
    private readonly Thread _thread;
    private volatile bool _stopped;

    public int Port { get; }

    private UdpPeerEcho(Socket socket)
    {
        _socket = socket;
        Port = ((IPEndPoint)socket.LocalEndPoint!).Port;
        _thread = new Thread(Serve) { IsBackground = true, Name = "udp-peer-echo" };
        _thread.Start();
    }

    public static UdpPeerEcho Start(string netns, string address = "203.0.113.1") =>
        new(Weft.Netlink.NetNs.Run($"/var/run/netns/{netns}", () =>
        {
            var s = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
            s.Bind(new IPEndPoint(IPAddress.Parse(address), 0));
            return s;
        }));

    private void Serve()
    {
        var buf = new byte[65536];
        while (true)
        {
            EndPoint from = new IPEndPoint(IPAddress.Any, 0);
            try
            {
                var n = _socket.ReceiveFrom(buf, ref from);
                // A large question gets an answer as large (padded), so it comes back in fragments too.
                var answer = $"peer={from}\n";
                _socket.SendTo(Encoding.ASCII.GetBytes(n > 1000 ? answer.PadRight(n) : answer), from);
            }
            catch (SocketException) when (!_stopped) { } // no route back to an untranslated sender: that is the point
            catch (Exception e) when (e is SocketException or ObjectDisposedException) { return; }
        }
    }

    public void Dispose()
    {
        _stopped = true;
        _socket.Dispose();
        _thread.Join(2000);
    }
}
