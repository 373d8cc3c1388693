using k8s;
using Microsoft.Extensions.Logging;

namespace Weft.Kubernetes;

/// <summary>
/// A connection to the Kubernetes API server for the `kubernetes` datastore URIs: `kubernetes` (in a pod: the service
/// account's projected token, which KubernetesClient re-reads as the kubelet rotates it, its CA, and
/// KUBERNETES_SERVICE_HOST/PORT) or `kubernetes:///path/to/kubeconfig` (any kubeconfig KubernetesClient reads:
/// tokens, client certificates, exec plugins). Typed calls go through <see cref="Client"/>; watches, which
/// KubernetesClient.Aot does not have, go through <see cref="ListWatch"/> on the same HttpClient and credentials.
/// </summary>
public sealed class KubeConnection : IDisposable
{
    public const string Scheme = "kubernetes";

    private KubeConnection(k8s.Kubernetes client) => Client = client;

    public k8s.Kubernetes Client { get; }
    public Uri Server => Client.BaseUri;

    /// <summary>Opens a connection for a datastore URI; a clear ArgumentException when it is not one.</summary>
    public static KubeConnection Open(string uri)
    {
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
            if (!path.StartsWith('/')) throw new ArgumentException($"'{uri}': the kubeconfig must be an absolute path (kubernetes:///path/to/kubeconfig)");
            if (!File.Exists(path)) throw new ArgumentException($"'{uri}': no kubeconfig at {path}");
            try { config = KubernetesClientConfiguration.BuildConfigFromConfigFile(path); }
            catch (Exception e) when (e is k8s.Exceptions.KubeConfigException or IOException or YamlDotNet.Core.YamlException)
            {
                throw new ArgumentException($"'{uri}': {e.Message}", e);
            }
        }
        else throw new ArgumentException($"'{uri}' is not a kubernetes datastore URI; use kubernetes or kubernetes:///path/to/kubeconfig");
        return new KubeConnection(new k8s.Kubernetes(config));
    }

    /// <summary>A list/watch of one collection path (`/api/v1/pods`) with this connection's client and credentials.</summary>
    public KubeListWatch ListWatch(string path, KubeWatchOptions? options = null, ILogger? log = null) =>
        new(Client.HttpClient, path, options, log, Authorize, Server);

    private Task Authorize(HttpRequestMessage request, CancellationToken ct) =>
        Client.Credentials is { } credentials ? credentials.ProcessHttpRequestAsync(request, ct) : Task.CompletedTask;

    public void Dispose() => Client.Dispose();
}
