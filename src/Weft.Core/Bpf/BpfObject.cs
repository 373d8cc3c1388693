using System.Runtime.InteropServices;
using Weft.Native;

namespace Weft.Bpf;

public sealed class BpfException(string message, int errno = 0) : Exception(message)
{
    public int Errno { get; } = errno;
}

/// <summary>
/// A compiled BPF ELF object loaded into the kernel through libbpf. Maps named in <c>pins</c> are pinned at the
/// given bpffs paths, and an existing pin is reused as it is (its entries survive the agent that made them). The
/// object owns its program and map descriptors; programs stay in the kernel after disposal while something (a tc
/// filter) holds them.
/// </summary>
public sealed unsafe class BpfObject : IDisposable
{
    private readonly BpfObjectHandle _obj;
    private readonly IntPtr _image; // libelf reads the image in place until the load is done; freed with the object

    private BpfObject(BpfObjectHandle obj, IntPtr image)
    {
        _obj = obj;
        _image = image;
    }

    /// <param name="rodata">Bytes laid over the start of the object's .rodata before it loads (its const volatile
    /// globals, which the verifier then treats as constants).</param>
    public static BpfObject Load(ReadOnlySpan<byte> elf, IReadOnlyDictionary<string, string>? pins = null, ReadOnlySpan<byte> rodata = default)
    {
        LibbpfLog.Install();
        var image = (IntPtr)NativeMemory.Alloc((nuint)elf.Length);
        elf.CopyTo(new Span<byte>((void*)image, elf.Length));
        IntPtr raw;
        try { raw = BpfNative.bpf_object__open_mem((void*)image, (nuint)elf.Length, IntPtr.Zero); }
        catch (DllNotFoundException e)
        {
            NativeMemory.Free((void*)image);
            throw new BpfException("libbpf.so.1 is not installed (apt-get install libbpf1): " + e.Message);
        }
        if (raw == IntPtr.Zero)
        {
            var errno = Marshal.GetLastPInvokeError();
            NativeMemory.Free((void*)image);
            throw new BpfException($"libbpf could not open the BPF object: {Marshal.GetPInvokeErrorMessage(errno)}", errno);
        }
        var obj = new BpfObject(new BpfObjectHandle(raw), image);
        try
        {
            foreach (var (map, path) in pins ?? new Dictionary<string, string>())
                Check(BpfNative.bpf_map__set_pin_path(obj.MapPointer(map), path), $"pin path for map {map}");
            if (!rodata.IsEmpty) obj.SetRodata(rodata);
            Check(BpfNative.bpf_object__load(raw), "the kernel refused the BPF object (verifier, or a pinned map of another shape; libbpf's log is on stderr)");
            return obj;
        }
        catch
        {
            obj.Dispose();
            throw;
        }
    }

    private void SetRodata(ReadOnlySpan<byte> values)
    {
        var map = MapPointer(".rodata");
        nuint size;
        var current = BpfNative.bpf_map__initial_value(map, &size);
        if (current is null || (int)size < values.Length) throw new BpfException($"the BPF object's .rodata holds {size} bytes, not the {values.Length} to set");
        var image = new ReadOnlySpan<byte>(current, (int)size).ToArray();
        values.CopyTo(image);
        fixed (byte* p = image) Check(BpfNative.bpf_map__set_initial_value(map, p, size), "initial values of .rodata");
    }

    public BpfMap Map(string name) => new(name, BpfNative.bpf_map__fd(MapPointer(name)));

    public int ProgramFd(string name)
    {
        var prog = BpfNative.bpf_object__find_program_by_name(_obj.DangerousGetHandle(), name);
        if (prog == IntPtr.Zero) throw new BpfException($"the BPF object has no program '{name}'");
        var fd = BpfNative.bpf_program__fd(prog);
        return fd >= 0 ? fd : throw new BpfException($"program '{name}' is not loaded", -fd);
    }

    private IntPtr MapPointer(string name)
    {
        var map = BpfNative.bpf_object__find_map_by_name(_obj.DangerousGetHandle(), name);
        return map != IntPtr.Zero ? map : throw new BpfException($"the BPF object has no map '{name}'");
    }

    internal static void Check(int rc, string what)
    {
        if (rc < 0) throw new BpfException($"{what}: {Marshal.GetPInvokeErrorMessage(-rc)}", -rc);
    }

    public void Dispose()
    {
        if (_obj.IsClosed) return;
        _obj.Dispose();
        NativeMemory.Free((void*)_image);
    }
}

/// <summary>A map of a loaded object: fixed-size unmanaged keys and values, as the C side declares them.</summary>
public readonly unsafe struct BpfMap(string name, int fd)
{
    public string Name { get; } = name;
    public int Fd { get; } = fd;

    public void Update<TKey, TValue>(in TKey key, in TValue value) where TKey : unmanaged where TValue : unmanaged
    {
        var k = key;
        var v = value;
        BpfObject.Check(BpfNative.bpf_map_update_elem(Fd, &k, &v, BpfNative.BPF_ANY), $"update of map {Name}");
    }

    public bool TryLookup<TKey, TValue>(in TKey key, out TValue value) where TKey : unmanaged where TValue : unmanaged
    {
        var k = key;
        TValue v;
        var found = BpfNative.bpf_map_lookup_elem(Fd, &k, &v) == 0;
        value = found ? v : default;
        return found;
    }

    public bool Delete<TKey>(in TKey key) where TKey : unmanaged
    {
        var k = key;
        return BpfNative.bpf_map_delete_elem(Fd, &k) == 0;
    }

    public List<TKey> Keys<TKey>() where TKey : unmanaged
    {
        var keys = new List<TKey>();
        TKey next;
        if (BpfNative.bpf_map_get_next_key(Fd, null, &next) != 0) return keys;
        do
        {
            keys.Add(next);
            var current = next;
            if (BpfNative.bpf_map_get_next_key(Fd, &current, &next) != 0) break;
        } while (keys.Count < 1 << 20);
        return keys;
    }
}

/// <summary>
/// libbpf's messages (warnings, the verifier's log when a load fails) to stderr as lines, without the kernel's notice
/// that a clsact qdisc already exists, which every attach after the first provokes and which means nothing.
/// </summary>
internal static unsafe class LibbpfLog
{
    private static int _installed;

    public static void Install()
    {
        if (Interlocked.Exchange(ref _installed, 1) == 0) BpfNative.libbpf_set_print(&Print);
    }

    [System.Runtime.InteropServices.UnmanagedCallersOnly]
    private static int Print(int level, IntPtr format, IntPtr args)
    {
        if (level > 1) return 0; // LIBBPF_DEBUG
        const int Size = 1 << 16; // a verifier log comes as one message; rare enough to allocate for
        var buffer = (byte*)NativeMemory.Alloc(Size);
        try
        {
            var n = BpfNative.vsnprintf(buffer, Size, format, args);
            if (n <= 0) return 0;
            var text = System.Text.Encoding.UTF8.GetString(buffer, Math.Min(n, Size - 1));
            if (!text.Contains("Exclusivity flag on", StringComparison.Ordinal)) Console.Error.Write(text);
            return 0;
        }
        finally { NativeMemory.Free(buffer); }
    }
}

/// <summary>tc (clsact) attachment of BPF programs, direct-action, in the calling thread's network namespace.</summary>
public static unsafe class Tc
{
    /// <summary>Attaches or atomically replaces the program at (handle, priority) on one side of an interface.</summary>
    public static void Attach(int ifIndex, bool ingress, int programFd, uint handle, uint priority)
    {
        var hook = Hook(ifIndex, ingress);
        var rc = BpfNative.bpf_tc_hook_create(&hook);
        if (rc < 0 && -rc != 17) BpfObject.Check(rc, $"clsact qdisc on interface {ifIndex}"); // EEXIST: already there
        var opts = new BpfNative.TcOpts { Size = (nuint)sizeof(BpfNative.TcOpts), ProgFd = programFd, Flags = BpfNative.BPF_TC_F_REPLACE, Handle = handle, Priority = priority };
        BpfObject.Check(BpfNative.bpf_tc_attach(&hook, &opts), $"tc {(ingress ? "ingress" : "egress")} program on interface {ifIndex}");
    }

    /// <summary>Removes the program at (handle, priority); false when there was none.</summary>
    public static bool Detach(int ifIndex, bool ingress, uint handle, uint priority)
    {
        var hook = Hook(ifIndex, ingress);
        var opts = new BpfNative.TcOpts { Size = (nuint)sizeof(BpfNative.TcOpts), Handle = handle, Priority = priority };
        var rc = BpfNative.bpf_tc_detach(&hook, &opts);
        if (rc is -2 or -22) return false; // ENOENT, or EINVAL when the interface has no clsact at all
        BpfObject.Check(rc, $"tc detach on interface {ifIndex}");
        return true;
    }

    /// <summary>The id of the program at (handle, priority), or null.</summary>
    public static uint? Query(int ifIndex, bool ingress, uint handle, uint priority)
    {
        var hook = Hook(ifIndex, ingress);
        var opts = new BpfNative.TcOpts { Size = (nuint)sizeof(BpfNative.TcOpts), Handle = handle, Priority = priority };
        return BpfNative.bpf_tc_query(&hook, &opts) == 0 ? opts.ProgId : null;
    }

    private static BpfNative.TcHook Hook(int ifIndex, bool ingress) => new()
    {
        Size = (nuint)sizeof(BpfNative.TcHook), IfIndex = ifIndex, AttachPoint = ingress ? BpfNative.BPF_TC_INGRESS : BpfNative.BPF_TC_EGRESS,
    };
}

/// <summary>bpffs: where pinned maps live. Each mount is its own instance, so a private mount is a private namespace of pins.</summary>
public static class BpfFs
{
    public static bool IsMounted(string path) => Libc.FsType(path) == Libc.BPF_FS_MAGIC;

    public static void Mount(string path)
    {
        Directory.CreateDirectory(path);
        if (IsMounted(path)) return;
        if (Libc.mount("bpf", path, "bpf", 0, IntPtr.Zero) != 0)
            throw new BpfException($"mount bpffs at {path}: {Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError())}");
    }

    /// <summary>Lazily unmounts a bpffs mount (its pins go with the last user); false when nothing was mounted there.</summary>
    public static bool Unmount(string path) => IsMounted(path) && Libc.umount2(path, Libc.MNT_DETACH) == 0;
}

/// <summary>
/// A BPF ring buffer read through libbpf: <see cref="Poll"/> hands each record to the callback on the polling
/// thread. One reader per buffer.
/// </summary>
public sealed unsafe class BpfRingBuffer : IDisposable
{
    public delegate void Record(ReadOnlySpan<byte> data);

    private readonly IntPtr _rb;
    private readonly GCHandle _self;
    private readonly Record _onRecord;

    public BpfRingBuffer(BpfMap map, Record onRecord)
    {
        _onRecord = onRecord;
        _self = GCHandle.Alloc(this);
        _rb = BpfNative.ring_buffer__new(map.Fd, &Sample, GCHandle.ToIntPtr(_self), IntPtr.Zero);
        if (_rb == IntPtr.Zero)
        {
            _self.Free();
            throw new BpfException($"ring buffer {map.Name}: {Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError())}");
        }
    }

    /// <summary>Waits up to <paramref name="timeoutMs"/> for records and delivers them; returns how many.</summary>
    public int Poll(int timeoutMs)
    {
        var n = BpfNative.ring_buffer__poll(_rb, timeoutMs);
        return n == -4 ? 0 : n >= 0 ? n : throw new BpfException($"ring buffer poll: {Marshal.GetPInvokeErrorMessage(-n)}", -n); // EINTR: nothing
    }

    [UnmanagedCallersOnly]
    private static int Sample(IntPtr ctx, void* data, nuint size)
    {
        var self = (BpfRingBuffer)GCHandle.FromIntPtr(ctx).Target!;
        try { self._onRecord(new ReadOnlySpan<byte>(data, (int)size)); }
        catch (Exception) { return 0; } // a bad record must not stop the reader
        return 0;
    }

    public void Dispose()
    {
        BpfNative.ring_buffer__free(_rb);
        if (_self.IsAllocated) _self.Free();
    }
}

/// <summary>The BTF of a compiled object: struct layouts as the C compiler laid them out.</summary>
public static unsafe class BpfBtf
{
    public sealed record Member(string Name, int Offset, int BitOffset);

    /// <summary>Size and members (byte offsets) of a struct in an ELF object's BTF, or null when it has none by that name.</summary>
    public static (int Size, IReadOnlyList<Member> Members)? Struct(string elfPath, string name)
    {
        var btf = BpfNative.btf__parse(elfPath, IntPtr.Zero);
        if (btf == IntPtr.Zero || (long)btf < 0 && (long)btf > -4096)
            throw new BpfException($"no BTF in {elfPath}: {Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError())}");
        try
        {
            var id = BpfNative.btf__find_by_name_kind(btf, name, 4); // BTF_KIND_STRUCT
            if (id <= 0) return null;
            var type = BpfNative.btf__type_by_id(btf, (uint)id); // name_off, info, size, then vlen × {name_off, type, offset}
            var vlen = (int)(type[1] & 0xffff);
            var members = new List<Member>();
            for (var i = 0; i < vlen; i++)
            {
                var m = type + 3 + i * 3;
                var memberName = Marshal.PtrToStringUTF8(BpfNative.btf__name_by_offset(btf, m[0])) ?? "";
                var bits = (type[1] & 0x80000000) != 0 ? (int)(m[2] & 0xffffff) : (int)m[2]; // kind_flag: bitfield size in the top byte
                members.Add(new Member(memberName, bits / 8, bits));
            }
            return ((int)type[2], members);
        }
        finally { BpfNative.btf__free(btf); }
    }
}
