// The eBPF policy dataplane: two tc programs on every local pod's host-side interface. weft_from_pod (tc ingress:
// packets the pod sends) decides the pod's egress policy, weft_to_pod (tc egress: packets about to enter the pod)
// its ingress policy. Everything the programs decide from is computed in user space (Cilium's model):
//   ipcache   peer address -> numeric identity (LPM: endpoint addresses as host routes, policy CIDRs, 0/0 = world)
//   endpoints host interface -> the policy programs deciding its two directions (0 = no policy applies: allow)
//   policy    (program, identity, protocol, port) -> verdict, an LPM trie so port ranges are prefixes and one
//             lookup decides; an identity without entries of its own is decided as its family's world (0/0)
//   sports    the few verdicts that also depend on the source port (rules with source ports)
//   ct        connections already allowed, per interface; their later packets (and replies) take this one lookup
//   events    verdicts on new connections and Log rule hits, for the agent's flow observer (BPF ring buffer)
// A packet in no connection of ours that the kernel's conntrack knows as established (nftables enforced it before a
// switch) keeps going: switching dataplanes drops no established connection.
// A policy change writes a new program number's entries and switches the endpoint to it in one map update, so a
// packet sees the old policy or the new one, never neither. Maps are pinned: an agent restart keeps them all.
// An interface with the programs but no endpoint entry drops everything (fail closed). The CNI plugin attaches the
// pinned programs before a new pod can send. A third program on the tunnel device reports packets from other nodes
// that routing will drop (weft_from_node), as the programs on pod interfaces do for packets from pods: with flows
// on, the node still has no netfilter hook.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <stddef.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define SECOND 1000000000ULL
#define TCP_IDLE (6 * 3600 * SECOND)
#define TCP_CLOSING_IDLE (10 * SECOND)
#define UDP_IDLE (60 * SECOND)
#define OTHER_IDLE (30 * SECOND)
#define REFRESH (1 * SECOND)

#define FAMILY_V4 4
#define FAMILY_V6 6

#define ACTION_ALLOW 1   // a rule allowed
#define ACTION_DENY 2    // a Deny rule dropped
#define ACTION_DROP 3    // nothing allowed: end of tier
#define ACTION_PROFILE 4 // no policy decided: the namespace profile allows
#define ACTION_UNPROGRAMMED 5
#define ACTION_NO_ROUTE 6 // routing drops it (a blackhole: an address of the node's blocks no pod has)

// Identities of 0.0.0.0/0 and ::/0, fixed.
#define WORLD_V4 1
#define WORLD_V6 2

#define EVENT_VERDICT 0
#define EVENT_LOG 1

#define DIR_EGRESS 0
#define DIR_INGRESS 1

#define CT_CLOSING 1

// Shared with C# (src/Weft.Agent/Bpf/BpfPolicyMaps.cs); a test checks each layout against this object's BTF.
struct ipcache_key {
	__u32 prefixlen; // 32 (family) + address bits
	__u32 family;
	__u8 addr[16];
};

struct endpoint {
	__u32 egress_program;
	__u32 ingress_program;
};

struct policy_key {
	__u32 prefixlen; // 64: every protocol; 72: every port of the protocol; 80 (with pad) + port bits
	__u32 program;   // network byte order, as every field the trie compares
	__u32 identity;
	__u8 protocol;
	__u8 pad;
	__u16 port; // TCP/UDP/SCTP: destination port; ICMP: type << 8 | code
};

struct verdict {
	__u8 action;
	__u8 log;
	__u16 pad;
	__u32 token;       // what decided, for flows: resolved by the agent
	__u32 sport_table; // nonzero: the verdict depends on the source port too
	__u32 log_token;
};

struct sport_key {
	__u32 prefixlen; // 32 (table) + port bits
	__u32 table;
	__u16 port;
	__u16 pad;
};

struct ct_key {
	__u32 ifindex;
	__u8 family;
	__u8 protocol;
	__u16 sport;
	__u16 dport;
	__u16 pad;
	__u8 saddr[16];
	__u8 daddr[16];
};

struct ct_entry {
	__u64 last_seen;
	__u32 flags;
	__u32 pad;
};

struct flow_event {
	__u64 time;
	__u32 ifindex;
	__u8 family;
	__u8 protocol;
	__u8 direction;
	__u8 action;
	__u16 sport;
	__u16 dport;
	__u32 token;
	__u8 tcp_flags;
	__u8 icmp_type;
	__u8 icmp_code;
	__u8 kind;
	__u8 saddr[16];
	__u8 daddr[16];
};

// The kernel's connection tracking, asked when a packet is in no connection of ours (kfuncs, resolved against the
// running kernel's BTF): connections that nftables enforcement accepted before a switch to this dataplane.
struct bpf_ct_opts {
	__s32 netns_id;
	__s32 error;
	__u8 l4proto;
	__u8 dir;
	__u16 ct_zone_id;
	__u8 ct_zone_dir;
	__u8 reserved[3];
};
struct nf_conn {
	unsigned long status;
} __attribute__((preserve_access_index));
extern struct nf_conn *bpf_skb_ct_lookup(struct __sk_buff *skb, struct bpf_sock_tuple *tuple, __u32 tuple__sz,
					 struct bpf_ct_opts *opts, __u32 opts__sz) __ksym;
extern void bpf_ct_release(struct nf_conn *ct) __ksym;
#define IPS_SEEN_REPLY (1 << 1)

// Only ever reached through a ring buffer pointer, which BTF does not describe: this keeps the struct in the BTF the
// layout test reads.
struct flow_event *unused_flow_event __attribute__((unused));

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, __u32);
	__uint(max_entries, 1 << 20);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} ipcache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct endpoint);
	__uint(max_entries, 1 << 16);
} endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct policy_key);
	__type(value, struct verdict);
	__uint(max_entries, 1 << 22);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct sport_key);
	__type(value, struct verdict);
	__uint(max_entries, 1 << 18);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} sports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
	__uint(max_entries, 1 << 18);
} ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} events SEC(".maps");

struct packet {
	__u8 family;
	__u8 protocol;
	__u8 tcp_flags;
	__u8 icmp_type;
	__u8 icmp_code;
	__u8 has_ports;
	__u16 sport; // host byte order
	__u16 dport;
	__u16 lookup_port;
	__u8 saddr[16];
	__u8 daddr[16];
};

// Returns 0 when the packet is not IP (ARP and the like pass), 1 when parsed, -1 when it always passes (IPv6
// neighbour discovery, which must work before any policy allows anything).
static __always_inline int parse(struct __sk_buff *skb, struct packet *p)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return 0;
	void *l4;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end)
			return 0;
		p->family = FAMILY_V4;
		p->protocol = ip->protocol;
		__builtin_memcpy(p->saddr, &ip->saddr, 4);
		__builtin_memcpy(p->daddr, &ip->daddr, 4);
		if (ip->frag_off & bpf_htons(0x1fff))
			return 1; // a later fragment: no L4 header; it follows its first fragment's verdict by protocol alone
		l4 = (void *)ip + ip->ihl * 4;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end)
			return 0;
		p->family = FAMILY_V6;
		p->protocol = ip6->nexthdr;
		__builtin_memcpy(p->saddr, &ip6->saddr, 16);
		__builtin_memcpy(p->daddr, &ip6->daddr, 16);
		l4 = ip6 + 1;
	} else
		return 0;
	if (p->protocol == IPPROTO_TCP || p->protocol == IPPROTO_UDP || p->protocol == IPPROTO_SCTP || p->protocol == IPPROTO_UDPLITE) {
		__u16 *ports = l4;
		if ((void *)(ports + 2) > end)
			return 1;
		p->sport = bpf_ntohs(ports[0]);
		p->dport = bpf_ntohs(ports[1]);
		p->lookup_port = p->dport;
		p->has_ports = 1;
		if (p->protocol == IPPROTO_TCP) {
			struct tcphdr *tcp = l4;
			if ((void *)(tcp + 1) <= end)
				p->tcp_flags = ((__u8 *)tcp)[13];
		}
	} else if (p->protocol == IPPROTO_ICMP || p->protocol == IPPROTO_ICMPV6) {
		__u8 *icmp = l4;
		if ((void *)(icmp + 8) > end)
			return 1;
		p->icmp_type = icmp[0];
		p->icmp_code = icmp[1];
		p->lookup_port = (__u16)icmp[0] << 8 | icmp[1];
		if (p->protocol == IPPROTO_ICMPV6 && icmp[0] >= 133 && icmp[0] <= 136)
			return -1;
		// Echo request and reply: the identifier plays both ports, so a reply finds its request's connection.
		if ((p->protocol == IPPROTO_ICMP && (icmp[0] == 8 || icmp[0] == 0)) ||
		    (p->protocol == IPPROTO_ICMPV6 && (icmp[0] == 128 || icmp[0] == 129))) {
			p->sport = bpf_ntohs(*(__u16 *)(icmp + 4));
			p->dport = p->sport;
		}
	}
	return 1;
}

static __always_inline void ct_key_of(struct ct_key *k, __u32 ifindex, const struct packet *p, int reverse)
{
	k->ifindex = ifindex;
	k->family = p->family;
	k->protocol = p->protocol;
	k->pad = 0;
	if (!reverse) {
		k->sport = p->sport;
		k->dport = p->dport;
		__builtin_memcpy(k->saddr, p->saddr, 16);
		__builtin_memcpy(k->daddr, p->daddr, 16);
	} else {
		k->sport = p->dport;
		k->dport = p->sport;
		__builtin_memcpy(k->saddr, p->daddr, 16);
		__builtin_memcpy(k->daddr, p->saddr, 16);
	}
}

static __always_inline __u64 idle_limit(const struct packet *p, const struct ct_entry *e)
{
	if (p->protocol == IPPROTO_TCP)
		return e->flags & CT_CLOSING ? TCP_CLOSING_IDLE : TCP_IDLE;
	return p->protocol == IPPROTO_UDP ? UDP_IDLE : OTHER_IDLE;
}

// An allowed connection's later packets, either way: one lookup each.
static __always_inline int established(__u32 ifindex, const struct packet *p, __u64 now)
{
	struct ct_key k = {};
	for (int reverse = 0; reverse < 2; reverse++) {
		ct_key_of(&k, ifindex, p, reverse);
		struct ct_entry *e = bpf_map_lookup_elem(&ct, &k);
		if (!e)
			continue;
		if (now - e->last_seen > idle_limit(p, e)) {
			bpf_map_delete_elem(&ct, &k);
			return 0;
		}
		if (p->tcp_flags & 0x05) // FIN or RST: the connection is ending
			e->flags |= CT_CLOSING;
		if (now - e->last_seen > REFRESH || (p->tcp_flags & 0x05))
			e->last_seen = now;
		return 1;
	}
	return 0;
}

// A connection the kernel's conntrack has seen both ways (so both ends' policy let it through: a denied packet never
// gets a reply) is established here too. Only TCP and UDP can be asked; a bare SYN always starts a new connection.
static __always_inline int kernel_established(struct __sk_buff *skb, const struct packet *p)
{
	if (!p->has_ports || (p->protocol != IPPROTO_TCP && p->protocol != IPPROTO_UDP))
		return 0;
	if (p->protocol == IPPROTO_TCP && (p->tcp_flags & 0x12) == 0x02)
		return 0;
	struct bpf_sock_tuple t = {};
	struct bpf_ct_opts opts = { .netns_id = BPF_F_CURRENT_NETNS, .l4proto = p->protocol };
	struct nf_conn *ct;
	if (p->family == FAMILY_V4) {
		__builtin_memcpy(&t.ipv4.saddr, p->saddr, 4);
		__builtin_memcpy(&t.ipv4.daddr, p->daddr, 4);
		t.ipv4.sport = bpf_htons(p->sport);
		t.ipv4.dport = bpf_htons(p->dport);
		ct = bpf_skb_ct_lookup(skb, &t, sizeof(t.ipv4), &opts, sizeof(opts));
	} else {
		__builtin_memcpy(t.ipv6.saddr, p->saddr, 16);
		__builtin_memcpy(t.ipv6.daddr, p->daddr, 16);
		t.ipv6.sport = bpf_htons(p->sport);
		t.ipv6.dport = bpf_htons(p->dport);
		ct = bpf_skb_ct_lookup(skb, &t, sizeof(t.ipv6), &opts, sizeof(opts));
	}
	if (!ct)
		return 0;
	int seen = (ct->status & IPS_SEEN_REPLY) != 0;
	bpf_ct_release(ct);
	return seen;
}

// A new connection to an address routing drops (blackhole, unreachable, prohibit). The kernel's answer for "no route
// at all" is the same as for a local address (not forwarded), so only those three are reported.
static __always_inline int no_route(struct __sk_buff *skb, const struct packet *p)
{
	struct bpf_fib_lookup f = {};
	f.ifindex = skb->ingress_ifindex;
	f.l4_protocol = p->protocol;
	f.sport = bpf_htons(p->sport);
	f.dport = bpf_htons(p->dport);
	if (p->family == FAMILY_V4) {
		f.family = 2; // AF_INET
		__builtin_memcpy(&f.ipv4_src, p->saddr, 4);
		__builtin_memcpy(&f.ipv4_dst, p->daddr, 4);
	} else {
		f.family = 10; // AF_INET6
		__builtin_memcpy(f.ipv6_src, p->saddr, 16);
		__builtin_memcpy(f.ipv6_dst, p->daddr, 16);
	}
	int rc = bpf_fib_lookup(skb, &f, sizeof(f), 0);
	return rc == BPF_FIB_LKUP_RET_BLACKHOLE || rc == BPF_FIB_LKUP_RET_UNREACHABLE || rc == BPF_FIB_LKUP_RET_PROHIBIT;
}

static __always_inline void report(__u32 ifindex, const struct packet *p, int direction, __u8 action, __u32 token, __u8 kind, __u64 now)
{
	struct flow_event *ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev)
		return; // the observer is behind: a flow is lost (never the packet's verdict)
	ev->time = now;
	ev->ifindex = ifindex;
	ev->family = p->family;
	ev->protocol = p->protocol;
	ev->direction = direction;
	ev->action = action;
	ev->sport = p->sport;
	ev->dport = p->dport;
	ev->token = token;
	ev->tcp_flags = p->tcp_flags;
	ev->icmp_type = p->icmp_type;
	ev->icmp_code = p->icmp_code;
	ev->kind = kind;
	__builtin_memcpy(ev->saddr, p->saddr, 16);
	__builtin_memcpy(ev->daddr, p->daddr, 16);
	bpf_ringbuf_submit(ev, 0);
}

static __always_inline int decide(struct __sk_buff *skb, int direction)
{
	struct packet p = {};
	int parsed = parse(skb, &p);
	if (parsed <= 0)
		return TC_ACT_OK;
	// The node's own packets to its pods (probes, the node's services) are not policed, as with nftables.
	if (direction == DIR_INGRESS && skb->ingress_ifindex == 0)
		return TC_ACT_OK;
	__u32 ifindex = skb->ifindex;
	__u64 now = bpf_ktime_get_ns();
	struct endpoint *ep = bpf_map_lookup_elem(&endpoints, &ifindex);
	if (!ep) {
		report(ifindex, &p, direction, ACTION_UNPROGRAMMED, 0, EVENT_VERDICT, now);
		return TC_ACT_SHOT;
	}
	if (established(ifindex, &p, now))
		return TC_ACT_OK;
	if (kernel_established(skb, &p)) {
		struct ct_key k = {};
		ct_key_of(&k, ifindex, &p, 0);
		struct ct_entry e = { .last_seen = now };
		bpf_map_update_elem(&ct, &k, &e, BPF_ANY);
		return TC_ACT_OK;
	}

	// Routing drops it whatever policy says, as with nftables: reported as such, and left to routing (an unreachable
	// route answers the pod with an ICMP error, so its connect fails at once).
	if (direction == DIR_EGRESS && no_route(skb, &p)) {
		report(ifindex, &p, direction, ACTION_NO_ROUTE, 0, EVENT_VERDICT, now);
		return TC_ACT_OK;
	}

	__u32 program = direction == DIR_EGRESS ? ep->egress_program : ep->ingress_program;
	struct verdict profile = { .action = ACTION_PROFILE };
	struct verdict *v = &profile;
	if (program) {
		struct ipcache_key ik = { .prefixlen = 32 + (p.family == FAMILY_V4 ? 32 : 128), .family = p.family };
		__builtin_memcpy(ik.addr, direction == DIR_EGRESS ? p.daddr : p.saddr, 16);
		__u32 *identity = bpf_map_lookup_elem(&ipcache, &ik);
		struct policy_key pk = {
			.prefixlen = 80 + (p.has_ports || p.protocol == IPPROTO_ICMP || p.protocol == IPPROTO_ICMPV6 ? 16 : 0),
			.program = bpf_htonl(program),
			.identity = bpf_htonl(identity ? *identity : 0),
			.protocol = p.protocol,
			.port = bpf_htons(p.lookup_port),
		};
		v = bpf_map_lookup_elem(&policy, &pk);
		if (!v) {
			// An identity without entries of its own is decided like the rest of the world of its family.
			pk.identity = bpf_htonl(p.family == FAMILY_V4 ? WORLD_V4 : WORLD_V6);
			v = bpf_map_lookup_elem(&policy, &pk);
		}
		if (v && v->sport_table) {
			struct sport_key sk = { .prefixlen = 48, .table = bpf_htonl(v->sport_table), .port = bpf_htons(p.sport) };
			v = bpf_map_lookup_elem(&sports, &sk);
		}
		if (!v) {
			// Entries are written before an endpoint points at their program: a miss is a bug; fail closed.
			report(ifindex, &p, direction, ACTION_UNPROGRAMMED, 0, EVENT_VERDICT, now);
			return TC_ACT_SHOT;
		}
		if (v->log)
			report(ifindex, &p, direction, v->action, v->log_token, EVENT_LOG, now);
	}
	report(ifindex, &p, direction, v->action, v->token, EVENT_VERDICT, now);
	if (v->action != ACTION_ALLOW && v->action != ACTION_PROFILE)
		return TC_ACT_SHOT;
	struct ct_key k = {};
	ct_key_of(&k, ifindex, &p, 0);
	struct ct_entry e = { .last_seen = now };
	bpf_map_update_elem(&ct, &k, &e, BPF_ANY);
	return TC_ACT_OK;
}

SEC("tc")
int weft_from_pod(struct __sk_buff *skb)
{
	return decide(skb, DIR_EGRESS);
}

SEC("tc")
int weft_to_pod(struct __sk_buff *skb)
{
	return decide(skb, DIR_INGRESS);
}

// On the tunnel device: packets from other nodes' pods, reported when routing will drop them (nothing is decided
// here: ingress policy is the destination pod's program). Only what may start a connection is looked up.
SEC("tc")
int weft_from_node(struct __sk_buff *skb)
{
	struct packet p = {};
	if (parse(skb, &p) <= 0)
		return TC_ACT_OK;
	if (p.protocol == IPPROTO_TCP && (p.tcp_flags & 0x12) != 0x02)
		return TC_ACT_OK;
	if (no_route(skb, &p))
		report(skb->ifindex, &p, DIR_INGRESS, ACTION_NO_ROUTE, 0, EVENT_VERDICT, bpf_ktime_get_ns());
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
