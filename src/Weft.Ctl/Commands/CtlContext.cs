using Weft.Datastore;

namespace Weft.Ctl.Commands;

/// <summary>What every weftctl command needs: where the datastore is, and where to write.</summary>
public sealed class CtlContext(string? datastoreUri, TextWriter stdout, TextWriter stderr, string? lab = null)
{
    public TextWriter Out { get; } = stdout;
    public TextWriter Err { get; } = stderr;

    public string DatastoreUri { get; } =
        !string.IsNullOrEmpty(datastoreUri) ? datastoreUri
        : lab is not null ? Lab.LabState.LoadOrThrow(lab).CtlDatastore
        : Environment.GetEnvironmentVariable("WEFT_DATASTORE") is { Length: > 0 } env ? env
        : DatastoreFactory.DefaultUri;

    public IDatastore OpenStore() => DatastoreFactory.Open(DatastoreUri);
}
