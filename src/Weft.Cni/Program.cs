using Weft.Cni.Skeleton;

// The weft CNI plugin: exec'd by the container runtime once per pod operation.
using var stdin = Console.OpenStandardInput();
using var stdout = Console.OpenStandardOutput();
return CniSkeleton.Run(Environment.GetEnvironmentVariable, stdin, stdout);
