using System.Diagnostics;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using dotnet_etcd;
using Etcdserverpb;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Net.Client;
using Mvccpb;
using Weft.Netlink;

namespace Weft.Datastore;

/// <summary>
/// The distributed backend: etcd v3 over gRPC, through dotnet-etcd. etcd's model is the contract's model (one
/// global revision per transaction, mod revisions, watches from a revision, compaction), so every call maps 1:1.
///
/// Design notes and history:
/// - dotnet-etcd 10 works under NativeAOT (checked: the published plugin and agent run against a real etcd with no
///   trim warnings). Its own connection-string constructor was not kept: its channel (static resolver, round-robin
///   balancer, 5 retries with 1-5 s back-off) spent ~370 ms before the first call answered and hid unavailability
///   behind up to ~15 s of retries; a plugin exec'd per pod cannot afford either. So each member gets a plain
///   h2c <see cref="GrpcChannel"/> (first call ~20 ms) wrapped in dotnet-etcd's <see cref="EtcdClient"/>, and fail-over
///   is ours: one member at a time, starting at a random one, moving on when it does not answer, all bounded by the
///   URI's timeout; then <see cref="DatastoreUnavailableException"/> (CNI error 11, "try again later").
/// - Nothing here runs unless the URI says etcd://: with NativeAOT the gRPC code costs the sqlite path only binary size.
/// - A transaction retried after an ambiguous failure (the member died after the leader applied it) can report
///   <c>Succeeded = false</c> although the first attempt applied: its preconditions then no longer hold. Callers
///   already re-read and retry on a failed compare-and-swap, which is where they see their own write. Every
///   write is guarded by a precondition except unconditional puts, which are idempotent.
/// - Watches carry etcd's "hasleader" metadata so a member cut off from the quorum cancels them instead of going
///   quiet; a broken watch reopens on the next member from the last delivered revision, so no event is lost or
///   repeated. etcd's compact revision C still allows a watch from C: the exception reports C - 1, the contract's
///   "history starts after".
/// - etcd refuses a transaction that writes one key twice, and more than --max-txn-ops (default 128) operations;
///   writes to one key are collapsed here (last wins, as in the sqlite backend).
/// </summary>
public sealed class EtcdDatastore : IDatastore
{
    private static readonly Metadata WatchHeaders = new() { { "hasleader", "true" } };
    private readonly EtcdOptions _options;
    private readonly Member[] _members;
    private int _current;

    public string Describe => _options.Uri;

    public EtcdDatastore(EtcdOptions options)
    {
        _options = options;
        _members = options.Endpoints.Select(e => new Member(e.Host, e.Port, options)).ToArray();
        _current = _members.Length == 1 ? 0 : Random.Shared.Next(_members.Length);
    }

    public async ValueTask<KeyValue?> GetAsync(string key, CancellationToken ct = default)
    {
        var r = await CallAsync("get " + key, (c, d, t) => c.GetAsync(new RangeRequest { Key = Key(key) }, null, d, t), ct).ConfigureAwait(false);
        return r.Kvs.Count == 0 ? null : ToKeyValue(r.Kvs[0]);
    }

    public async ValueTask<RangeResult> ListAsync(string prefix, CancellationToken ct = default)
    {
        var key = prefix.Length == 0 ? ByteString.CopyFrom(0) : Key(prefix);
        var request = new RangeRequest { Key = key, RangeEnd = PrefixEnd(key) };
        var r = await CallAsync("list " + prefix, (c, d, t) => c.GetAsync(request, null, d, t), ct).ConfigureAwait(false);
        var items = new List<KeyValue>(r.Kvs.Count);
        foreach (var kv in r.Kvs) items.Add(ToKeyValue(kv)); // etcd returns a range in key order
        return new RangeResult(items, r.Header.Revision);
    }

    public async ValueTask<TxnResult> CommitAsync(IReadOnlyList<Precondition> preconditions, IReadOnlyList<Mutation> mutations, CancellationToken ct = default)
    {
        var txn = new TxnRequest();
        foreach (var p in preconditions)
            txn.Compare.Add(new Compare { Key = Key(p.Key), Target = Compare.Types.CompareTarget.Mod, Result = Compare.Types.CompareResult.Equal, ModRevision = p.ModRevision });
        var lastWrite = new Dictionary<string, int>(mutations.Count, StringComparer.Ordinal);
        for (var i = 0; i < mutations.Count; i++) lastWrite[mutations[i].Key] = i;
        for (var i = 0; i < mutations.Count; i++)
        {
            var m = mutations[i];
            if (lastWrite[m.Key] != i) continue;
            txn.Success.Add(m.Value is { } value
                ? new RequestOp { RequestPut = new PutRequest { Key = Key(m.Key), Value = UnsafeByteOperations.UnsafeWrap(value) } }
                : new RequestOp { RequestDeleteRange = new DeleteRangeRequest { Key = Key(m.Key) } });
        }
        var r = await CallAsync("commit", (c, d, t) => c.TransactionAsync(txn, null, d, t), ct).ConfigureAwait(false);
        return new TxnResult(r.Succeeded, r.Header.Revision);
    }

    public async ValueTask<long> RevisionAsync(CancellationToken ct = default)
    {
        // A linearizable count of one (absent) key: the cheapest read that carries the cluster's current revision.
        var request = new RangeRequest { Key = ByteString.CopyFrom(0), CountOnly = true };
        var r = await CallAsync("revision", (c, d, t) => c.GetAsync(request, null, d, t), ct).ConfigureAwait(false);
        return r.Header.Revision;
    }

    public async ValueTask CompactAsync(long revision, CancellationToken ct = default)
    {
        await CallAsync("compact", async (c, d, t) =>
        {
            try { await c.CompactAsync(new CompactionRequest { Revision = revision }, null, d, t).ConfigureAwait(false); }
            catch (RpcException e) when (e.StatusCode == StatusCode.OutOfRange && e.Status.Detail.Contains("compacted", StringComparison.Ordinal))
            {
                // Already compacted at or beyond this revision: nothing to do, as with the sqlite backend.
            }
            return 0;
        }, ct).ConfigureAwait(false);
    }

    public async IAsyncEnumerable<WatchEvent> WatchAsync(string prefix, long afterRevision, [EnumeratorCancellation] CancellationToken ct = default)
    {
        var key = prefix.Length == 0 ? ByteString.CopyFrom(0) : Key(prefix);
        var end = PrefixEnd(key);
        var delivered = afterRevision; // every event at or below this revision has been yielded
        var failures = 0;
        while (!ct.IsCancellationRequested)
        {
            var index = Volatile.Read(ref _current);
            var member = _members[index];
            using var call = member.Client.GetConnection().WatchClient.Watch(WatchHeaders, cancellationToken: ct);
            var opened = await TryAsync(() => call.RequestStream.WriteAsync(new WatchRequest
            {
                CreateRequest = new WatchCreateRequest { Key = key, RangeEnd = end, StartRevision = delivered + 1 },
            })).ConfigureAwait(false);
            if (ct.IsCancellationRequested) yield break;
            while (opened)
            {
                var (response, error) = await ReadAsync(call.ResponseStream, ct).ConfigureAwait(false);
                if (response is null)
                {
                    if (error is null) yield break; // cancelled by our caller
                    break;
                }
                if (response.CompactRevision > 0)
                    throw new DatastoreCompactedException(delivered, response.CompactRevision - 1);
                if (response.Canceled) break; // e.g. "etcdserver: no leader": try another member
                if (response.Created) failures = 0;
                foreach (var e in response.Events)
                {
                    var kv = e.Kv;
                    yield return e.Type == Event.Types.EventType.Delete
                        ? new WatchEvent(WatchEventKind.Delete, kv.Key.ToStringUtf8(), null, kv.ModRevision)
                        : new WatchEvent(WatchEventKind.Put, kv.Key.ToStringUtf8(), kv.Value.ToByteArray(), kv.ModRevision);
                    delivered = Math.Max(delivered, kv.ModRevision);
                }
            }
            // This member's stream broke or never opened: move on, and back off once every member has failed.
            Interlocked.CompareExchange(ref _current, (index + 1) % _members.Length, index);
            if (++failures % _members.Length == 0)
            {
                try { await Task.Delay(Backoff(failures / _members.Length), ct).ConfigureAwait(false); }
                catch (OperationCanceledException) { yield break; }
            }
        }
    }

    private static async Task<bool> TryAsync(Func<Task> action)
    {
        try
        {
            await action().ConfigureAwait(false);
            return true;
        }
        // A write on a call whose connection failed ends in TaskCanceledException, not an RpcException.
        catch (Exception e) when (e is RpcException or IOException or HttpRequestException or InvalidOperationException or OperationCanceledException)
        {
            return false;
        }
    }

    /// <summary>The next response; (null, null) when our caller cancelled; (null, error) when the stream broke.</summary>
    private static async Task<(WatchResponse? Response, Exception? Error)> ReadAsync(IAsyncStreamReader<WatchResponse> stream, CancellationToken ct)
    {
        try
        {
            return await stream.MoveNext(ct).ConfigureAwait(false) ? (stream.Current, null) : (null, new IOException("watch stream ended"));
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested) { return (null, null); }
        catch (RpcException e) when (e.StatusCode == StatusCode.Cancelled && ct.IsCancellationRequested) { return (null, null); }
        catch (Exception e) when (e is RpcException or IOException or HttpRequestException or OperationCanceledException) { return (null, e); }
    }

    /// <summary>
    /// One unary call with fail-over: on a member that does not answer (or answers "no leader", "leader changed",
    /// "request timed out"), try the next; after a round of failures, back off; give up when the URI's timeout is spent.
    /// </summary>
    private async ValueTask<T> CallAsync<T>(string what, Func<EtcdClient, DateTime, CancellationToken, Task<T>> call, CancellationToken ct)
    {
        var budget = Stopwatch.StartNew();
        Exception? last = null;
        var failures = 0;
        while (true)
        {
            ct.ThrowIfCancellationRequested();
            var remaining = _options.RequestTimeout - budget.Elapsed;
            if (remaining <= TimeSpan.Zero) break;
            var index = Volatile.Read(ref _current);
            var member = _members[index];
            var attempt = remaining < _options.AttemptTimeout ? remaining : _options.AttemptTimeout;
            try
            {
                return await call(member.Client, DateTime.UtcNow + attempt, ct).ConfigureAwait(false);
            }
            catch (RpcException e) when (IsRetryable(e, ct))
            {
                last = e;
            }
            catch (RpcException e) when (e.StatusCode == StatusCode.InvalidArgument && e.Status.Detail.Contains("too many operations", StringComparison.Ordinal))
            {
                throw new InvalidOperationException($"etcd {what} on {member.Address}: {e.Status.Detail}; etcd allows --max-txn-ops operations per transaction (default 128): raise it on every member (e.g. --max-txn-ops=4096) or apply fewer resources at once", e);
            }
            catch (RpcException e)
            {
                throw new InvalidOperationException($"etcd {what} on {member.Address} failed: {e.Status.Detail} ({e.StatusCode})", e);
            }
            // With ThrowOperationCanceledOnCancellation, a spent deadline surfaces as OperationCanceledException too.
            catch (Exception e) when (e is HttpRequestException or IOException or SocketException || (e is OperationCanceledException && !ct.IsCancellationRequested))
            {
                last = e;
            }
            Interlocked.CompareExchange(ref _current, (index + 1) % _members.Length, index);
            if (++failures % _members.Length == 0)
            {
                var pause = Backoff(failures / _members.Length);
                remaining = _options.RequestTimeout - budget.Elapsed;
                if (remaining <= TimeSpan.Zero) break;
                await Task.Delay(pause < remaining ? pause : remaining, ct).ConfigureAwait(false);
            }
        }
        throw new DatastoreUnavailableException(
            $"etcd {what}: no member of {string.Join(",", _members.Select(m => m.Address))} answered within {_options.RequestTimeout.TotalSeconds:0.#} s " +
            $"(last error: {Reason(last)}); check that etcd is running and reachable, then retry", last);
    }

    private static bool IsRetryable(RpcException e, CancellationToken ct) => e.StatusCode switch
    {
        StatusCode.Unavailable or StatusCode.Unknown or StatusCode.Internal or StatusCode.Aborted or StatusCode.ResourceExhausted => true,
        StatusCode.DeadlineExceeded or StatusCode.Cancelled => !ct.IsCancellationRequested,
        _ => false,
    };

    private static string Reason(Exception? e) => e switch
    {
        null => "none",
        RpcException r when r.Status.DebugException is { } inner => $"{r.Status.Detail}: {inner.GetBaseException().Message}",
        RpcException r => $"{r.Status.Detail} ({r.StatusCode})",
        OperationCanceledException => "no answer before the deadline",
        _ => e.GetBaseException().Message,
    };

    /// <summary>100 ms, 200 ms, 400 ms ... at most 1 s: an etcd election takes about a second.</summary>
    private static TimeSpan Backoff(int round) => TimeSpan.FromMilliseconds(Math.Min(1000, 100 << Math.Min(round - 1, 4)));

    private static ByteString Key(string key) => ByteString.CopyFromUtf8(key);

    private static KeyValue ToKeyValue(Mvccpb.KeyValue kv) => new(kv.Key.ToStringUtf8(), kv.Value.ToByteArray(), kv.CreateRevision, kv.ModRevision);

    /// <summary>etcd's range end for a prefix: the prefix with its last byte below 0xff incremented ("\0" = to the end).</summary>
    internal static ByteString PrefixEnd(ByteString prefix)
    {
        var bytes = prefix.ToByteArray();
        if (bytes is [0]) return ByteString.CopyFrom(0); // the whole keyspace
        for (var i = bytes.Length - 1; i >= 0; i--)
        {
            if (bytes[i] == 0xff) continue;
            var end = bytes[..(i + 1)];
            end[i]++;
            return UnsafeByteOperations.UnsafeWrap(end);
        }
        return ByteString.CopyFrom(0);
    }

    public void Dispose()
    {
        foreach (var m in _members) m.Dispose();
    }

    /// <summary>One etcd member: a lazily opened HTTP/2 (h2c) channel and dotnet-etcd's client over it.</summary>
    private sealed class Member(string host, int port, EtcdOptions options) : IDisposable
    {
        private readonly Lock _lock = new();
        private GrpcChannel? _channel;
        private EtcdClient? _client;

        public string Address { get; } = host.Contains(':', StringComparison.Ordinal) ? $"[{host}]:{port}" : $"{host}:{port}";

        public EtcdClient Client
        {
            get
            {
                lock (_lock)
                {
                    if (_client is not null) return _client;
                    var handler = new SocketsHttpHandler
                    {
                        ConnectTimeout = options.ConnectTimeout,
                        // Find a member that vanished without closing the connection (host down, partition).
                        KeepAlivePingDelay = TimeSpan.FromSeconds(10),
                        KeepAlivePingTimeout = TimeSpan.FromSeconds(5),
                        KeepAlivePingPolicy = HttpKeepAlivePingPolicy.WithActiveRequests,
                        EnableMultipleHttp2Connections = true,
                        UseProxy = false,
                    };
                    if (options.Netns is { } netns)
                    {
                        handler.ConnectCallback = async (context, token) =>
                        {
                            // A socket keeps the namespace it was made in, wherever it is used afterwards.
                            var socket = NetNs.Run(netns, () => new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true });
                            try
                            {
                                await socket.ConnectAsync(context.DnsEndPoint, token).ConfigureAwait(false);
                                return new NetworkStream(socket, ownsSocket: true);
                            }
                            catch
                            {
                                socket.Dispose();
                                throw;
                            }
                        };
                    }
                    _channel = GrpcChannel.ForAddress("http://" + Address, new GrpcChannelOptions
                    {
                        HttpHandler = handler,
                        DisposeHttpClient = true,
                        ThrowOperationCanceledOnCancellation = true,
                        MaxReceiveMessageSize = 256 << 20,
                        // gRPC's default reconnect backoff grows to 120 s: a member back from a restart would sit
                        // unused for minutes. Retrying a refused connection each second costs next to nothing.
                        InitialReconnectBackoff = TimeSpan.FromMilliseconds(100),
                        MaxReconnectBackoff = TimeSpan.FromSeconds(1),
                    });
                    return _client = new EtcdClient(_channel.CreateCallInvoker());
                }
            }
        }

        public void Dispose()
        {
            lock (_lock)
            {
                _client?.Dispose();
                _channel?.Dispose();
                _client = null;
                _channel = null;
            }
        }
    }
}
