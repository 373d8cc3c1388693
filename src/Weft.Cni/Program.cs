using Microsoft.Win32.SafeHandles;
using Weft.Cni.Skeleton;

// The weft CNI plugin: exec'd by the container runtime once per pod operation. Plain unbuffered streams over fds 0
// and 1: System.Console's set up terminal handling a plugin never needs (~0.4 ms per exec).
using var stdin = Fd(0, FileAccess.Read);
using var stdout = Fd(1, FileAccess.Write);
return CniSkeleton.Run(Environment.GetEnvironmentVariable, stdin, stdout);

static Stream Fd(int fd, FileAccess access)
{
    try { return new FileStream(new SafeFileHandle(fd, ownsHandle: false), access, bufferSize: 0); }
    catch (Exception e) when (e is IOException or ArgumentException or UnauthorizedAccessException) { return Stream.Null; } // fd not open
}
