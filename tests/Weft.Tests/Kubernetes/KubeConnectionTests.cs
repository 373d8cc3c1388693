using Weft.Kubernetes;
using Weft.Tests.Support;

namespace Weft.Tests.Kubernetes;

/// <summary>The `kubernetes` datastore URIs: a kubeconfig as users write them, its credentials on every request (the list/watch too), and clear refusals.</summary>
public sealed class KubeConnectionTests : IDisposable
{
    private readonly string _dir = TestEnv.TempDir("kubeconn");

    public void Dispose() => Directory.Delete(_dir, true);

    private string Kubeconfig(Uri server, string token)
    {
        var path = Path.Combine(_dir, "kubeconfig");
        File.WriteAllText(path, $"""
            apiVersion: v1
            kind: Config
            clusters:
            - name: lab
              cluster: {"{"}server: "{server.ToString().TrimEnd('/')}"{"}"}
            users:
            - name: weft
              user: {"{"}token: "{token}"{"}"}
            contexts:
            - name: weft@lab
              context: {"{"}cluster: lab, user: weft{"}"}
            current-context: weft@lab
            """);
        return path;
    }

    [Fact]
    public async Task A_kubeconfig_connection_lists_and_watches_with_its_token()
    {
        await using var api = new Weft.Lab.LabApiServer { RequiredToken = "sekrit" };
        api.Put("/api/v1/namespaces", "", "default");
        using var connection = KubeConnection.Open("kubernetes://" + Kubeconfig(api.BaseAddress, "sekrit"));
        var watch = connection.ListWatch("/api/v1/namespaces");
        using var stop = new CancellationTokenSource();
        var run = Task.Run(() => watch.RunAsync(stop.Token));
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (!watch.Synced && DateTime.UtcNow < deadline) await Task.Delay(10);
        Assert.True(watch.Synced, "the list with the kubeconfig's token");
        api.Put("/api/v1/namespaces", "", "kube-system");
        while (!watch.Snapshot().ContainsKey("kube-system") && DateTime.UtcNow < deadline) await Task.Delay(10);
        Assert.Contains("kube-system", watch.Snapshot().Keys);
        await stop.CancelAsync();
        await run;
    }

    [Fact]
    public async Task A_wrong_token_is_refused_and_retried_never_synced()
    {
        await using var api = new Weft.Lab.LabApiServer { RequiredToken = "sekrit" };
        using var connection = KubeConnection.Open("kubernetes://" + Kubeconfig(api.BaseAddress, "wrong"));
        var watch = connection.ListWatch("/api/v1/namespaces", new KubeWatchOptions(MaxBackoff: TimeSpan.FromMilliseconds(100)));
        using var stop = new CancellationTokenSource();
        var run = Task.Run(() => watch.RunAsync(stop.Token));
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (api.Requests.Count < 3 && DateTime.UtcNow < deadline) await Task.Delay(10);
        Assert.True(api.Requests.Count >= 3, "401 is retried with backoff");
        Assert.False(watch.Synced);
        await stop.CancelAsync();
        await run;
    }

    [Fact]
    public void Bad_uris_and_kubeconfigs_are_clear_errors()
    {
        Assert.Contains("absolute path", Assert.Throws<ArgumentException>(() => KubeConnection.Open("kubernetes://relative/kubeconfig")).Message);
        Assert.Contains("no kubeconfig at", Assert.Throws<ArgumentException>(() => KubeConnection.Open("kubernetes:///nonexistent/kubeconfig")).Message);
        Assert.Contains("not a kubernetes datastore URI", Assert.Throws<ArgumentException>(() => KubeConnection.Open("kube://x")).Message);
        if (Environment.GetEnvironmentVariable("KUBERNETES_SERVICE_HOST") is null)
            Assert.Contains("needs to run in a pod", Assert.Throws<ArgumentException>(() => KubeConnection.Open("kubernetes")).Message);
        var broken = Path.Combine(_dir, "broken");
        File.WriteAllText(broken, "apiVersion: v1\nkind: Config\nclusters: [ {name: x\n");
        Assert.StartsWith("'kubernetes://" + broken + "'", Assert.Throws<ArgumentException>(() => KubeConnection.Open("kubernetes://" + broken)).Message);
        var empty = Path.Combine(_dir, "empty");
        File.WriteAllText(empty, "apiVersion: v1\nkind: Config\n");
        Assert.StartsWith("'kubernetes://" + empty + "'", Assert.Throws<ArgumentException>(() => KubeConnection.Open("kubernetes://" + empty)).Message);
    }
}
