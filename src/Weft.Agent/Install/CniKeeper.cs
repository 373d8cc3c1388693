using Weft.Kubernetes;

namespace Weft.Agent.Install;

/// <summary>
/// The agent's side of install-cni while it runs in the DaemonSet. The plugin's kubeconfig follows the service
/// account token as kubelet rotates it (a projected token lasts about an hour; a plugin left with an old copy is
/// refused on every ADD). And when the DaemonSet itself is deleted (`kubectl delete -f deploy/weft.yaml`), the
/// agent's last act removes the conflist, the plugin's kubeconfig and the binaries, so the node's runtime stops
/// calling a network that is gone. An agent stopped for any other reason (a rolling update, a restart, a drain)
/// leaves them in place: the pods still on the node need DEL.
/// </summary>
public sealed class CniKeeper(CniInstaller.Options install, KubeDatastore api, string? daemonSetPath, ILogger<CniKeeper> log) : BackgroundService
{
    private static readonly TimeSpan Period = TimeSpan.FromSeconds(30);

    protected override async Task ExecuteAsync(CancellationToken ct)
    {
        using var timer = new PeriodicTimer(Period);
        do
        {
            try
            {
                if (CniInstaller.RefreshKubeconfig(install)) log.LogInformation("the service account token changed; the CNI plugin's kubeconfig now carries the new one");
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException)
            {
                log.LogWarning("refreshing the CNI plugin's kubeconfig: {Error}", e.Message);
            }
        }
        while (await timer.WaitForNextTickAsync(ct).ConfigureAwait(false));
    }

    public override async Task StopAsync(CancellationToken cancellationToken)
    {
        await base.StopAsync(cancellationToken).ConfigureAwait(false);
        if (daemonSetPath is null) return;
        try
        {
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            timeout.CancelAfter(TimeSpan.FromSeconds(5));
            if (!await DaemonSetGoneAsync(timeout.Token).ConfigureAwait(false)) return;
            foreach (var f in CniInstaller.Uninstall(install)) log.LogInformation("the DaemonSet is deleted: removed {File}", f);
        }
        catch (Exception e) when (e is HttpRequestException or IOException or OperationCanceledException or UnauthorizedAccessException or InvalidOperationException or InvalidDataException)
        {
            // Unsure whether Weft is being removed: leave the node's CNI set-up as it is (pods may still need DEL).
            log.LogWarning("could not tell whether the DaemonSet is being deleted ({Error}); the CNI configuration stays", e.Message);
        }
    }

    /// <summary>The DaemonSet no longer exists, or is being deleted.</summary>
    internal async Task<bool> DaemonSetGoneAsync(CancellationToken ct) =>
        await api.GetObjectAsync(daemonSetPath!, ct).ConfigureAwait(false) is not { } ds || ds["metadata"]?["deletionTimestamp"] is not null;

    /// <summary>The DaemonSet's API path from the pod's environment (POD_NAMESPACE and WEFT_DAEMONSET, set by deploy/weft.yaml).</summary>
    public static string? DaemonSetPath()
    {
        var ns = Environment.GetEnvironmentVariable("POD_NAMESPACE");
        var name = Environment.GetEnvironmentVariable("WEFT_DAEMONSET");
        return string.IsNullOrEmpty(ns) || string.IsNullOrEmpty(name) ? null : $"/apis/apps/v1/namespaces/{ns}/daemonsets/{name}";
    }
}
