using k8s;
using System.Security.Cryptography.X509Certificates;
using k8s.Authentication;
using Microsoft.Extensions.Logging;

namespace Weft.Kubernetes;

/// <summary>
/// A connection to the Kubernetes API server for the `kubernetes` datastore URIs: `kubernetes` (in a pod: the service
/// account's projected token, which KubernetesClient's token provider re-reads as the kubelet rotates it, its CA, and
/// KUBERNETES_SERVICE_HOST/PORT) or `kubernetes:///path/to/kubeconfig` (any kubeconfig KubernetesClient reads:
/// tokens, client certificates, exec plugins). KubernetesClient reads the configuration and supplies the
/// credentials; requests go through an HttpClient of our own: constructing its typed client roots every API
/// operation and model in a NativeAOT image (the agent grew from 17 to 37 MB), and Weft speaks to a handful of
/// collections in plain JSON (<see cref="KubeDatastore"/>, <see cref="KubeListWatch"/>).
/// </summary>
public sealed class KubeConnection : IDisposable
{
    public const string Scheme = "kubernetes";

    private readonly ServiceClientCredentials? _credentials;

    private KubeConnection(HttpClient http, Uri server, ServiceClientCredentials? credentials)
    {
        Http = http;
        Server = server;
        _credentials = credentials;
    }

    public HttpClient Http { get; }
    public Uri Server { get; }

    /// <summary>
    /// Opens a connection for a datastore URI; a clear ArgumentException when it is not one. `?netns=/var/run/netns/NAME`
    /// makes every connection from that network namespace (how weftctl reaches a lab's API server).
    /// </summary>
    public static KubeConnection Open(string uri)
    {
        var given = uri;
        string? netns = null;
        if (uri.IndexOf('?', StringComparison.Ordinal) is var q and > 0)
        {
            foreach (var part in uri[(q + 1)..].Split('&'))
                netns = part.StartsWith("netns=", StringComparison.Ordinal) && part.Length > 6 ? Uri.UnescapeDataString(part[6..])
                    : throw new ArgumentException($"'{given}': unknown option '{part}' (known: netns=/var/run/netns/NAME)");
            uri = uri[..q];
        }
        KubernetesClientConfiguration config;
        if (uri == Scheme)
        {
            if (!KubernetesClientConfiguration.IsInCluster())
                throw new ArgumentException("datastore 'kubernetes' needs to run in a pod (a service account token and KUBERNETES_SERVICE_HOST); outside one use kubernetes:///path/to/kubeconfig");
            config = KubernetesClientConfiguration.InClusterConfig();
        }
        else if (uri.StartsWith(Scheme + "://", StringComparison.Ordinal))
        {
            var path = uri[(Scheme.Length + 3)..];
            if (!path.StartsWith('/')) throw new ArgumentException($"'{given}': the kubeconfig must be an absolute path (kubernetes:///path/to/kubeconfig)");
            if (!File.Exists(path)) throw new ArgumentException($"'{given}': no kubeconfig at {path}");
            try { config = KubernetesClientConfiguration.BuildConfigFromConfigFile(path); }
            catch (Exception e) when (e is k8s.Exceptions.KubeConfigException or IOException or YamlDotNet.Core.YamlException)
            {
                throw new ArgumentException($"'{given}': {e.Message}", e);
            }
        }
        else throw new ArgumentException($"'{given}' is not a kubernetes datastore URI; use kubernetes or kubernetes:///path/to/kubeconfig");
        if (string.IsNullOrEmpty(config.Host) || !Uri.TryCreate(config.Host, UriKind.Absolute, out var server))
            throw new ArgumentException($"'{given}': no API server address (the kubeconfig's cluster.server)");
        if (netns is not null && !File.Exists(netns)) throw new ArgumentException($"'{given}': no network namespace at {netns}");
        return new KubeConnection(new HttpClient(Handler(config, netns), disposeHandler: true) { Timeout = Timeout.InfiniteTimeSpan }, server, Credentials(config));
    }

    /// <summary>TLS as the kubeconfig says: its CA (or none checked when it says insecure), its client certificate, its server name.</summary>
    private static SocketsHttpHandler Handler(KubernetesClientConfiguration config, string? netns)
    {
        var handler = new SocketsHttpHandler { PooledConnectionIdleTimeout = TimeSpan.FromMinutes(2) };
        if (netns is not null)
            handler.ConnectCallback = async (context, ct) =>
            {
                var socket = Weft.Netlink.NetNs.Run(netns, () => new System.Net.Sockets.Socket(System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Tcp));
                try { await socket.ConnectAsync(context.DnsEndPoint, ct).ConfigureAwait(false); }
                catch { socket.Dispose(); throw; }
                return new System.Net.Sockets.NetworkStream(socket, ownsSocket: true);
            };
        if (config.SkipTlsVerify)
#pragma warning disable CA5359 // the kubeconfig says insecure-skip-tls-verify: what kubectl does with it too
            handler.SslOptions.RemoteCertificateValidationCallback = (_, _, _, _) => true;
#pragma warning restore CA5359
        else if (config.SslCaCerts is { Count: > 0 } ca)
            handler.SslOptions.RemoteCertificateValidationCallback = (sender, certificate, chain, errors) =>
                k8s.Kubernetes.CertificateValidationCallBack(sender, ca, certificate, chain, errors);
        if (!string.IsNullOrEmpty(config.TlsServerName)) handler.SslOptions.TargetHost = config.TlsServerName;
        if (!string.IsNullOrEmpty(config.ClientCertificateData) || !string.IsNullOrEmpty(config.ClientCertificateFilePath))
            handler.SslOptions.ClientCertificates = [ClientCertificate(config)];
        return handler;
    }

    /// <summary>The kubeconfig's client certificate and key (inline base64 PEM or files).</summary>
    private static X509Certificate2 ClientCertificate(KubernetesClientConfiguration config)
    {
        static string Pem(string? data, string? file, string what) =>
            !string.IsNullOrEmpty(data) ? System.Text.Encoding.UTF8.GetString(Convert.FromBase64String(data))
            : !string.IsNullOrEmpty(file) ? File.ReadAllText(file)
            : throw new ArgumentException($"the kubeconfig has a client certificate but no {what}");
        using var pem = X509Certificate2.CreateFromPem(Pem(config.ClientCertificateData, config.ClientCertificateFilePath, "certificate"),
            Pem(config.ClientCertificateKeyData, config.ClientKeyFilePath, "client key"));
        // TLS on Linux wants the key in a store-backed certificate: round-trip through PKCS#12.
        return X509CertificateLoader.LoadPkcs12(pem.Export(X509ContentType.Pkcs12), null);
    }

    private static ServiceClientCredentials? Credentials(KubernetesClientConfiguration config) =>
        config.TokenProvider is { } provider ? new TokenCredentials(provider)
        : !string.IsNullOrEmpty(config.AccessToken) ? new TokenCredentials(config.AccessToken)
        : !string.IsNullOrEmpty(config.Username) ? new BasicAuthenticationCredentials { UserName = config.Username, Password = config.Password }
        : null;

    /// <summary>A list/watch of one collection path (`/api/v1/pods`) with this connection's client and credentials.</summary>
    public KubeListWatch ListWatch(string path, KubeWatchOptions? options = null, ILogger? log = null) =>
        new(Http, path, options, log, AuthorizeAsync, Server);

    /// <summary>Adds the credentials (a bearer token, re-read as it rotates; basic auth) to a request.</summary>
    public Task AuthorizeAsync(HttpRequestMessage request, CancellationToken ct) =>
        _credentials is { } credentials ? credentials.ProcessHttpRequestAsync(request, ct) : Task.CompletedTask;

    public void Dispose() => Http.Dispose();
}
