using System.Runtime.InteropServices;

namespace Weft.Native;

/// <summary>
/// libbpf 1.x (Debian's libbpf1): open and load an ELF object from memory, pin maps, update map entries and attach
/// tc programs (libbpf speaks the tc netlink itself, in the calling thread's network namespace). Functions returning
/// int give -errno; those returning pointers give NULL and set errno.
/// </summary>
internal static unsafe partial class BpfNative
{
    private const string Lib = "libbpf.so.1";

    [LibraryImport(Lib, SetLastError = true)] public static partial IntPtr bpf_object__open_mem(void* buffer, nuint size, IntPtr opts);
    [LibraryImport(Lib)] public static partial int bpf_object__load(IntPtr obj);
    [LibraryImport(Lib)] public static partial void bpf_object__close(IntPtr obj);
    [LibraryImport(Lib, StringMarshalling = StringMarshalling.Utf8)] public static partial IntPtr bpf_object__find_map_by_name(IntPtr obj, string name);
    [LibraryImport(Lib, StringMarshalling = StringMarshalling.Utf8)] public static partial IntPtr bpf_object__find_program_by_name(IntPtr obj, string name);
    [LibraryImport(Lib)] public static partial int bpf_map__fd(IntPtr map);
    [LibraryImport(Lib, StringMarshalling = StringMarshalling.Utf8)] public static partial int bpf_map__set_pin_path(IntPtr map, string path);
    [LibraryImport(Lib)] public static partial int bpf_program__fd(IntPtr prog);
    [LibraryImport(Lib)] public static partial void* bpf_map__initial_value(IntPtr map, nuint* size);
    [LibraryImport(Lib)] public static partial int bpf_map__set_initial_value(IntPtr map, void* data, nuint size);

    [LibraryImport(Lib)] public static partial int bpf_map_update_elem(int fd, void* key, void* value, ulong flags);
    [LibraryImport(Lib)] public static partial int bpf_map_delete_elem(int fd, void* key);
    [LibraryImport(Lib)] public static partial int bpf_map_lookup_elem(int fd, void* key, void* value);
    [LibraryImport(Lib)] public static partial int bpf_map_get_next_key(int fd, void* key, void* nextKey);

    [LibraryImport(Lib)] public static partial IntPtr libbpf_set_print(delegate* unmanaged<int, IntPtr, IntPtr, int> print);
    [LibraryImport("libc.so.6")] public static partial int vsnprintf(byte* buffer, nuint size, IntPtr format, IntPtr args);

    [LibraryImport(Lib, StringMarshalling = StringMarshalling.Utf8)] public static partial int bpf_obj_pin(int fd, string path);
    [LibraryImport(Lib, StringMarshalling = StringMarshalling.Utf8)] public static partial int bpf_obj_get(string path);

    [LibraryImport(Lib)] public static partial int bpf_tc_hook_create(TcHook* hook);
    [LibraryImport(Lib)] public static partial int bpf_tc_attach(TcHook* hook, TcOpts* opts);
    [LibraryImport(Lib)] public static partial int bpf_tc_detach(TcHook* hook, TcOpts* opts);
    [LibraryImport(Lib)] public static partial int bpf_tc_query(TcHook* hook, TcOpts* opts);

    [LibraryImport(Lib, SetLastError = true)] public static partial IntPtr ring_buffer__new(int mapFd, delegate* unmanaged<IntPtr, void*, nuint, int> sample, IntPtr ctx, IntPtr opts);
    [LibraryImport(Lib)] public static partial int ring_buffer__poll(IntPtr rb, int timeoutMs);
    [LibraryImport(Lib)] public static partial void ring_buffer__free(IntPtr rb);

    [LibraryImport(Lib, StringMarshalling = StringMarshalling.Utf8, SetLastError = true)] public static partial IntPtr btf__parse(string path, IntPtr btfExt);
    [LibraryImport(Lib)] public static partial void btf__free(IntPtr btf);
    [LibraryImport(Lib, StringMarshalling = StringMarshalling.Utf8)] public static partial int btf__find_by_name_kind(IntPtr btf, string name, uint kind);
    [LibraryImport(Lib)] public static partial uint* btf__type_by_id(IntPtr btf, uint id);
    [LibraryImport(Lib)] public static partial IntPtr btf__name_by_offset(IntPtr btf, uint offset);

    public const ulong BPF_ANY = 0;
    public const uint BPF_TC_INGRESS = 1, BPF_TC_EGRESS = 2;
    public const uint BPF_TC_F_REPLACE = 1;

    /// <summary>struct bpf_tc_hook (libbpf.h): sz, ifindex, attach_point, parent.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct TcHook
    {
        public nuint Size;
        public int IfIndex;
        public uint AttachPoint;
        public uint Parent;
        private readonly uint _pad;
    }

    /// <summary>struct bpf_tc_opts (libbpf.h): sz, prog_fd, flags, prog_id, handle, priority.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct TcOpts
    {
        public nuint Size;
        public int ProgFd;
        public uint Flags;
        public uint ProgId;
        public uint Handle;
        public uint Priority;
        private readonly uint _pad;
    }
}

internal sealed class BpfObjectHandle : SafeHandle
{
    public BpfObjectHandle() : base(IntPtr.Zero, ownsHandle: true) { }
    public BpfObjectHandle(IntPtr h) : this() => SetHandle(h);
    public override bool IsInvalid => handle == IntPtr.Zero;
    protected override bool ReleaseHandle() { BpfNative.bpf_object__close(handle); return true; }
}
