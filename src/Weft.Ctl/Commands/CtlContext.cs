using Weft.Datastore;

namespace Weft.Ctl.Commands;

/// <summary>What every weftctl command needs: where the datastore is, and where to write.</summary>
public sealed class CtlContext(string? datastoreUri, TextWriter stdout, TextWriter stderr, string? lab = null)
{
    public TextWriter Out { get; } = stdout;
    public TextWriter Err { get; } = stderr;
    /// <summary>The lab named by --lab: its agents are reached through the lab's node sockets.</summary>
    public string? Lab { get; } = lab;

    public string DatastoreUri { get; } =
        !string.IsNullOrEmpty(datastoreUri) ? datastoreUri
        : lab is not null ? Weft.Lab.LabState.LoadOrThrow(lab).CtlDatastore
        : Environment.GetEnvironmentVariable("WEFT_DATASTORE") is { Length: > 0 } env ? env
        : DatastoreFactory.DefaultUri;

    public IDatastore OpenStore() => DatastoreFactory.Open(DatastoreUri);

    /// <summary>The lab's commands write to the same console.</summary>
    public static implicit operator Weft.Client.Terminal(CtlContext c) => new(c.Out, c.Err);
}
