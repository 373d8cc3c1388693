using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Weft.Lab;

/// <summary>
/// The lab API server's TLS: a CA made for this lab and a server certificate for its address, both in the lab's
/// directory (gone with `lab down`). kubectl, like any client-go client, sends no bearer token over plain HTTP.
/// </summary>
public static class LabCertificates
{
    private const string ServerCert = "apiserver.crt", ServerKey = "apiserver.key", CaCert = "ca.crt";

    /// <summary>Creates the CA and the server certificate for <paramref name="ip"/>; returns the CA as PEM (the kubeconfig's).</summary>
    public static string Write(string dir, string ip)
    {
        using var caKey = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var caRequest = new CertificateRequest("CN=weft-lab-ca", caKey, HashAlgorithmName.SHA256);
        caRequest.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
        caRequest.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
        var now = DateTimeOffset.UtcNow.AddMinutes(-5);
        using var ca = caRequest.CreateSelfSigned(now, now.AddYears(1));

        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest("CN=weft-lab-apiserver", key, HashAlgorithmName.SHA256);
        var names = new SubjectAlternativeNameBuilder();
        names.AddIpAddress(IPAddress.Parse(ip));
        names.AddDnsName("kubernetes");
        request.CertificateExtensions.Add(names.Build());
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, true));
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid("1.3.6.1.5.5.7.3.1")], false));
        using var server = request.Create(ca, now, now.AddYears(1), RandomNumberGenerator.GetBytes(8));
        File.WriteAllText(Path.Combine(dir, ServerCert), server.ExportCertificatePem());
        File.WriteAllText(Path.Combine(dir, ServerKey), key.ExportPkcs8PrivateKeyPem());
        if (OperatingSystem.IsLinux()) File.SetUnixFileMode(Path.Combine(dir, ServerKey), UnixFileMode.UserRead | UnixFileMode.UserWrite);
        var caPem = ca.ExportCertificatePem();
        File.WriteAllText(Path.Combine(dir, CaCert), caPem);
        return caPem;
    }

    /// <summary>The server certificate with its key, ready for Kestrel.</summary>
    public static X509Certificate2 Server(string dir)
    {
        using var pem = X509Certificate2.CreateFromPemFile(Path.Combine(dir, ServerCert), Path.Combine(dir, ServerKey));
        return X509CertificateLoader.LoadPkcs12(pem.Export(X509ContentType.Pkcs12), null);
    }
}
